"""The lab for real, as root: up, ssh, isolation, convergence, node stop/start, down.

Traffic rule: these tests talk only to loopback and the lab's own addresses on its
own bridge. Isolation is checked structurally (routes in the nodes, the host's nft
drop), never by sending anything towards another network.

Tests run in file order against one lab; the last ones take it down and compare
the host with the snapshot taken before it came up.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import time

import pytest

import lab
from lab import LabNode, LabSpec
from lab.host import CommandError
from lab.machine import Machine

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs a Debian host"),
    pytest.mark.timeout(900),  # a cold image cache builds Debian from the archive
]

SPEC = LabSpec(
    name="hapbx-mtest", bridge="hapbx-mbr0", subnet="10.79.0.0/24", host_address="10.79.0.1",
    nodes=(LabNode("pbx1", "10.79.0.11", ("netcat-openbsd",)),
           LabNode("pbx2", "10.79.0.12", ("netcat-openbsd",)),
           LabNode("witness", "10.79.0.13", ("procps",))))
NAMES = [n.name for n in SPEC.nodes]


# --- host snapshot --------------------------------------------------------

def _json(*argv):
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def _foreign_lab(alias):
    """Another lab's object: other suites may run labs concurrently on this host."""
    return bool(alias) and alias.startswith("hapbx lab ") and alias != f"hapbx lab {SPEC.name}"


def host_snapshot():
    links = _json("ip", "-j", "-d", "addr", "show")
    aliases = {lk["ifname"]: lk.get("ifalias") for lk in links}

    def ours(lk):
        if _foreign_lab(lk.get("ifalias")) or _foreign_lab(aliases.get(lk.get("master"))):
            return False
        # A node's host-side veth not (yet) on our bridge is another lab's, mid-start;
        # a leftover of ours would also show up as a leftover process.
        return not lk["ifname"].startswith("vb-") or lk.get("master") == SPEC.bridge
    our_links = [lk for lk in links if ours(lk)]
    our_devs = {lk["ifname"] for lk in our_links}
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")  # drop mount ids: they are renumbered, not state
            mounts.append((fields[4], fields[5], *fields[sep + 1:sep + 3]))
    # Other labs' state, and image builds they run in the shared cache.
    foreign_mount = lambda m: ((m[0].startswith("/var/lib/hapbx/")  # noqa: E731
                                and not m[0].startswith(SPEC.state_dir))
                               or m[0].startswith(f"{SPEC.cache_dir}/.build-"))
    tables = _json("nft", "-j", "list", "tables")["nftables"]
    cgroups = sorted(f"{h}/{d}" for h in os.listdir("/sys/fs/cgroup")
                     if os.path.isdir(f"/sys/fs/cgroup/{h}")
                     for d in os.listdir(f"/sys/fs/cgroup/{h}") if d.startswith(SPEC.name))
    return {
        "links": sorted((lk["ifname"], lk.get("linkinfo", {}).get("info_kind"), lk.get("master"),
                         lk.get("mtu"), lk.get("ifalias"), tuple(sorted(lk["flags"])))
                        for lk in our_links),
        "addresses": sorted((lk["ifname"], a["family"], a["local"], a["prefixlen"])
                            for lk in our_links for a in lk.get("addr_info", ())),
        # Routes on devices that were not there a moment ago are another lab's.
        "routes": sorted(json.dumps(r, sort_keys=True)
                         for r in _json("ip", "-j", "route", "show", "table", "all")
                         if r.get("dev", "lo") in our_devs | {"lo"}),
        "mounts": sorted(m for m in mounts if not foreign_mount(m)),
        "nft_tables": sorted((t["table"]["family"], t["table"]["name"]) for t in tables
                             if "table" in t and (not t["table"]["name"].startswith("hapbx_")
                                                  or t["table"]["name"] == SPEC.nft_table)),
        "nft_ruleset": subprocess.run(["nft", "-s", "list", "table", "inet", SPEC.nft_table],
                                      capture_output=True, text=True).stdout,
        "processes": sorted(_lab_processes()),
        "cgroups": cgroups,
        "ip_forward": open("/proc/sys/net/ipv4/ip_forward").read(),
    }


def _lab_processes():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if SPEC.state_dir in cmd or f"--machine={SPEC.name}-" in cmd:
            found.append((int(pid), cmd[:120]))
    return found


# --- fixtures -------------------------------------------------------------

@pytest.fixture(scope="module")
def before():
    lab.down(SPEC)  # a previous run that died: start from nothing
    return host_snapshot()


