"""Rolling changes (components/remote.py `rolling`): one node at a time, the VIP holder last.

The graph under Pulumi mocks (Kamailio, Redis, the media engine, the CDR receiver, the admin API):
per daemon a first pass chained node after node, then a final pass after every first pass, each
pass triggered by its own node's files only. Then the passes' real scripts are run in the graph's
order against stub `systemctl`/`ip`/`kamcmd`/`redis-cli`/`ss`, with
either node holding the VIP: the holder's restart is deferred by the first pass and done by the
final pass, strictly after the peer's; nothing pending restarts nothing.
"""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

from components import remote as rc
from components.render import kamailio as kam
from components.render import redis as rd
from components.render import cdr, sipp_uas
from tests.mockrun import ancestors, run_ok

# daemon -> (first-pass name, node order in the chain, what depends on the final pass); {unit}: the
# stack's media engine (lab: the SIPp stand-in, prod: FreeSWITCH)
ROLLING = {
    "kamailio": ("sip-{node}-svc-kamailio", None, "sip-{node}-dispatcher"),
    "redis": ("redis-{node}-handler", "primary-first", None),
    "media": ("media-{node}-svc-{unit}", None, None),
    "cdr-receiver": ("cdr-{node}-svc-hapbx-cdr-receiver", None, None),
    "admin": ("cdr-{node}-svc-hapbx-admin", None, None),
}
MEDIA_UNIT = {"sipp-uas": "hapbx-media-uas", "freeswitch": "freeswitch"}


def first_pass(raw: dict, daemon: str) -> str:
    return ROLLING[daemon][0].replace("{unit}", MEDIA_UNIT[raw["media"]["engine"]])


def order(raw: dict, daemon: str) -> list[str]:
    names = [n["name"] for n in raw["nodes"]]
    if ROLLING[daemon][1] == "primary-first":
        primary = raw["postgres"]["initialPrimary"]
        return [primary, *(n for n in names if n != primary)]
    return names


@pytest.mark.parametrize("daemon", sorted(ROLLING))
def test_chain_one_node_at_a_time_then_the_deferred_pass(stack, daemon):
    graph, _, raw = stack
    _, _, dependant = ROLLING[daemon]
    first_name = first_pass(raw, daemon)
    a, b = order(raw, daemon)
    first = {n: graph.resources[first_name.format(node=n)] for n in (a, b)}
    last = {n: graph.resources[first_name.format(node=n) + "-last"] for n in (a, b)}
    # first pass: b's waits for a's (and so for a's health wait inside it); a's never for b's
    assert first[a].name in ancestors(graph, first[b].name)
    assert first[b].name not in ancestors(graph, first[a].name)
    # final pass: after every first pass, one node after the other
    for n in (a, b):
        assert {first[a].name, first[b].name} <= ancestors(graph, last[n].name)
        assert last[n].name not in ancestors(graph, first[a].name) | ancestors(graph, first[b].name)
    assert last[a].name in ancestors(graph, last[b].name)
    # each node's passes run again only when that node's files change (same triggers, own files)
    for n in (a, b):
        assert first[n].inputs["triggers"] == last[n].inputs["triggers"] and first[n].inputs["triggers"]
        assert first[n].inputs["triggers"] != first[b if n == a else a].inputs["triggers"]
        files = [d for d in first[n].depends_on if "-file-" in d]
        assert files and all(f"-{n}-" in d for d in files)
    # the VIP holder test is in the first pass only, with the stack's VIP
    vip = raw["vip"]["address"]
    for n in (a, b):
        assert rc.holds_vip(vip) in first[n].inputs["create"]
        assert rc.holds_vip(vip) not in last[n].inputs["create"]
        for r in (first[n], last[n]):
            subprocess.run(["bash", "-n"], input=r.inputs["create"], text=True, check=True)
    if dependant:
        for n in (a, b):
            assert last[n].name in graph.resources[dependant.format(node=n)].depends_on


def test_media_handler_waits_until_the_engine_listens_again(stack):
    graph, _, raw = stack
    script = graph.resources[first_pass(raw, "media").format(node=raw["nodes"][0]["name"])].inputs["create"]
    assert rc.listening(raw.get("media", {}).get("sipPort", 5080), "udp") in script
    assert script.index("exec 9>&-") < script.index("until healthy")


def test_kamailio_handler_waits_for_health_and_the_peer_in_dmq(lab_config):
    graph, _ = run_ok(lab_config)
    script = graph.resources["sip-pbx1-svc-kamailio"].inputs["create"]
    assert "core.uptime" in script and "dmq.list_nodes" in script and "awk -v peer=10.77.0.12" in script
    assert "not healthy 60 s after the restart" in script
    # the systemd lock is let go before the health wait (other steps on the node need the manager)
    assert script.index("exec 9>&-") < script.index("until healthy")


