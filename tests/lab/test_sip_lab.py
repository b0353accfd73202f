"""SIP, media and recordings on the suite's lab (two nspawn nodes, the program applied for real).

From the host (the lab bridge's own address) to the lab's own node and VIP addresses only:
Kamailio answers OPTIONS on both node addresses and on the VIP; a SIPp phone registers with digest
auth through the VIP and calls another registered phone and a queue number, which reaches a
node's media stand-in through dispatcher; registrations are on both nodes (DMQ). A recording
written on one node appears on the peer within lsyncd's configured delay.
"""
from __future__ import annotations

import shlex
import socket
import threading
import time
import uuid

import pytest

from lab import drills, sipp
from lab.context import LabContext

PASSWORDS = {"1001": "lab-secret-pw-1001", "1002": "lab-secret-pw-1002"}
QUEUE = "8000"


def sql(lab, node: str, statement: str) -> str:
    return lab.sh(node, f"runuser -u postgres -- psql -X -q -A -t -v ON_ERROR_STOP=1 -d pbx -c \"{statement}\"")


@pytest.fixture(scope="module")
def sip(lab):
    """The lab's addresses, and the test users provisioned through the schema (on the primary: the
    node that leads once the cluster is healthy, which earlier tests may have moved)."""
    primary = drills.wait_healthy(LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None), 120,
                                  "the SIP tests")
    for number in PASSWORDS:
        sql(lab, primary, f"INSERT INTO pbx.extensions (number, type, display_name) VALUES ('{number}', 'user', 'Lab {number}') "
                 "ON CONFLICT (number) DO NOTHING")
        sql(lab, primary, f"SELECT pbx.set_sip_password('{number}', '{PASSWORDS[number]}')")
    sql(lab, primary, f"INSERT INTO pbx.extensions (number, type, display_name) VALUES ('{QUEUE}', 'queue', 'Lab queue') "
             "ON CONFLICT (number) DO NOTHING")
    # the standby's Kamailio reads its local replica: wait until the users are there
    standby = next(n.name for n in lab.cluster.nodes if n.name != primary)
    deadline = time.monotonic() + 15
    while "1002" not in lab.sh(standby, "runuser -u postgres -- psql -X -A -t -d pbx -c "
                                        "\"SELECT username FROM kamailio.subscriber\""):
        assert time.monotonic() < deadline, "users not replicated to the standby"
        time.sleep(0.2)
    return lab


def host_ip(lab) -> str:
    return lab.raw["lab"]["hostAddress"]


def vip_owner(lab) -> str | None:
    for node in lab.cluster.nodes:
        if f" {lab.cluster.vip.address}/" in lab.sh(node.name, "ip -4 -o addr show"):
            return node.name
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def target(lab, address: str) -> str:
    return f"{address}:{lab.cluster.kamailio.sip_port}"


@pytest.mark.parametrize("node", ["pbx1", "pbx2"])
def test_kamailio_runs_with_the_rendered_config(lab, node):
    assert lab.sh(node, "systemctl is-active kamailio").strip() == "active"
    c = lab.cluster
    udp, tcp = lab.sh(node, "ss -lunH"), lab.sh(node, "ss -ltnH")
    address = next(n.address for n in c.nodes if n.name == node)
    for addr, port in ((address, c.kamailio.sip_port), (c.vip.address, c.kamailio.sip_port)):
        assert f"{addr}:{port} " in udp and f"{addr}:{port} " in tcp, (node, addr, port)   # the VIP too, owned or not
        assert f"{addr}:{c.kamailio.tls_port} " in tcp, (node, addr, "tls")
    # DMQ over TCP only: a KDMQ over UDP could carry any source address
    assert f"{address}:{c.kamailio.dmq_port} " in tcp and f":{c.kamailio.dmq_port} " not in udp
    cmdline = lab.sh(node, "cat /proc/$(cat /run/kamailio/kamailio.pid)/cmdline | tr '\\0' ' '")
    assert f"-m {c.kamailio.shm_mb} -M {c.kamailio.pkg_mb}" in cmdline
    nodes = lab.sh(node, "kamcmd -s unix:/run/kamailio/kamailio_ctl dmq.list_nodes")
    peer = next(n.address for n in c.nodes if n.name != node)
    assert peer in nodes and "active" in nodes


@pytest.mark.parametrize("node", ["pbx1", "pbx2"])
def test_options_answered_on_each_node_address(lab, node):
    address = next(n.address for n in lab.cluster.nodes if n.name == node)
    r = sipp.run(sipp.scenario("options.xml"), target(lab, address), host_ip(lab))
    assert r.ok, (r.stdout, r.errors)


