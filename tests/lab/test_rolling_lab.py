"""A change of one setting on the running cluster: kamailio.shmMb (Kamailio's -m).

It reaches two things: Kamailio's unit drop-in and, through the memory budget, PostgreSQL's
effective_cache_size/work_mem (both reload-only). So the apply must run exactly those files,
Kamailio's rolling handler and PostgreSQL's configure steps; restart Kamailio on both nodes, one
at a time, the VIP owner strictly after its peer is back; reload (not restart) PostgreSQL; leave
every other daemon alone; and SIP on the VIP must not be down longer than the owner's own
Kamailio restart. A phone registered before is still known to both nodes after (DMQ resync).
The setting is put back at the end (another rolling change).
"""
from __future__ import annotations

import copy
import socket
import time

import pytest

from lab import sipp
from components.render import RenderedFile
from components.render import kamailio as kam
from lab import deploy, health

CTL = "unix:/run/kamailio/kamailio_ctl"
OTHERS = ("chrony", "systemd-journald", "ssh", "nftables", "redis-server", "keepalived", "etcd", "hapbx-leader",
          "hapbx-reach", "hapbx-media-uas", "hapbx-cdr-receiver", "hapbx-cdr-worker", "hapbx-admin", "hapbx-recsync")
PROPS = "MainPID,ActiveEnterTimestampMonotonic,ActiveExitTimestampMonotonic,ActiveEnterTimestamp"


def units(lab, node: str, names) -> dict[str, dict[str, str]]:
    out = lab.sh(node, "for u in " + " ".join(names) + "; do echo \"@$u\"; systemctl show -p " + PROPS + " $u; done")
    result: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        if line.startswith("@"):
            current = result.setdefault(line[1:], {})
        elif "=" in line:
            key, value = line.split("=", 1)
            current[key] = value
    return result


def snapshot(lab) -> dict:
    pg = f"postgresql@{lab.cluster.postgres.version}-main"
    return {n.name: units(lab, n.name, ("kamailio", pg, *OTHERS)) for n in lab.cluster.nodes}


def vip_owner(lab) -> str:
    owners = [n.name for n in lab.cluster.nodes if f" {lab.cluster.vip.address}/" in lab.sh(n.name, "ip -4 -o addr show")]
    assert len(owners) == 1, owners
    return owners[0]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rolled(lab):
    c, host = lab.cluster, lab.raw["lab"]["hostAddress"]
    owner = vip_owner(lab)
    primary = next(n.name for n in c.nodes if health.status(lab.spec, n.name).get("postgres") == "primary")
    deploy.provision_softphones(lab.spec, primary)
    user, password = next(iter(deploy.softphone_passwords(lab.spec).items()))
    for n in c.nodes:   # the standby's Kamailio authenticates from its replica
        deadline = time.monotonic() + 15
        while user not in lab.sh(n.name, "cd / && runuser -u postgres -- psql -X -A -t -d pbx -c "
                                         "'SELECT username FROM kamailio.subscriber'"):
            assert time.monotonic() < deadline, f"{user} not on {n.name}"
            time.sleep(0.2)
    r = sipp.run(sipp.scenario("register.xml"), f"{c.vip.address}:{c.kamailio.sip_port}", host,
                 port=free_udp_port(), keys={"domain": c.vip.address, "user": user}, auth=(user, password))
    assert r.ok, (r.stdout, r.errors)
    before = snapshot(lab)
    changed = copy.deepcopy(lab.raw)
    changed["kamailio"]["shmMb"] = lab.raw["kamailio"]["shmMb"] + 64
    with health.OptionsProber(c.vip.address, c.kamailio.sip_port, host) as probe:
        time.sleep(0.5)
        started = time.monotonic()
        result = lab.apply(changed)
        seconds = time.monotonic() - started
    after = snapshot(lab)
    data = dict(owner=owner, owner_after=vip_owner(lab), peer=next(n.name for n in c.nodes if n.name != owner),
                before=before, after=after, result=result, seconds=seconds, probe=probe, user=user,
                shm=changed["kamailio"]["shmMb"])
    yield data
    lab.apply(lab.raw)   # back to the stack as shipped (a rolling change again)


