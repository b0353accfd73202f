"""The CDR pipeline and the admin API on the suite's lab (the program applied for real).

A FreeSWITCH-format JSON CDR posted to the receiver of either node lands in cdr.calls on the
primary within the seed's 5 s (measured); malformed posts are refused; the worker runs on the
writer only; records wait in Redis while the worker is stopped and are stored once when it is
back; the admin API answers on the VIP with the node's roles (and on each node address), and an
extension created through it registers through Kamailio on the VIP at once.
Traffic only to the lab's own node and VIP addresses (from the nodes themselves or the host's
bridge address).
"""
from __future__ import annotations

import json
import shlex
import socket
import time
import uuid

import pytest

from components.render import redis as redis_render
from lab import drills, sipp
from lab.context import LabContext
from bench.loadgen import fs_cdr
from hapbx_node.cdr.common import is_loopback
from hapbx_node.layout import TLS_CA, parse_status
from lab.health import STATUS as HA_STATUS_CMD

PSQL = "cd / && runuser -u postgres -- psql -X -A -t -q -d pbx -c"
RECEIVER = "hapbx-cdr-receiver.service"
WORKER = "hapbx-cdr-worker.service"
ADMIN = "hapbx-admin.service"


def other(lab, name: str) -> str:
    return next(n.name for n in lab.cluster.nodes if n.name != name)


def address(lab, name: str) -> str:
    return next(n.address for n in lab.cluster.nodes if n.name == name)


def sql(lab, node: str, query: str) -> str:
    return lab.sh(node, f"{PSQL} {shlex.quote(query)}").strip()


#: curl's option for the node's own CDR sender credential: a config on a pipe (never in argv)
AS_SENDER = ("-K <(. /etc/hapbx/cdr-sender.env; "
             "printf 'user = \"%s:%s\"\\n' \"$HAPBX_CDR_POST_USER\" \"$HAPBX_CDR_POST_PASSWORD\")")


def post(lab, node: str, record: dict | bytes, url: str | None = None, sender: bool = True) -> tuple[int, str]:
    body = record if isinstance(record, bytes) else json.dumps(record).encode()
    url = url or f"http://127.0.0.1:{lab.cluster.cdr.receiver_port}/cdr"
    out = lab.sh(node, f"curl -s -m 10 --cacert {TLS_CA} {AS_SENDER if sender else ''} -o /tmp/hapbx-cdr-answer "
                       "-w '%{http_code}' "
                       f"-H 'Content-Type: application/json' "
                       f"--data-binary @- {url} <<'HAPBX_EOF'\n{body.decode()}\nHAPBX_EOF\ncat /tmp/hapbx-cdr-answer")
    return int(out[:3]), out[3:]


def wait_stored(lab, node: str, call_uuid: str, timeout: float = 10) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if sql(lab, node, f"SELECT count(*) FROM cdr.calls WHERE call_uuid = '{call_uuid}'") == "1":
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"CDR {call_uuid} not in cdr.calls on {node} after {timeout} s")


def posted_then_stored(lab, via: str, primary: str, record: dict, timeout: float = 10) -> float:
    """Seconds from just before the post on `via` to the row visible on `primary`. A poller on the
    primary is started first (every 20 ms); both times come from the nodes' clock, which is the
    host's kernel clock for nspawn nodes: no SSH round trip is in the figure."""
    call_uuid = record["variables"]["uuid"]
    mark = f"/tmp/hapbx-cdr-seen-{call_uuid}"
    q = shlex.quote(f"SELECT count(*) FROM cdr.calls WHERE call_uuid = '{call_uuid}'")
    poller = (f"for i in $(seq {int(timeout * 50)}); do if [ \"$({PSQL} {q})\" = 1 ]; then date +%s%N > {mark}.tmp; "
              f"mv {mark}.tmp {mark}; exit 0; fi; sleep 0.02; done")
    lab.sh(primary, f"rm -f {mark}; nohup bash -c {shlex.quote(poller)} >/dev/null 2>&1 &")
    body = json.dumps(record)
    out = lab.sh(via, f"date +%s%N; curl -s -m 10 {AS_SENDER} -o /dev/null -w '%{{http_code}}' "
                      f"-H 'Content-Type: application/json' "
                      f"--data-binary @- http://127.0.0.1:{lab.cluster.cdr.receiver_port}/cdr <<'HAPBX_EOF'\n{body}\n"
                      "HAPBX_EOF")
    t0, status = out.split()
    assert status == "200", status
    t1 = lab.sh(primary, f"for i in $(seq {int(timeout * 20) + 40}); do [ -s {mark} ] && {{ cat {mark}; rm -f {mark}; "
                         "exit 0; }; sleep 0.05; done; exit 1", timeout=timeout + 30).strip()
    return (int(t1) - int(t0)) / 1e9