def test_options_answered_on_the_vip(lab):
    owner = vip_owner(lab)
    if owner is None:
        pytest.skip("the VIP is on no node: the HA layer did not place it (VIP checks not run)")
    r = sipp.run(sipp.scenario("options.xml"), target(lab, lab.cluster.vip.address), host_ip(lab))
    assert r.ok, (owner, r.stdout, r.errors)


@pytest.mark.parametrize("node", ["pbx1", "pbx2"])
def test_media_stand_in_is_probed_active_by_dispatcher(lab, node):
    assert lab.sh(node, "systemctl is-active hapbx-media-uas").strip() == "active"
    deadline = time.monotonic() + 15
    while True:
        out = lab.sh(node, "kamcmd -s unix:/run/kamailio/kamailio_ctl dispatcher.list")
        flags = [line.split()[-1] for line in out.splitlines() if "FLAGS:" in line]
        if len(flags) == 2 and all(f.startswith("A") for f in flags):
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.5)
    for n in lab.cluster.nodes:
        assert f"sip:{n.address}:{lab.cluster.media.sip_port}" in out


def test_register_and_calls_through_the_vip(sip):
    lab = sip
    if vip_owner(lab) is None:
        pytest.skip("the VIP is on no node: the HA layer did not place it (VIP checks not run)")
    c, me, vip = lab.cluster, host_ip(lab), lab.cluster.vip.address
    keys = {"domain": vip}
    port = free_port()
    r = sipp.run(sipp.scenario("register.xml"), target(lab, vip), me, port=port, keys={**keys, "user": "1002"},
                 auth=("1002", PASSWORDS["1002"]))
    assert r.ok, (r.stdout, r.errors)
    wrong = sipp.run(sipp.scenario("register.xml", **{'<recv response="200" rtd="true"/>': '<recv response="403"/>'}),
                     target(lab, vip), me, keys={**keys, "user": "1001"}, auth=("1001", "not-the-password"))
    assert wrong.ok, (wrong.stdout, wrong.errors)
    # the registration is on both nodes (DMQ), whichever holds the VIP
    for node in c.nodes:
        deadline = time.monotonic() + 5
        while "1002" not in lab.sh(node.name, "kamcmd -s unix:/run/kamailio/kamailio_ctl ul.dump"):
            assert time.monotonic() < deadline, node.name
            time.sleep(0.1)
    phone = sipp.Uas(me, port)
    try:
        r = sipp.run(sipp.scenario("call.xml"), target(lab, vip), me, service="1002", keys={**keys, "user": "1001"},
                     auth=("1001", PASSWORDS["1001"]), extra=("-d", "500"))
        assert r.ok, (r.stdout, r.errors)
        assert phone.invites() == 1
    finally:
        phone.stop()
    r = sipp.run(sipp.scenario("call.xml"), target(lab, vip), me, service=QUEUE, keys={**keys, "user": "1001"},
                 auth=("1001", PASSWORDS["1001"]), extra=("-d", "500"), messages=True)
    assert r.ok, (r.stdout, r.errors)
    engines = {f"sip:media@{n.address}:{c.media.sip_port}" for n in c.nodes}
    assert any(e in r.messages for e in engines), r.messages[-3000:]   # answered by a node's stand-in