@pytest.fixture(scope="module")
def lab_up(before):
    lines = []
    started = time.monotonic()
    info = lab.up(SPEC, progress=lines.append)
    print("\n".join(lines), f"\nup took {time.monotonic() - started:.1f}s")
    yield info, lines
    lab.down(SPEC)


def sh(node, command, timeout=30):
    proc = lab.run(SPEC, node, command, timeout=timeout)
    assert proc.returncode == 0, f"{node}: {command}: {proc.stderr}"
    return proc.stdout


# --- tests ----------------------------------------------------------------

def test_up_reports_every_step_with_timing(lab_up):
    info, lines = lab_up
    assert all(line.startswith(f"[lab {SPEC.name}] ") for line in lines)
    for name in NAMES:
        for step in ("boot", "settle"):
            assert any(f"] {step} {name} ... " in line and line.endswith("s") for line in lines) \
                or any(f"{name} already running" in line for line in lines), lines
    assert [n.name for n in info.nodes] == NAMES
    assert all(n.host_key.startswith("ssh-ed25519 AAAA") for n in info.nodes)
    assert info.private_key_path == str(SPEC.private_key_path)


def test_known_hosts_pins_each_node_by_address_and_name(lab_up):
    info, _ = lab_up
    lines = open(info.known_hosts_path).read().splitlines()
    assert lines == [f"{n.address},{n.name} {n.host_key}" for n in info.nodes]
    assert len({n.host_key for n in info.nodes}) == len(NAMES), "nodes share a host key"


@pytest.mark.parametrize("name", NAMES)
def test_node_is_a_running_debian_with_its_own_identity(lab_up, name):
    out = sh(name, "hostname; systemctl is-system-running; cat /etc/machine-id; "
                   ". /etc/os-release; echo $VERSION_CODENAME").split()
    assert out[0] == name
    assert out[1] == "running"
    assert out[3] == "bookworm"


def test_nodes_have_distinct_machine_ids(lab_up):
    ids = {sh(n, "cat /etc/machine-id").strip() for n in NAMES}
    assert len(ids) == len(NAMES)


def test_package_layers_are_baked_in(lab_up):
    for node in SPEC.nodes:
        for package in node.packages:
            assert sh(node.name, f"dpkg-query -W -f='${{Status}}' {package}") \
                == "install ok installed"


def test_systemctl_sees_the_nodes_own_processes(lab_up):
    # The cgroup wrapper: without it the nodes share a cgroup and this listing fails.
    out = sh("pbx1", "systemctl status ssh.service --no-pager")
    assert "CGroup: /system.slice/ssh.service" in out and "sshd" in out


