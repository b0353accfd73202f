"""What `./hapbx lab up` ends with, on the suite's lab: every end-to-end check green (lab/health.py:
the VIP on one node that leads, OPTIONS on the VIP, PostgreSQL streaming with lag, Redis
replicating, the etcd quorum), then how to register a softphone; and those instructions work: the
printed users register with digest auth through the VIP with the password from the printed file,
and one calls the other. The checks can fail: pointed at an address that is no VIP, they do.

(Streaming, Redis, OPTIONS, REGISTER, calls between users and to the media stand-in are also
checked one by one in test_data_tier_lab, test_ha_lab and test_sip_lab.)
"""
from __future__ import annotations

import dataclasses
import os
import socket
import stat

from lab import sipp
from lab import deploy, health


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def test_lab_up_ends_green_and_prints_how_to_register(lab, capsys):
    assert deploy.end_to_end(lab.cluster, lab.spec, seconds=60)
    out = capsys.readouterr().out
    print(out)
    for name in ("VIP on one node, the leader", "SIP OPTIONS on the VIP", "PostgreSQL streaming",
                 "Redis replicating", "etcd quorum"):
        assert f"ok    {name}" in out, out
    assert "lag " in out and "3/3 members healthy" in out
    c = lab.cluster
    assert f"{c.vip.address}, port {c.kamailio.sip_port}" in out
    path = deploy.softphones_path(lab.spec)
    assert f"sudo cat {path}" in out
    passwords = deploy.softphone_passwords(lab.spec)
    assert set(passwords) == set(deploy.SOFTPHONES)
    assert not any(pw in out for pw in passwords.values())   # shown by the command, never printed
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_the_printed_softphones_register_and_call_each_other(lab):
    c, me = lab.cluster, lab.raw["lab"]["hostAddress"]
    passwords = deploy.softphone_passwords(lab.spec)
    caller, callee = deploy.SOFTPHONES
    target, keys = f"{c.vip.address}:{c.kamailio.sip_port}", {"domain": c.vip.address}
    port = free_udp_port()
    r = sipp.run(sipp.scenario("register.xml"), target, me, port=port, keys={**keys, "user": callee},
                 auth=(callee, passwords[callee]))
    assert r.ok, (r.stdout, r.errors)
    phone = sipp.Uas(me, port)
    try:
        r = sipp.run(sipp.scenario("call.xml"), target, me, service=callee, keys={**keys, "user": caller},
                     auth=(caller, passwords[caller]), extra=("-d", "300"))
        assert r.ok, (r.stdout, r.errors)
        assert phone.invites() == 1
    finally:
        phone.stop()


def test_the_checks_fail_where_there_is_no_cluster(lab):
    wrong = dataclasses.replace(lab.cluster, vip=dataclasses.replace(lab.cluster.vip, address="10.78.0.99"))
    result = {ch.name: ch for ch in health.checks(wrong, lab.spec)}
    assert not result["VIP on one node, the leader"].ok
    assert not result["SIP OPTIONS on the VIP"].ok
    assert result["etcd quorum"].ok   # the rest still judged on what is there