def test_only_what_depends_on_the_setting_ran(lab, rolled):
    r = rolled["result"]
    dropin = RenderedFile(kam.DROPIN, "").slug
    pgconf = RenderedFile(f"/etc/postgresql/{lab.cluster.postgres.version}/main/postgresql.conf", "").slug
    expected = set()
    for n in (x.name for x in lab.cluster.nodes):
        expected |= {f"sip-{n}-file-{dropin}", f"sip-{n}-svc-kamailio", f"sip-{n}-svc-kamailio-last",
                     f"postgres-{n}-file-{pgconf}", f"postgres-{n}-configure"}
    ran = set(r.created) | set(r.updated) | set(r.replaced)
    print(f"\nshmMb change: {len(ran)} resources ran in {rolled['seconds']:.1f} s: {sorted(ran)}")
    assert ran == expected
    assert not r.deleted


def test_kamailio_restarted_on_both_nodes_the_vip_owner_strictly_last(lab, rolled):
    owner, peer, before, after = rolled["owner"], rolled["peer"], rolled["before"], rolled["after"]
    assert rolled["owner_after"] == owner, "the VIP moved during the change"
    for n in (owner, peer):
        assert after[n]["kamailio"]["MainPID"] != before[n]["kamailio"]["MainPID"], n
        cmdline = lab.sh(n, "tr '\\0' ' ' < /proc/$(cat /run/kamailio/kamailio.pid)/cmdline")
        assert f"-m {rolled['shm']} " in cmdline, (n, cmdline)
    mono = lambda n, k: int(after[n]["kamailio"][k])  # noqa: E731  (one kernel clock for every node)
    print(f"\nKamailio restarts: {peer} (peer) stopped {after[peer]['kamailio']['ActiveExitTimestampMonotonic']} "
          f"up {after[peer]['kamailio']['ActiveEnterTimestamp']}; {owner} (VIP owner) stopped "
          f"{(mono(owner, 'ActiveExitTimestampMonotonic') - mono(peer, 'ActiveEnterTimestampMonotonic')) / 1e6:.3f} s "
          f"after the peer was up, up {after[owner]['kamailio']['ActiveEnterTimestamp']}")
    # the owner went down only after the peer was up again
    assert mono(owner, "ActiveExitTimestampMonotonic") > mono(peer, "ActiveEnterTimestampMonotonic")
    assert mono(owner, "ActiveEnterTimestampMonotonic") > mono(peer, "ActiveEnterTimestampMonotonic")
    for n in (owner, peer):
        nodes = lab.sh(n, f"kamcmd -s {CTL} dmq.list_nodes")
        assert nodes.count("status: active") == 2, (n, nodes)


def test_no_other_daemon_restarted_postgresql_reloaded(lab, rolled):
    before, after = rolled["before"], rolled["after"]
    for n in before:
        for unit in before[n]:
            if unit == "kamailio":
                continue
            assert (after[n][unit]["MainPID"], after[n][unit]["ActiveEnterTimestampMonotonic"]) == \
                (before[n][unit]["MainPID"], before[n][unit]["ActiveEnterTimestampMonotonic"]), (n, unit)
        settings = lab.sh(n, "cd / && runuser -u postgres -- psql -X -A -t -d postgres -c "
                             "\"select setting from pg_settings where name = 'effective_cache_size'\"")
        assert settings.strip(), n   # answered: reloaded in place (same MainPID above)


def test_sip_on_the_vip_down_no_longer_than_the_owners_restart(rolled):
    owner, after, probe = rolled["owner"], rolled["after"], rolled["probe"]
    k = after[owner]["kamailio"]
    restart = (int(k["ActiveEnterTimestampMonotonic"]) - int(k["ActiveExitTimestampMonotonic"])) / 1e6
    gap, _ = probe.longest_gap()
    print(f"\nSIP OPTIONS on the VIP every {probe.interval * 1000:.0f} ms: {len(probe.sent)} sent, "
          f"{probe.unanswered()} unanswered, longest gap {gap:.3f} s; {owner}'s Kamailio restart "
          f"(stop to started) {restart:.3f} s")
    assert gap <= restart + 2 * probe.interval + 0.2, (gap, restart)
    assert gap < 2.0


def test_a_registration_survives_both_restarts(lab, rolled):
    for n in lab.cluster.nodes:
        deadline = time.monotonic() + 5
        while rolled["user"] not in lab.sh(n.name, f"kamcmd -s {CTL} ul.dump"):
            assert time.monotonic() < deadline, f"{rolled['user']} lost on {n.name}"
            time.sleep(0.2)