def test_a_call_through_the_vip_ends_up_in_cdr_calls(sip):
    """The media stand-in's CDR, posted as mod_json_cdr posts (its node's receiver, the Redis queue,
    the writer's worker): the row is in cdr.calls on the writer within seconds of the BYE."""
    from components.render import sipp_uas
    lab = sip
    if vip_owner(lab) is None:
        pytest.skip("the VIP is on no node: the HA layer did not place it (VIP checks not run)")
    c, me, vip = lab.cluster, host_ip(lab), lab.cluster.vip.address
    for n in c.nodes:   # the stand-in spools each call's CDR, its poster posts them
        assert lab.sh(n.name, f"systemctl is-active {sipp_uas.UNIT} {sipp_uas.CDR_UNIT}").split() == ["active"] * 2
    call_id = f"labcdr-{uuid.uuid4().hex[:12]}-%u@{me}"
    r = sipp.run(sipp.scenario("call.xml"), target(lab, vip), me, service=QUEUE, keys={"domain": vip, "user": "1001"},
                 auth=("1001", PASSWORDS["1001"]), extra=("-d", "500", "-cid_str", call_id), messages=True)
    assert r.ok, (r.stdout, r.errors)
    hung_up = time.monotonic()
    sent = call_id.replace("%u", "1")
    want = sipp_uas.call_uuid(sent)
    engine = next((n.name for n in c.nodes if f"sip:media@{n.address}:{c.media.sip_port}" in r.messages), None)
    assert engine, r.messages[-3000:]
    w = lab.writer()
    query = shlex.quote("SELECT node, direction, caller_number, callee_number, hangup_cause, billsec <= duration, "
                        f"raw->'variables'->>'sip_call_id' FROM cdr.calls WHERE call_uuid = '{want}'")
    row = lab.sh(w, f"for i in $(seq 200); do r=$(cd / && runuser -u postgres -- psql -X -A -t -q -d pbx -c {query}); "
                    '[ -n "$r" ] && { echo "$r"; exit 0; }; sleep 0.05; done; exit 1', timeout=30, check=False).strip()
    took = time.monotonic() - hung_up
    if not row:
        kept = {n.name: lab.sh(n.name, f"ls {sipp_uas.ERROR_DIR} 2>/dev/null | grep -c {want} || true").strip()
                for n in c.nodes}
        journal = lab.sh(engine, f"{sipp_uas.POST_CDR} --pending 2>&1; journalctl -u {sipp_uas.UNIT} -u {sipp_uas.CDR_UNIT} "
                                 "-n 20 --no-pager | grep post-cdr || true")
        raise AssertionError(f"call {sent} ({want}, answered on {engine}) not in cdr.calls on {w} within 10 s; "
                             f"kept in the error dirs: {kept}; {journal}")
    assert row == f"{engine}|internal|1001|{QUEUE}|NORMAL_CLEARING|t|{sent}", row
    assert took < 5.0, took
    for n in c.nodes:
        assert lab.sh(n.name, f"ls {sipp_uas.ERROR_DIR} 2>/dev/null | grep -c {want} || true").strip() == "0"
        # one dynamic user for both units; nothing left to post once the poster is done
        uids = lab.sh(n.name, f"for u in {sipp_uas.UNIT} {sipp_uas.CDR_UNIT}; do "
                              "ps -o uid= -p $(systemctl show -p MainPID --value $u); done").split()
        assert len(uids) == 2 and uids[0] == uids[1] != "0", uids
        assert lab.sh(n.name, f"for i in $(seq 40); do [ \"$({sipp_uas.POST_CDR} --pending)\" = 0 ] && exit 0; "
                              f"sleep 0.05; done; {sipp_uas.POST_CDR} --pending", check=False).strip() == "", n.name
    print(f"\ncall {sent} answered on {engine}: in cdr.calls on {w} {took * 1000:.0f} ms after the BYE's 200 "
          "(polled every 50 ms through one lab command)")


def test_recording_written_on_one_node_appears_on_the_peer_within_the_delay(lab):
    """Written as the media engine does (a hidden .part, then renamed): the peer has the whole file
    within recordings.syncDelaySeconds (+ one SSH connection and rsync); a .part never goes over."""
    c = lab.cluster
    delay = c.recordings.sync_delay_seconds
    day = time.strftime("%Y/%m/%d", time.gmtime())
    for src, dst in (("pbx1", "pbx2"), ("pbx2", "pbx1")):
        name = f"labtest-{uuid.uuid4()}.wav"
        folder = f"{c.recordings.directory}/{src}/{day}"
        path = f"{folder}/{name}"
        arrived: dict = {}
        poll = (f"for i in $(seq 1 400); do [ -f {path} ] && break; sleep 0.025; done; date +%s.%N; "
                f"sha256sum {path} | cut -d' ' -f1; find {c.recordings.directory} -name '*.part' | wc -l")
        watcher = threading.Thread(target=lambda: arrived.update(out=lab.sh(dst, poll, timeout=30)))
        watcher.start()
        time.sleep(0.3)
        written = lab.sh(src, f"mkdir -p {folder} && head -c 400000 /dev/urandom > {folder}/.{name}.part && "
                              f"sha256sum {folder}/.{name}.part | cut -d' ' -f1 && mv {folder}/.{name}.part {path} && "
                              "date +%s.%N").split()
        watcher.join(timeout=40)
        at, digest, parts = arrived["out"].split()
        seconds = float(at) - float(written[1])
        print(f"\nrecording {src} -> {dst}: {seconds:.2f} s (syncDelaySeconds {delay})")
        assert digest == written[0]
        assert seconds <= delay + 2.0, seconds
        assert parts == "0"


def test_recordings_key_only_writes_recordings(lab):
    """The peer's lsyncd key runs rsync into <recordings>/<peer> and nothing else."""
    from components.render import lsyncd
    peer = lab.cluster.nodes[0]
    ssh = (f"ssh -i {lsyncd.KEY} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={lsyncd.KNOWN_HOSTS} "
           f"{lsyncd.USER}@{peer.address}")
    out = lab.sh("pbx2", f"{ssh} cat /etc/shadow 2>&1; echo rc=$?", check=False)
    assert "rrsync error" in out and "root:" not in out
    out = lab.sh("pbx2", f"{ssh} rsync --server --sender -e.LsfxCIvu . /etc/ 2>&1; echo rc=$?", check=False)
    assert "rc=0" not in out   # write-only: nothing can be read back
