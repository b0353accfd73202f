"""The Node baseline on two real nodes and the witness, checked from outside and inside."""
from __future__ import annotations

import copy
import socket
import time

import pytest

from components.render import masked_secrets, render_cluster
import harness
from lab import machinery

HOSTS = ["pbx1", "pbx2", "witness"]


def tcp(address: str, port: int, timeout: float = 3.0) -> str:
    """'open', 'refused' or 'timeout' from the host."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "timeout"


def listen(lab, node: str, port: int, seconds: int = 20) -> None:
    """A throwaway TCP listener inside a node, so the firewall (not an absent daemon) decides."""
    lab.sh(node, f"nohup timeout {seconds} python3 -c 'import socket,time; s=socket.socket(); "
                 f"s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((\"0.0.0.0\", {port})); "
                 f"s.listen(); [s.accept() for _ in range(100)]' >/dev/null 2>&1 &")
    for _ in range(50):
        if f":{port} " in lab.sh(node, "ss -ltn"):
            return
        time.sleep(0.1)
    raise AssertionError(f"listener on {node}:{port} did not start")


@pytest.mark.parametrize("node", HOSTS)
def test_hostname_and_hosts_file(lab, node):
    assert lab.sh(node, "hostname").strip() == node
    hosts = lab.sh(node, "getent hosts pbx1 pbx2 witness vip")
    addrs = {line.split()[1]: line.split()[0] for line in hosts.splitlines()}
    assert addrs["pbx1.lab.internal"] == lab.cluster.nodes[0].address
    assert addrs["vip.lab.internal"] == lab.cluster.vip.address


@pytest.mark.parametrize("node", HOSTS)
def test_time_sync_and_persistent_journal_run(lab, node):
    assert lab.sh(node, "systemctl is-active chrony").strip() == "active"
    assert "Reference ID" in lab.sh(node, "chronyc -n tracking")
    assert lab.sh(node, "ls /var/log/journal").strip(), "journal is not persistent"
    assert lab.sh(node, "journalctl --disk-usage")


@pytest.mark.parametrize("node", ["pbx1", "pbx2"])
def test_recordings_tmpfs_mounted_at_its_size(lab, node):
    out = lab.sh(node, f"findmnt -bno FSTYPE,SIZE {lab.cluster.recordings.tmpfs_dir}").split()
    assert out == ["tmpfs", str(lab.cluster.recordings.tmpfs_mb * 1024 * 1024)]


def test_firewall_loaded_and_effective(lab):
    pbx1, pbx2 = lab.cluster.nodes
    assert "table inet hapbx" in lab.sh("pbx1", "nft list tables")
    dmq, closed = lab.cluster.kamailio.dmq_port, 7777   # peer-only port; a port nothing opens
    listen(lab, "pbx1", dmq)
    listen(lab, "pbx1", closed)
    assert tcp(pbx1.address, 22) == "open"                # ssh from anywhere
    assert tcp(pbx1.address, closed) == "refused"         # not opened: refused from the host
    assert tcp(pbx1.address, dmq) == "refused"            # peer-only: refused from the host
    probe = "timeout 3 bash -c 'exec 3<>/dev/tcp/{}/{}' && echo open || echo closed"
    assert lab.sh("pbx2", probe.format(pbx1.address, dmq)).strip() == "open"      # open between nodes
    assert lab.sh("pbx2", probe.format(pbx1.address, closed)).strip() == "closed"
    assert lab.sh("witness", probe.format(pbx1.address, dmq)).strip() == "closed"  # witness is not the peer


def test_second_apply_executes_nothing(lab):
    result = lab.apply()
    assert result.executed == [] and not (result.created or result.updated or result.replaced)
    assert len(result.unchanged) == len(lab.first_apply.created)


def managed_files(lab) -> dict[str, list[str]]:
    return {h: [f.path for f in files] for h, files in render_cluster(lab.cluster, masked_secrets()).items()}


def fingerprint(lab) -> dict:
    out = {}
    for host, paths in managed_files(lab).items():
        sums = lab.sh(host, "sha256sum " + " ".join(paths) + "; stat -c '%n %U:%G:%a %Y' " + " ".join(paths))
        pids = lab.sh(host, "for u in chrony systemd-journald ssh nftables var-spool-hapbx-live.mount "
                            f"postgresql@{lab.cluster.postgres.version}-main redis-server keepalived etcd kamailio "
                            "hapbx-leader hapbx-reach; do "
                            "echo $u $(systemctl show -p MainPID,ActiveEnterTimestampMonotonic --value $u); done")
        out[host] = (sums, pids)
    return out


def test_forced_apply_changes_no_file_and_restarts_nothing(lab):
    before = fingerprint(lab)
    result = lab.apply(force=True)
    # every command ran again; generated passwords and certificates are kept (the engine's state)
    commands = [n for n in lab.first_apply.created if not n.startswith(("secret-", "sip-tls-", "cluster-ca"))]
    assert len(result.replaced) >= len(commands)
    assert fingerprint(lab) == before


def test_node_down_during_apply_names_node_and_step_then_converges(lab):
    changed = copy.deepcopy(lab.raw)
    changed["os"]["journaldMaxUseMb"] = lab.raw["os"]["journaldMaxUseMb"] + 1
    pbx2 = lab.cluster.nodes[1]
    machinery.stop_node(lab.spec, "pbx2", progress=lambda _: None)
    try:
        with pytest.raises(harness.ApplyError) as err:
            lab.apply(changed)
        message = str(err.value)
        assert pbx2.address in message and "pbx2-" in message, message
        # what could be done elsewhere was done and is kept
        assert "SystemMaxUse=65M" in lab.sh("pbx1", "cat /etc/systemd/journald.conf.d/hapbx.conf")
    finally:
        machinery.start_node(lab.spec, "pbx2", progress=lambda _: None)
    result = lab.apply(changed)
    # Only pbx2's work runs again; the rest executed are the old copies' deletes that the failed
    # run left pending (Pulumi runs those first), which the content hash guard makes harmless.
    assert result.replaced and all(name.startswith("pbx2-") for name in result.replaced), result.replaced
    assert not result.created and not result.updated
    assert "SystemMaxUse=65M" in lab.sh("pbx2", "cat /etc/systemd/journald.conf.d/hapbx.conf")
    lab.apply(lab.raw)  # back to the stack as shipped