def test_receivers_and_admin_on_both_nodes_worker_on_the_writer_only(lab):
    w = lab.writer()
    for node in lab.cluster.nodes:
        states = lab.sh(node.name, f"systemctl is-active {RECEIVER} {ADMIN} {WORKER} || true").split()
        assert states[:2] == ["active", "active"], (node.name, states)
        assert states[2] == ("active" if node.name == w else "inactive"), (node.name, w, states)
        assert lab.sh(node.name, f"systemctl is-enabled {WORKER} 2>&1 || true").strip() in ("static", "disabled")
        assert lab.sh(node.name, "stat -c '%a %U' /etc/hapbx/cdr-worker.env /etc/hapbx/admin.env").split() == \
            ["600", "root", "600", "root"]


@pytest.mark.parametrize("via", ["writer", "standby"])
def test_freeswitch_cdr_posted_to_a_receiver_lands_on_the_primary_within_5s(lab, via):
    w = lab.writer()
    node = w if via == "writer" else other(lab, w)
    call_uuid = str(uuid.uuid4())
    took = posted_then_stored(lab, node, w, fs_cdr(call_uuid, node=node, extra={"hapbx_direction": "inbound"}))
    print(f"\nCDR posted on {node}: in cdr.calls on {w} {took * 1000:.0f} ms later (seed target: 5 s)")
    assert took < 5.0
    row = sql(lab, w, f"SELECT node, direction, caller_number, callee_number, billsec FROM cdr.calls "
                      f"WHERE call_uuid = '{call_uuid}'")
    assert row == f"{node}|inbound|1001|1002|28"


def test_a_cdr_post_without_the_senders_credential_is_refused(lab):
    """From the peer's address, and from loopback: no trust by source address."""
    w = lab.writer()
    record = fs_cdr(str(uuid.uuid4()))
    peer_url = f"https://{address(lab, w)}:{lab.cluster.cdr.receiver_port}/cdr"    # beyond loopback: HTTPS only
    assert post(lab, other(lab, w), record, url=peer_url, sender=False)[0] == 401
    assert post(lab, w, record, sender=False)[0] == 401
    assert post(lab, other(lab, w), record, url=peer_url)[0] == 200
    assert lab.sh(w, "stat -c '%a %U' /etc/hapbx/cdr-sender.env").split() == ["600", "root"]


def test_malformed_cdr_is_refused_on_the_lab(lab):
    node = lab.writer()
    assert post(lab, node, b"this is not a CDR")[0] == 400
    bad = fs_cdr(str(uuid.uuid4()))
    bad["variables"]["hangup_cause"] = "not a cause"
    assert post(lab, node, bad)[0] == 422


def test_records_wait_in_redis_while_the_worker_is_stopped_and_are_stored_once(lab):
    w = lab.writer()
    lab.sh(w, f"systemctl stop {WORKER}")
    try:
        ids = [str(uuid.uuid4()) for _ in range(30)]
        for i, u in enumerate(ids):
            assert post(lab, w if i % 2 else other(lab, w), fs_cdr(u))[0] == 200
        assert sql(lab, w, f"SELECT count(*) FROM cdr.calls WHERE call_uuid IN ({', '.join(repr(u) for u in ids)})") == "0"
    finally:
        lab.sh(w, f"systemctl start {WORKER}")
    for u in ids:
        wait_stored(lab, w, u)
    assert sql(lab, w, f"SELECT count(*) FROM cdr.calls WHERE call_uuid IN ({', '.join(repr(u) for u in ids)})") == "30"


