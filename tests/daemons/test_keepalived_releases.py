"""keepalived of both stacks on both Debian releases: `keepalived -t` with keepalived 2.2.7
(Debian 12, this host) and 2.3.3 (Debian 13, the trixie node image as a chroot).

keepalived 2.3 resolves its track files (the HA run directory's leader, yield, reach) when it
parses its config: without the directory `keepalived -t` fails, and a keepalived started
before the HA daemons made it drops the three track files ("not found, ignoring"). The node
gets the directory from early boot through the rendered tmpfiles.d entry
(failover.tmpfiles_file), installed with the HA scripts, so before keepalived.conf.

Every check runs in a private mount and network namespace (``unshare -m -n``, then the chroot
for Debian 13): a fresh tmpfs over /run stands for a node at boot, the node's interface is a
veth there, the rendered HA scripts and tmpfiles entry go onto tmpfs mounts. Nothing reaches
the host's network or files, nor the shared root.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from components.config import load_stack_file  # noqa: E402
from components.releases import RELEASES as RELEASE_TABLE  # noqa: E402
from components.render import RenderContext, masked_secrets  # noqa: E402
from components.render import failover, keepalived  # noqa: E402
from tests.mockrun import ancestors  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and the Debian 13 chroot need root")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STACKS = ["lab", "prod"]
#: the keepalived major.minor of each release ("2.2.", "2.3."), from the releases table
RELEASES = {codename: r.versions["keepalived"].rsplit(".", 1)[0] + "." for codename, r in RELEASE_TABLE.items()}
TRACK_FILES = ("leader", "yield", "reach")


def cluster_of(stack):
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    return cluster


@pytest.fixture(params=list(RELEASES))
def release(request) -> tuple[str, list[str]]:
    """(codename, argv prefix that enters the release): the host itself, or the trixie chroot."""
    prefix = [] if request.param == "bookworm" else request.getfixturevalue("trixie_root").argv([])
    out = subprocess.run([*prefix, "keepalived", "--version"], capture_output=True, text=True)
    assert f"Keepalived v{RELEASES[request.param]}" in out.stdout + out.stderr, out   # the parametrization is real
    return request.param, prefix


def in_node(prefix: list[str], files: dict, iface: str, commands: str) -> subprocess.CompletedProcess:
    """``commands`` in a private mount+network namespace of the release, as a node at boot: an
    empty /run, the node's interface, the rendered HA scripts under /usr/local/lib, an empty
    /etc/tmpfiles.d; the rendered files are also staged under $STAGE (a host /tmp directory,
    the same path inside the chroot)."""
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="hapbx-ka-") as d:
        setup = ["mount -t tmpfs hapbx /run", "mount -t tmpfs hapbx /usr/local/lib",
                 "mount -t tmpfs hapbx /etc/tmpfiles.d", f"ip link add {iface} type veth peer name hapbx-kt0"]
        for path, f in files.items():
            local = os.path.join(d, path.lstrip("/"))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            with open(local, "w", encoding="utf-8") as fh:
                fh.write(f.content)
            if path.startswith(failover.HA_BIN + "/"):
                setup.append(f"install -D -m {f.mode} {shlex.quote(local)} {shlex.quote(path)}")
        script = f"STAGE={shlex.quote(d)}\n" + "\n".join(setup) + "\n" + commands
        return subprocess.run(["unshare", "-m", "-n", *prefix, "bash", "-ec", script], capture_output=True,
                              text=True, timeout=60)


def node_files(cluster, node) -> dict:
    ctx = RenderContext(cluster, node, masked_secrets())
    return {f.path: f for f in failover.files(ctx) + keepalived.files(ctx)}


def ka_test() -> str:
    return f'keepalived -t -f "$STAGE{keepalived.CONF}"'


@pytest.mark.parametrize("stack", STACKS)
def test_keepalived_t_passes_with_the_tmpfiles_entry(stack, release):
    codename, prefix = release
    cluster = cluster_of(stack)
    for node in cluster.nodes:
        files = node_files(cluster, node)
        tmpfiles = files[failover.HA_TMPFILES]
        # installed and applied as the deploy does: the file at its path, then its action
        out = in_node(prefix, files, cluster.network.interface,
                      f'install -m {tmpfiles.mode} "$STAGE{tmpfiles.path}" {tmpfiles.path}\n'
                      f"{tmpfiles.action}\n"
                      f"stat -c 'dir %a %U:%G' {failover.HA_RUN_DIR}\n" + ka_test())
        assert out.returncode == 0, (stack, codename, node.name, out.stdout, out.stderr)
        assert "dir 755 root:root" in out.stdout, out.stdout
        assert "not found" not in out.stderr and "realpath" not in out.stderr, out.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_without_the_run_dir_keepalived_2_3_fails(stack, release):
    """The same check at boot without the directory: 2.3.3 fails on the track files (so the
    tmpfiles entry is what makes it pass above); 2.2.7 passes, as measured."""
    codename, prefix = release
    cluster = cluster_of(stack)
    node = cluster.nodes[0]
    out = in_node(prefix, node_files(cluster, node), cluster.network.interface,
                  f"! test -e {failover.HA_RUN_DIR}\n" + ka_test())
    if codename == "bookworm":
        assert out.returncode == 0, (stack, out.stdout, out.stderr)
        return
    assert out.returncode != 0, (stack, out.stdout, out.stderr)
    for name in TRACK_FILES:
        assert f"track file {name} not found" in out.stderr, out.stderr


def test_tmpfiles_entry_and_its_validator(release):
    """The entry names HA_RUN_DIR; its validator (systemd-tmpfiles against a scratch root next to
    the staged copy) accepts it on both systemd releases and rejects a damaged one."""
    codename, prefix = release
    cluster = cluster_of("lab")
    f = failover.tmpfiles_file(RenderContext(cluster, cluster.nodes[0], masked_secrets()))
    assert f"\nd {failover.HA_RUN_DIR} 0755 root root -\n" in f.content
    assert f.service is None and f.action == f"systemd-tmpfiles --create {failover.HA_TMPFILES}"
    for content, ok in ((f.content, True), (f.content.replace(" 0755 ", " 07z5 "), False),
                        (f.content + "bogus\n", False)):
        with tempfile.TemporaryDirectory(dir="/tmp", prefix="hapbx-tf-") as d:
            stage = os.path.join(d, os.path.basename(f.path))
            with open(stage, "w", encoding="utf-8") as fh:
                fh.write(content)
            check = "set -o pipefail; " + f.validate.replace("{path}", f'"{stage}"')
            out = subprocess.run([*prefix, "bash", "-c", check], capture_output=True, text=True, timeout=60)
            assert (out.returncode == 0) == ok, (codename, content, out.stdout, out.stderr)
            if ok:   # what it made stays next to the staged copy (removed with it)
                assert os.path.isdir(os.path.join(d, "root", failover.HA_RUN_DIR.lstrip("/")))


@pytest.mark.parametrize("stack", STACKS)
def test_keepalived_validator_off_a_node(stack, release):
    """keepalived.conf's own validator where the interface does not exist (`hapbx render`, CI)
    and nothing made the HA run directory: its sandbox passes on both releases."""
    codename, prefix = release
    cluster = cluster_of(stack)
    conf = node_files(cluster, cluster.nodes[0])[keepalived.CONF]
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="hapbx-kv-") as d:
        stage = os.path.join(d, os.path.basename(conf.path))
        with open(stage, "w", encoding="utf-8") as fh:
            fh.write(conf.content)
        script = ("mount -t tmpfs hapbx /run\nset -o pipefail\n" + conf.validate.replace("{path}", f'"{stage}"'))
        out = subprocess.run(["unshare", "-m", "-n", *prefix, "bash", "-ec", script],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (stack, codename, out.stdout, out.stderr)


def test_tmpfiles_entry_is_installed_before_keepalived_conf(stack):
    """Under mocks: on each node keepalived.conf (validated by keepalived -t) is installed after
    the tmpfiles entry, which is created on install."""
    graph, _, raw = stack
    slug = failover.HA_TMPFILES.strip("/").replace("/", "-")
    for node in (n["name"] for n in raw["nodes"]):
        entry = f"vip-{node}-file-{slug}"
        assert entry in graph.resources
        assert entry in ancestors(graph, f"vip-{node}-file-etc-keepalived-keepalived.conf")