STUBS = {
    # systemctl: every unit active; restarts and starts logged with the node's name
    "systemctl": """#!/bin/bash
case "$1" in
  is-active) exit 0 ;;
  restart|start|reload) echo "$NODE $1 $2" >> "$LOG" ;;
esac
exit 0
""",
    "ip": """#!/bin/bash
[ "$NODE" = "$VIP_NODE" ] && echo "2: host0    inet $VIP/24 scope global secondary host0:vip"
echo "2: host0    inet 10.0.0.99/24 scope global host0"
""",
    "kamcmd": """#!/bin/bash
case "$3" in
  core.uptime) echo 'uptime: 1' ;;
  dmq.list_nodes) printf '{\\n\\thost: %s\\n\\tstatus: active\\n}\\n' "$PEER" ;;
esac
""",
    "redis-cli": """#!/bin/bash
for a in "$@"; do last=$a; done
case "$last" in
  ping) echo PONG ;;
  replication) printf 'role:master\\r\\n' ;;
esac
""",
    "flock": "#!/bin/bash\nexit 0\n",
    # ss: the restarted service listens again
    "ss": "#!/bin/bash\necho 'LISTEN 0 0 10.0.0.99:5080 0.0.0.0:*'\n",
}


def run_passes(graph, tmp_path, first_name: str, nodes: list[str], peers: dict[str, str], vip: str,
               vip_node: str, pending: set[str], marker: str) -> tuple[list[str], list[str]]:
    """Run the four passes' scripts in the graph's order; return the logged (re)starts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    log = tmp_path / "log"
    log.write_text("")
    names = [first_name.format(node=n) for n in nodes] + [first_name.format(node=n) + "-last" for n in nodes]
    names.sort(key=lambda n: len(ancestors(graph, n) & set(names)))   # a chain: fewer ancestors first
    for node in nodes:
        d = tmp_path / node
        d.mkdir(exist_ok=True)
        (d / "admin.env").write_text("REDISCLI_AUTH=x\n")
        if node in pending:
            (d / os.path.basename(marker)).write_text("")
    outputs = []
    for name in names:
        node = next(n for n in nodes if f"-{n}-" in name)
        d = tmp_path / node
        text = (graph.resources[name].inputs["create"]
                .replace(marker, str(d / os.path.basename(marker)))
                .replace(rc.PENDING_DIR, str(d))
                .replace(rc.PLANNED_DIR, str(d))
                .replace("/run/lock/hapbx-systemd.lock", str(d / "lock"))
                .replace("/etc/redis/admin.env", str(d / "admin.env")))
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "NODE": node, "VIP_NODE": vip_node,
               "VIP": vip, "PEER": peers[node], "LOG": str(log)}
        out = subprocess.run(["bash", "-c", text], env=env, text=True, capture_output=True, timeout=60, cwd=d)
        assert out.returncode == 0, (name, out.stderr)
        outputs.append(f"{name}: {out.stdout.strip().splitlines()[-1]}")
    return log.read_text().splitlines(), outputs


@pytest.mark.parametrize("vip_node", ["pbx1", "pbx2"])
@pytest.mark.parametrize("daemon", sorted(ROLLING))
def test_the_vip_holder_restarts_last_whichever_it_is(lab_config, tmp_path, daemon, vip_node):
    graph, _ = run_ok(lab_config)
    nodes = order(lab_config, daemon)
    addrs = {n["name"]: n["address"] for n in lab_config["nodes"]}
    peers = {n: next(addrs[p] for p in nodes if p != n) for n in nodes}
    marker = {"kamailio": f"{rc.PENDING_DIR}/{kam.SERVICE}", "redis": rd.CONF_MARKER,
              "media": f"{rc.PENDING_DIR}/{sipp_uas.UNIT}", "cdr-receiver": f"{rc.PENDING_DIR}/{cdr.RECEIVER_UNIT}",
              "admin": f"{rc.PENDING_DIR}/{cdr.ADMIN_UNIT}"}[daemon]
    other = next(n for n in nodes if n != vip_node)
    restarts, outputs = run_passes(graph, tmp_path, first_pass(lab_config, daemon), nodes, peers, lab_config["vip"]["address"],
                                   vip_node, set(nodes), marker)
    assert [r.split()[0] for r in restarts] == [other, vip_node], (restarts, outputs)
    assert all(r.split()[1] == "restart" for r in restarts)
    assert any(f"{vip_node}" in o and "deferred: this node holds the VIP" in o for o in outputs), outputs
    # nothing pending: nothing restarts on any pass
    restarts, outputs = run_passes(graph, tmp_path, first_pass(lab_config, daemon), nodes, peers, lab_config["vip"]["address"],
                                   vip_node, set(), marker)
    assert restarts == [], outputs
    # only the VIP holder's files changed: it restarts (in the final pass), the peer does not
    restarts, _ = run_passes(graph, tmp_path, first_pass(lab_config, daemon), nodes, peers, lab_config["vip"]["address"],
                             vip_node, {vip_node}, marker)
    assert [r.split()[0] for r in restarts] == [vip_node]
