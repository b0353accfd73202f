"""lsyncd's configuration through lsyncd's own loader, and the key steps of the recordings sync.

lsyncd has no check-only switch; the validator loads the staged file through a wrapper whose
init hook exits before the first rsync (see components/render/lsyncd.py), so what lsyncd would
refuse at start (Lua syntax, unknown settings or sync keys, a missing source directory) is
refused here. Off a node the recordings directory does not exist: these checks run in a private
mount namespace with a tmpfs on /var/lib holding it, nothing of the host is touched.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile

import pytest

from components.config import load_stack_file
from components.remote import script
from components.render import RenderContext, masked_secrets
from components.render import lsyncd
from tests.mockrun import ROOT

pytestmark = [
    pytest.mark.skipif(shutil.which("lsyncd") is None, reason="needs lsyncd (Debian package)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces need root"),
]


def cluster(stack="lab", **recordings):
    c, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    if recordings:
        c = dataclasses.replace(c, recordings=dataclasses.replace(c.recordings, **recordings))
    return c


def files(c, node=0):
    return {f.path: f for f in lsyncd.files(RenderContext(c, c.nodes[node], masked_secrets()))}


def sandboxed(command: str, setup: str = "", stdin: str | None = None) -> subprocess.CompletedProcess:
    """command in a private mount namespace with an empty tmpfs on /var/lib (and /etc/ssh)."""
    inner = f"mount -t tmpfs hapbx-test /var/lib && {setup}\n{command}"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "bash", "-c", inner], input=stdin,
                          capture_output=True, text=True, timeout=60)


def validate(f, make_source: str | None) -> subprocess.CompletedProcess:
    d = tempfile.mkdtemp(prefix="hapbx-lsyncd-")
    try:
        stage = os.path.join(d, os.path.basename(f.path))
        with open(stage, "w") as fh:
            fh.write(f.content)
        setup = f"mkdir -p {make_source}" if make_source else "true"
        return sandboxed("set -o pipefail; " + f.validate.replace("{path}", f'"{stage}"'), setup)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("stack", ["lab", "prod"])
@pytest.mark.parametrize("node", [0, 1])
def test_config_passes_lsyncd(stack, node):
    c = cluster(stack)
    conf = files(c, node)[lsyncd.CONF]
    out = validate(conf, lsyncd.own_dir(RenderContext(c, c.nodes[node], {})))
    assert out.returncode == 0 and "lsyncd accepted the configuration" in out.stdout, (out.stdout, out.stderr)


def test_lsyncd_check_rejects_what_lsyncd_would():
    c = cluster()
    conf = files(c)[lsyncd.CONF]
    src = lsyncd.own_dir(RenderContext(c, c.nodes[0], {}))
    for old, new in [("delay = 1,", "delya = 1,"),               # unknown sync key
                     ("maxDelays = 1000,", "maxDelayz = 1000,"),  # unknown setting
                     ("exclude = {", "exclude = {{")]:            # Lua syntax
        assert old in conf.content, old
        out = validate(dataclasses.replace(conf, content=conf.content.replace(old, new, 1)), src)
        assert out.returncode != 0, (new, out.stdout)
    out = validate(conf, None)                                      # the source directory is missing
    assert out.returncode != 0 and "source" in (out.stdout + out.stderr).lower()


def test_config_follows_the_stack():
    c = cluster(sync_delay_seconds=7, rsync_options=["--bwlimit=20000", "--timeout=30"])
    conf = files(c)[lsyncd.CONF].content
    pbx1, pbx2 = c.nodes
    assert f'source = "{c.recordings.directory}/{pbx1.name}/"' in conf
    assert f'target = "{lsyncd.USER}@{pbx2.address}:/"' in conf
    assert "delay = 7," in conf and "delete = false," in conf
    assert 'exclude = { ".*", "*.part" }' in conf
    assert '_extra = { "--bwlimit=20000", "--timeout=30" }' in conf
    assert f"-i {lsyncd.KEY} -o BatchMode=yes -o StrictHostKeyChecking=yes" in conf
    out = validate(files(c)[lsyncd.CONF], f"{c.recordings.directory}/{pbx1.name}")
    assert out.returncode == 0, out.stdout + out.stderr
    with pytest.raises(ValueError, match="rsyncOptions"):
        files(cluster(rsync_options=['--x="y"']))


def test_unit_passes_systemd_verify():
    f = files(cluster())[lsyncd.UNIT_PATH]
    d = tempfile.mkdtemp()
    try:
        p = os.path.join(d, lsyncd.UNIT)
        open(p, "w").write(f.content)
        out = subprocess.run(["bash", "-c", f.validate.replace("{path}", p)], capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        shutil.rmtree(d)


def test_step_scripts_pass_shellcheck():
    c = cluster()
    ctx = RenderContext(c, c.nodes[0], {})
    for body in (lsyncd.keys_script(ctx), lsyncd.authorize_script(ctx)):
        full = script("pbx1", "test", body)
        out = subprocess.run(["shellcheck", "-s", "bash", "-"], input="#!/bin/bash\n" + full, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stdout


def test_authorize_restricts_the_peer_key_and_pins_its_host_key():
    c = cluster()
    ctx = RenderContext(c, c.nodes[0], {})
    pbx2 = c.nodes[1]
    keys = "user-key ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPeerUserKeyZ\nhost-key ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPeerHostKeyZ"
    body = script("pbx1", "authorize", lsyncd.authorize_script(ctx))
    setup = f"mkdir -p {lsyncd.HOME}/.ssh {lsyncd.KEY_DIR}"
    show = f"cat {lsyncd.HOME}/.ssh/authorized_keys {lsyncd.KNOWN_HOSTS}"
    out = sandboxed(f"bash -c {shell_quote(body)} <<'EOF'\n{keys}\nEOF\nbash -c {shell_quote(body)} <<'EOF'\n{keys}\nEOF\n" + show,
                    setup)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["changed", "unchanged"]   # idempotent
    auth = next(line for line in lines if "rrsync" in line)
    assert auth.startswith(f'restrict,from="{pbx2.address},{c.vip.address}",command="/usr/bin/rrsync -wo -no-del '
                           f'{c.recordings.directory}/{pbx2.name}" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPeerUserKeyZ')
    assert f"{pbx2.address} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPeerHostKeyZ" in lines
    bad = sandboxed(f"bash -c {shell_quote(body)} <<'EOF'\nuser-key ssh-rsa AAAA\nEOF", setup)
    assert bad.returncode != 0 and "no ed25519 public key" in bad.stderr


def shell_quote(text: str) -> str:
    import shlex
    return shlex.quote(text)