def admin(lab, node: str, method: str, path: str, body: dict | None = None, host: str | None = None,
          token: bool = True) -> tuple[int, dict]:
    host = host or lab.cluster.vip.address
    auth = ""
    if token:
        auth = "-H \"Authorization: Bearer $(sed -n 's/^HAPBX_ADMIN_TOKEN=\"\\(.*\\)\"$/\\1/p' /etc/hapbx/admin.env)\" "
    data = f"-H 'Content-Type: application/json' --data-binary {shlex.quote(json.dumps(body))} " if body is not None else ""
    # HTTPS beyond loopback, the certificate checked against the cluster CA; plain HTTP on loopback
    scheme = "http" if is_loopback(host) else "https"
    out = lab.sh(node, f"curl -s -m 10 --cacert {TLS_CA} -X {method} {auth}{data}-o /tmp/hapbx-admin-answer "
                       f"-w '%{{http_code}}' {scheme}://{host}:{lab.cluster.admin.port}{path}; cat /tmp/hapbx-admin-answer")
    return int(out[:3]), (json.loads(out[3:]) if out[3:].strip() else {})


def test_admin_api_and_receiver_refuse_plain_http_beyond_loopback(lab):
    """From the peer: plain HTTP to the admin API on the VIP and to the receiver on the node address gets
    no HTTP answer (curl's 000); HTTPS checked against the cluster CA answers; loopback stays HTTP."""
    w = lab.writer()
    s = other(lab, w)
    for url in (f"http://{lab.cluster.vip.address}:{lab.cluster.admin.port}/health",
                f"http://{address(lab, w)}:{lab.cluster.cdr.receiver_port}/health"):
        code = lab.sh(s, f"curl -s -m 5 -o /dev/null -w '%{{http_code}}' {url}", check=False).strip()
        assert code == "000", (url, code)
        https = url.replace("http://", "https://")
        assert lab.sh(s, f"curl -s -m 5 --cacert {TLS_CA} -o /dev/null -w '%{{http_code}}' {https}").strip() == "200"
    assert admin(lab, w, "GET", "/health", host="127.0.0.1", token=False)[0] == 200


