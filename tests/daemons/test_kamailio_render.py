"""Kamailio's rendered files of both stacks, checked by Kamailio itself (`kamailio -c`).

Every node's kamailio.cfg of both stacks passes the `kamailio -c` of both versions the template
serves: the host's Kamailio 5.6 (Debian 12, the lab's) and Kamailio 6.0 of Debian 13 (prod's), run
inside the Debian 13 node image (tests/release_root.py, the ``trixie_root`` fixture) with its own
modules. The node runs the same check (the file's validate command) before it installs a file.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from components.config import load_stack_file
from components.render import SECRET_NAMES, RenderContext, masked_secrets
from components.render import kamailio as kam
from tests.helpers import self_signed
from tests.mockrun import ROOT
from tests.daemons.validators import run_validator

STACKS = ["lab", "prod"]
#: Kamailio version -> the conftest fixture of the release root it runs in (None: the host's)
KAMAILIO = {"5.6": None, "6.0": "trixie_root"}
SECRETS = {**{n: f"Sx{n.replace('_', '')}7Qa" for n in SECRET_NAMES}, **self_signed("10.0.0.10")}

pytestmark = pytest.mark.skipif(shutil.which("kamailio") is None, reason="needs kamailio (Debian package)")


def cluster(stack: str, **kamailio):
    c, _ = load_stack_file(f"{ROOT}/Pulumi.{stack}.yaml", assume_secrets=True)
    if kamailio:
        c = dataclasses.replace(c, kamailio=dataclasses.replace(c.kamailio, **kamailio))
    return c


def files(c, node=0, secrets=SECRETS):
    return {f.path: f for f in kam.files(RenderContext(c, c.nodes[node], secrets))}


@pytest.fixture(params=list(KAMAILIO), ids=lambda v: f"kamailio-{v}")
def validator(request):
    """run_validator on the host (Kamailio 5.6) or, the same command on a staged copy under the
    shared /tmp, inside the Debian 13 root (Kamailio 6.0)."""
    fixture = KAMAILIO[request.param]
    if fixture is None:
        return run_validator
    root = request.getfixturevalue(fixture)
    assert root.version("kamailio").startswith(request.param), root.version("kamailio")

    def in_root(f) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory(prefix="hapbx-kamcheck-", dir="/tmp") as d:
            stage = os.path.join(d, os.path.basename(f.path))
            with open(stage, "w", encoding="utf-8") as fh:
                fh.write(f.content)
            cmd = "set -o pipefail; " + f.validate.replace("{path}", f'"{stage}"')
            return root.run(["bash", "-c", cmd], timeout=60)
    return in_root


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("node", [0, 1])
def test_config_passes_kamailio_check(stack, node, validator):
    for f in files(cluster(stack), node).values():
        if f.validate:
            out = validator(f)
            assert out.returncode == 0, (f.path, out.stdout[-3000:], out.stderr[-3000:])
    cfg = files(cluster(stack), node)[kam.CFG]
    out = validator(cfg)
    assert "config file ok" in out.stdout + out.stderr


def test_validator_rejects_broken_configs(validator):
    cfg = files(cluster("lab"))[kam.CFG]
    for old, new in [('"batch_msg_contacts"', '"batch_msg_contactz"'),       # unknown module parameter
                     ("fix_nated_contact();", "fix_nated_contactz();"),      # unknown function
                     ("route(LOCATION);\n}", "route(LOCATION);\n"),          # syntax
                     ('loadmodule "pike.so"', 'loadmodule "nosuchmodule.so"')]:
        assert old in cfg.content, old
        broken = dataclasses.replace(cfg, content=cfg.content.replace(old, new, 1))
        assert validator(broken).returncode != 0, new
    secrets = files(cluster("lab"))[kam.SECRETS_CFG]
    bad = dataclasses.replace(secrets, content=secrets.content.replace("@127.0.0.1:", "@"))
    assert validator(bad).returncode != 0


def test_listens_on_node_and_vip_with_free_bind_and_dmq_apart():
    c = cluster("prod")
    text = files(c)[kam.CFG].content
    node, peer, vip, k = c.nodes[0].address, c.nodes[1].address, c.vip.address, c.kamailio
    assert "\nip_free_bind=1\n" in text
    for proto in ("udp", "tcp"):
        assert f"\nlisten={proto}:{node}:{k.sip_port}\n" in text and f"\nlisten={proto}:{vip}:{k.sip_port}\n" in text
    # DMQ over TCP only: a KDMQ over UDP could carry any source address
    assert f"\nlisten=tcp:{node}:{k.dmq_port}\n" in text and f":{k.dmq_port}\n" not in text.replace(
        f"\nlisten=tcp:{node}:{k.dmq_port}\n", "")
    assert f'"server_address", "sip:{node}:{k.dmq_port};transport=tcp"' in text
    assert f'"notification_address", "sip:{peer}:{k.dmq_port};transport=tcp"' in text
    assert '"batch_msg_contacts", 50' in text and '("usrloc", "db_mode", 0)' in text
    assert f"children={k.children}\n" in text and f"tcp_children={k.children}\n" in text
    # SIP over TLS on the node address and the VIP, with its certificate installed beside
    assert f"\nlisten=tls:{node}:{k.tls_port}\n" in text and f"\nlisten=tls:{vip}:{k.tls_port}\n" in text
    assert "\nenable_tls=yes\n" in text and f'modparam("tls", "config", "{kam.TLS_CFG}")' in text


def test_memory_comes_from_config_and_restart_outlives_dmq_transactions():
    c = cluster("lab", shm_mb=384, pkg_mb=12)
    unit = files(c)[kam.DROPIN].content
    assert "-m 384 -M 12" in unit and "ExecStart=\nExecStart=/usr/sbin/kamailio" in unit
    lifetime = int(re.search(r'"max_noninv_lifetime", (\d+)', files(c)[kam.CFG].content).group(1))
    assert int(re.search(r"RestartSec=(\d+)", unit).group(1)) * 1000 > lifetime
    # and it starts once the PostgreSQL cluster accepts (not after Debian's umbrella unit only)
    assert re.search(rf"^After=.*\bpostgresql@{c.postgres.version}-main\.service\b", unit, re.M)


def test_protection_settings_come_from_config():
    c = cluster("lab", flood_requests=77, flood_window_seconds=3, ban_seconds=900, auth_fail_limit=4,
                flood_exempt_networks=["10.9.0.0/16", "192.0.2.7/32"])
    text = files(c)[kam.CFG].content
    assert '"reqs_density_per_unit", 77' in text and '"sampling_time_unit", 3' in text
    assert "ipban=>size=10;autoexpire=900;dmqreplicate=1;" in text
    assert "$shtinc(authfail=>$si) >= 4" in text
    assert 'is_in_subnet("$si", "10.9.0.0/16,192.0.2.7/32")' in text
    assert "is_in_subnet" not in files(cluster("lab", flood_exempt_networks=[]))[kam.CFG].content  # none: no check
    out = run_validator(files(c)[kam.CFG])
    assert out.returncode == 0, out.stderr[-2000:]


def test_secrets_only_in_the_secrets_file():
    fs = files(cluster("prod"))
    sec = fs[kam.SECRETS_CFG]
    assert sec.secrets == kam.SECRET_NAMES
    assert (sec.owner, sec.group, sec.mode) == ("root", "kamailio", "0640")
    assert all(SECRETS[n] in sec.content for n in kam.SECRET_NAMES)
    # the TLS key only in its own file (root and kamailio), shipped as a secret
    key = fs[kam.TLS_KEY]
    assert key.secrets == ("kamailio_tls_key",) and (key.group, key.mode) == ("kamailio", "0640")
    for path, f in fs.items():
        if path not in (kam.SECRETS_CFG, kam.TLS_KEY, kam.TLS_CERTIFICATE):
            assert not f.secrets and not any(v in f.content for v in SECRETS.values()), path
    masked = {f.path: f for f in kam.files(RenderContext(cluster("prod"), cluster("prod").nodes[0], masked_secrets()))}
    assert "@@SECRET:postgres_kamailio@@" in masked[kam.SECRETS_CFG].content


def test_both_nodes_share_the_auth_secret_and_differ_only_in_addresses():
    c = cluster("prod")
    a, b = files(c, 0), files(c, 1)
    assert a[kam.SECRETS_CFG].content == b[kam.SECRETS_CFG].content
    marks = [n.address for n in c.nodes] + [n.name for n in c.nodes]
    la, lb = a[kam.CFG].content.splitlines(), b[kam.CFG].content.splitlines()
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert x == y or any(m in x for m in marks), (x, y)


def test_tls_is_optional_by_config():
    c = cluster("lab", tls=True)
    text = files(c)[kam.CFG].content
    assert f"listen=tls:{c.vip.address}:{c.kamailio.tls_port}" in text and 'loadmodule "tls.so"' in text
    tls_module = os.path.exists("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so")
    if tls_module:
        assert run_validator(files(c)[kam.CFG]).returncode == 0