def test_a_wrong_host_key_is_refused(lab_up, tmp_path):
    info, _ = lab_up
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"10.79.0.11 {info.node('pbx2').host_key}\n")
    argv = [a if not a.startswith("UserKnownHostsFile=") else f"UserKnownHostsFile={wrong}"
            for a in lab.ssh_argv(SPEC, "pbx1", "true")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "host key" in proc.stderr.lower()


def test_nodes_reach_each_other(lab_up):
    for src in NAMES:
        for dst in SPEC.nodes:
            if dst.name != src:
                sh(src, f"ping -c1 -W2 {dst.address} >/dev/null")
                sh(src, "python3 -c 'import socket; socket.create_connection("
                        f"(\"{dst.address}\", 22), timeout=3).close()'")


def test_nodes_have_no_route_out_of_the_lab(lab_up):
    for name in NAMES:
        routes = json.loads(sh(name, "ip -j -4 route show table main"))
        got = sorted((r["dst"], r.get("gateway"), r["dev"]) for r in routes)
        assert got == [("10.79.0.0/24", None, "host0"), ("default", "10.79.0.1", "host0")]
        assert json.loads(sh(name, "ip -j -6 addr show dev host0")) in ([], [{}])
        assert sh(name, "cat /etc/resolv.conf").strip() == ""


def test_host_drops_forwarding_to_and_from_the_bridge(lab_up):
    ruleset = _json("nft", "-j", "list", "table", "inet", SPEC.nft_table)["nftables"]
    chains = [o["chain"] for o in ruleset if "chain" in o]
    assert any(c.get("hook") == "forward" for c in chains)
    text = subprocess.run(["nft", "list", "table", "inet", SPEC.nft_table],
                          capture_output=True, text=True, check=True).stdout
    assert f'iifname "{SPEC.bridge}" oifname != "{SPEC.bridge}" counter' in text
    assert f'oifname "{SPEC.bridge}" iifname != "{SPEC.bridge}" counter' in text
    # Node-to-node traffic (bridged, seen by the forward hook through br_netfilter)
    # was not caught by the drop.
    assert text.count("packets 0 bytes 0 drop") == 2


def test_status_reports_the_running_lab(lab_up):
    st = lab.status(SPEC)
    assert st.up and st.bridge_up and st.isolated
    assert [(n.name, n.running, n.ssh) for n in st.nodes] == [(n, True, True) for n in NAMES]


def test_second_up_converges_without_reboot(lab_up):
    pids = {n.name: n.pid for n in lab.status(SPEC).nodes}
    boot_ids = {n: sh(n, "cat /proc/sys/kernel/random/boot_id") for n in NAMES}
    lines = []
    started = time.monotonic()
    lab.up(SPEC, progress=lines.append)
    assert time.monotonic() - started < 10
    assert {n.name: n.pid for n in lab.status(SPEC).nodes} == pids
    assert not any(" boot " in line or " start " in line for line in lines), lines
    assert all(any(f"{n} already running" in line for line in lines) for n in NAMES)
    assert {n: sh(n, "cat /proc/sys/kernel/random/boot_id") for n in NAMES} == boot_ids


@pytest.mark.parametrize("hard", [False, True], ids=["shutdown", "power-cut"])
def test_stop_and_start_node_keep_its_disk(lab_up, hard):
    sh("pbx2", f"echo kept-{hard} > /root/marker && sync")
    lab.stop_node(SPEC, "pbx2", hard=hard, progress=lambda _: None)
    st = lab.status(SPEC).node("pbx2")
    assert not st.running and not st.ssh
    assert not any(d.startswith(f"{SPEC.name}-pbx2") for d in os.listdir("/sys/fs/cgroup/systemd")
                   ), "the stopped node's cgroup is left"
    assert lab.run(SPEC, "pbx1", "ping -c1 -W1 10.79.0.12").returncode != 0
    assert lab.status(SPEC).node("pbx1").running  # the others are untouched

    lab.start_node(SPEC, "pbx2", progress=lambda _: None)
    assert lab.status(SPEC).node("pbx2").ssh
    assert sh("pbx2", "cat /root/marker").strip() == f"kept-{hard}"
    sh("pbx1", "ping -c1 -W2 10.79.0.12 >/dev/null")


def test_up_converges_to_a_changed_node_list(lab_up):
    pids = {n.name: n.pid for n in lab.status(SPEC).nodes}
    smaller = dataclasses.replace(SPEC, nodes=SPEC.nodes[:2])
    lab.up(smaller, progress=lambda _: None)
    assert not os.path.exists(f"{SPEC.state_dir}/nodes/witness")
    assert "witness" not in open(SPEC.known_hosts_path).read()
    assert {n.name: n.pid for n in lab.status(smaller).nodes} == {
        n: pids[n] for n in ("pbx1", "pbx2")}

    lab.up(SPEC, progress=lambda _: None)  # and back: the witness is a new node
    st = lab.status(SPEC)
    assert st.up and st.node("pbx1").pid == pids["pbx1"]
    sh("witness", "true")


def test_a_node_that_cannot_start_says_why_and_leaves_nothing(tmp_path):
    spec = LabSpec(name="hapbx-mfail", bridge="hapbx-fbr0", subnet="10.82.0.0/24",
                   host_address="10.82.0.1", nodes=(LabNode("pbx1", "10.82.0.11"),),
                   state_dir=str(tmp_path / "state"))
    machine = Machine(spec, "pbx1")
    machine.prepare(spec.nodes[0], [tmp_path / "no-image"], "ssh-ed25519 AAAA test\n")
    with pytest.raises(CommandError) as err:  # at start or while waiting: nspawn is quick
        machine.start(spec.nodes[0], [tmp_path / "no-image"])
        machine.wait_ssh("10.82.0.11", timeout=20)
    assert "pbx1" in str(err.value) and str(machine.console_log) in str(err.value)
    machine.stop(timeout=5)
    assert not any(d.startswith("hapbx-mfail") for d in os.listdir("/sys/fs/cgroup/systemd"))
    assert not [c for _, c in _lab_processes() if "hapbx-mfail" in c]


def test_down_restores_the_host_exactly(lab_up, before):
    lab.down(SPEC, progress=lambda _: None)
    after = host_snapshot()
    for key in before:
        assert after[key] == before[key], f"host {key} differs after down"
    assert not os.path.exists(SPEC.state_dir)
    assert os.path.isdir(os.path.join(SPEC.cache_dir, "base")), "down must keep the image cache"


def test_down_of_a_lab_that_is_not_up_is_a_no_op(before):
    lines = []
    lab.down(SPEC, progress=lines.append)
    assert lines == [f"[lab {SPEC.name}] down: not up, nothing to do"]
    assert host_snapshot() == before