def test_admin_api_reports_the_roles_of_each_node(lab):
    w = lab.writer()
    s = other(lab, w)
    status, health = admin(lab, w, "GET", "/health", token=False)
    assert status == 200 and health["node"] == w, health
    assert (health["roles"]["postgres"], health["roles"]["redis"], health["roles"]["vip"]) == ("primary", "master", True)
    status, health = admin(lab, s, "GET", "/health", host=address(lab, s), token=False)
    assert status == 200 and health["node"] == s
    assert (health["roles"]["postgres"], health["roles"]["redis"], health["roles"]["vip"]) == ("standby", "replica", False)
    assert admin(lab, s, "GET", "/ready", host=address(lab, s), token=False)[0] == 503
    assert admin(lab, w, "GET", "/ready", token=False)[0] == 200
    assert admin(lab, w, "GET", "/api/v1/extensions", token=False)[0] == 401
    status, doc = admin(lab, w, "GET", "/openapi.json", token=False)
    assert status == 200 and "/api/v1/extensions" in doc["paths"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        return sock.getsockname()[1]


def test_extension_created_through_the_api_registers_through_kamailio_at_once(lab):
    w = lab.writer()
    vip = lab.cluster.vip.address
    if f" {vip}/" not in lab.sh(w, "ip -4 -o addr show"):
        pytest.skip("the VIP is on no node: the HA layer did not place it")
    number = f"7{int(time.time()) % 100000:05d}"
    status, ext = admin(lab, w, "POST", "/api/v1/extensions",
                        {"number": number, "type": "user", "display_name": "Lab API user"})
    created = time.monotonic()
    assert status == 201, ext
    r = sipp.run(sipp.scenario("register.xml"), f"{vip}:{lab.cluster.kamailio.sip_port}", lab.raw["lab"]["hostAddress"],
                 port=free_port(), keys={"user": number, "domain": vip}, auth=(number, ext["sip_password"]))
    took = time.monotonic() - created
    print(f"\nextension {number} created through the API: REGISTER 200 through the VIP {took * 1000:.0f} ms later "
          f"(sipp run included)")
    assert r.ok, (r.stdout, r.errors)
    assert took < 1.0
    # disabled through the API: refused at once
    assert admin(lab, w, "PATCH", f"/api/v1/extensions/{number}", {"enabled": False})[0] == 200
    refused = sipp.run(sipp.scenario("register.xml", **{'<recv response="200" rtd="true"/>': '<recv response="403"/>'}),
                       f"{vip}:{lab.cluster.kamailio.sip_port}", lab.raw["lab"]["hostAddress"], port=free_port(),
                       keys={"user": number, "domain": vip}, auth=(number, ext["sip_password"]))
    assert refused.ok, (refused.stdout, refused.errors)
    assert admin(lab, w, "DELETE", f"/api/v1/extensions/{number}")[0] == 204


REDIS = redis_render.local_cli()   # root's default user, over TLS


def ha(lab, node: str) -> dict[str, str]:
    """The node's `hapbx-ha status` (vip, postgres, daemon_writer, ...)."""
    return parse_status(lab.sh(node, f"{HA_STATUS_CMD} 2>/dev/null || true"))


def wait_for(what: str, predicate, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"{what}: not after {timeout} s")


def leads(lab, node: str) -> bool:
    s = ha(lab, node)
    return s.get("daemon_writer") == "1" and s.get("vip") == "present" and s.get("postgres") == "primary"


def follows(lab, node: str) -> bool:
    return ha(lab, node).get("postgres") == "standby" and ha(lab, node).get("daemon_writer") == "0"


def switch_over(lab, new: str) -> float:
    """The operator's planned switchover (drills.switch_to: `hapbx-ha switchover` on the writer, from a
    healthy cluster to a healthy one, so a switchover back may follow at once: a standby marked
    stale is never promoted); seconds it took."""
    started = time.monotonic()
    drills.switch_to(LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None), new)
    return time.monotonic() - started


def test_queue_drains_on_the_new_vip_owner_after_a_switchover(lab):
    """Records queued (worker stopped) when the writer hands over are stored by the new owner's
    worker, each once; then the cluster is switched back to its first layout for the tests after."""
    w = lab.writer()
    s = other(lab, w)
    if not (leads(lab, w) and follows(lab, s)):
        pytest.skip(f"HA not settled ({w}: {ha(lab, w)}, {s}: {ha(lab, s)})")
    lab.sh(w, f"systemctl stop {WORKER}")
    ids = [str(uuid.uuid4()) for _ in range(40)]
    try:
        for i, u in enumerate(ids):
            assert post(lab, w if i % 2 else s, fs_cdr(u))[0] == 200
        assert lab.sh(w, f"{REDIS} llen cdr:queue").strip() == "40"
        took = switch_over(lab, s)
        assert lab.sh(s, f"systemctl is-active {WORKER}").strip() == "active"
        assert lab.sh(w, f"systemctl is-active {WORKER} || true").strip() != "active"
        listed = ", ".join(repr(u) for u in ids)
        drained = wait_for("queue drained on the new owner", lambda: sql(
            lab, s, f"SELECT count(*) FROM cdr.calls WHERE call_uuid IN ({listed})") == "40", 60)
        assert sql(lab, s, f"SELECT count(DISTINCT call_uuid) FROM cdr.calls WHERE call_uuid IN ({listed})") == "40"
        print(f"\nswitchover {w} -> {s} (healthy again) in {took:.1f} s, 40 queued CDRs stored there "
              f"{drained:.1f} s after that")
    finally:
        # back to the first layout (the other lab tests expect the initial primary to lead)
        if not leads(lab, w):
            switch_over(lab, w)
        lab.sh(w, f"systemctl is-active -q {WORKER} || systemctl start {WORKER}")
    assert leads(lab, w) and follows(lab, s)
    assert lab.sh(s, f"systemctl is-active {WORKER} || true").strip() != "active"
