"""The CDR/admin files of both stacks: each through its checker (py_compile, systemd-analyze
verify), env files 0600 holding only their own secrets, the worker never enabled and named
where the failover scripts can start it, the placement step through bash -n and shellcheck,
and the step's decisions run against fake systemctl/psql; the replay service and timer only
where FreeSWITCH runs, with settings the replay accepts."""
import os
import stat
import subprocess

import pytest

from components.config import load_stack_file
from components.remote import SYSTEMD_LOCK, install_script, script
from components.render import RenderContext, masked_secrets, render_cluster
from components.render import cdr
from tests.mockrun import ROOT
from tests.daemons.validators import run_validator

STACKS = ["lab", "prod"]


def stack(name):
    cluster, _ = load_stack_file(f"{ROOT}/Pulumi.{name}.yaml", assume_secrets=True)
    return cluster


def with_https_pair(c, tmp_path) -> dict[str, str]:
    """Masked secrets but a real HTTPS certificate and key per node (a scratch CA's, as the cluster
    CA issues them: the node address, the VIP, 127.0.0.1)."""
    from components.render import node_secret, tls_stems
    from lab.scratch_ca import ScratchCa
    ca = ScratchCa.make(tmp_path)
    secrets = dict(masked_secrets())
    for node in c.nodes:
        issued = ca.issue(f"https-{node.name}", ips=(node.address, c.vip.address, "127.0.0.1"))
        cert_stem, key_stem = tls_stems(cdr.HTTPS_SERVICE)
        secrets[node_secret(c, cert_stem, node.name)] = issued.cert.read_text()
        secrets[node_secret(c, key_stem, node.name)] = issued.key.read_text()
    return secrets


@pytest.mark.parametrize("name", STACKS)
def test_every_file_passes_its_checker(name, tmp_path):
    c = stack(name)
    secrets = with_https_pair(c, tmp_path)
    for node in c.nodes:
        files = cdr.files(RenderContext(c, node, secrets))
        checked = 0
        for f in files:
            if f.validate:
                out = run_validator(f)
                assert out.returncode == 0, (node.name, f.path, out.stdout, out.stderr)
                checked += 1
        # the code, the units, the HTTPS pair, the dead-letter command, the replay's unit and timer
        assert checked == len(cdr.package_files()) + len(cdr.UNITS) + 2 + 1 + (2 if cdr.replays(c) else 0)
    assert cdr.files(RenderContext(c, c.witness, masked_secrets())) == [] if c.witness else True


def test_checkers_refuse_broken_files():
    c = stack("lab")
    files = {f.path: f for f in cdr.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    code = files[f"{cdr.LIB_DIR}/hapbx_node/cdr/worker.py"]
    assert run_validator(type(code)(**{**code.__dict__, "content": code.content + "\ndef broken(:\n"})).returncode
    unit = files[f"/etc/systemd/system/{cdr.RECEIVER_UNIT}"]
    bad = unit.content.replace("ExecStart=/usr/bin/python3", "ExecStart=python3-not-absolute")
    assert run_validator(type(unit)(**{**unit.__dict__, "content": bad})).returncode


def test_the_shipped_package_is_the_repository_package():
    c = stack("prod")
    files = {f.path: f for f in cdr.files(RenderContext(c, c.nodes[1], masked_secrets()))}
    shipped = [f"{top}/{n}" for top, _, names in os.walk(cdr.PACKAGE_DIR) for n in names if n.endswith(".py")]
    assert f"{cdr.PACKAGE_DIR}/admin/crud.py" in shipped
    for name in [os.path.relpath(p, cdr.NODE_PACKAGE) for p in shipped] + ["__init__.py", "layout.py"]:
        with open(os.path.join(cdr.NODE_PACKAGE, name)) as fh:
            assert files[f"{cdr.LIB_DIR}/hapbx_node/{name}"].content.endswith(fh.read())
    for f in files.values():
        if f.path.startswith(cdr.LIB_DIR):
            assert f.service is None and all(f"/var/lib/hapbx/pending/{u}" in f.action for u in cdr.UNITS)


def test_env_files_hold_only_their_own_secrets_mode_0600():
    c = stack("lab")
    real = {**masked_secrets(), **{n: f"real-{n}-Zx9" for n in masked_secrets()}}
    files = {f.path: f for f in cdr.files(RenderContext(c, c.nodes[0], real))}
    expected = {"/etc/hapbx/cdr-receiver.env": {"redis_cdr", "postgres_cdr", "cdr_sender_1", "cdr_sender_2"},
                "/etc/hapbx/cdr-sender.env": {"cdr_sender_1"},        # pbx1's own credential only
                "/etc/hapbx/cdr-worker.env": {"redis_cdr", "postgres_cdr"},
                "/etc/hapbx/admin.env": {"admin_api_token", "redis_cdr", "postgres_admin"}}
    for path, names in expected.items():
        f = files[path]
        assert f.mode == "0600" and f.owner == "root" and set(f.secrets) == names
        held = {n for n in real if f"real-{n}-Zx9" in f.content}
        assert held == names, (path, held)
    https = {f.path: f for f in cdr.https_files(RenderContext(c, c.nodes[0], real))}
    assert {f.mode for f in https.values()} == {"0644", "0600"} and {f.owner for f in https.values()} == {"root"}
    for f in files.values():
        if f.path in https:
            assert len(f.secrets) == 1 and f.content == f"real-{f.secrets[0]}-Zx9", f.path   # pbx1's own pair
        elif f.path not in expected:
            assert "real-" not in f.content and not f.secrets, f.path
    # values as the services read them
    receiver = files["/etc/hapbx/cdr-receiver.env"].content
    assert 'HAPBX_CDR_LISTEN="10.77.0.10,10.77.0.11,127.0.0.1"' in receiver, "the VIP first, as the admin API"
    assert 'HAPBX_REDIS_ENDPOINTS="127.0.0.1:6379,10.77.0.12:6379"' in receiver, "local first, then the peer"
    # the direct path reaches the primary wherever it is: the local socket, else the peer over TLS
    assert ('HAPBX_PG_DSN="host=/var/run/postgresql,10.77.0.12 port=5432,5432 dbname=pbx user=cdr_writer '
            'target_session_attrs=read-write sslmode=verify-full sslrootcert=/etc/hapbx/tls/ca.crt"') in receiver
    admin = files["/etc/hapbx/admin.env"].content
    assert 'HAPBX_ADMIN_LISTEN="10.77.0.10,10.77.0.11,127.0.0.1"' in admin, "the VIP first"
    assert (f'HAPBX_CDR_SENDERS="cdr-pbx1:real-cdr_sender_1-Zx9,cdr-pbx2:real-cdr_sender_2-Zx9"') in receiver
    sender = files["/etc/hapbx/cdr-sender.env"].content
    assert 'HAPBX_CDR_POST_USER="cdr-pbx1"' in sender and 'HAPBX_CDR_POST_PASSWORD="real-cdr_sender_1-Zx9"' in sender
    worker = files["/etc/hapbx/cdr-worker.env"].content
    assert 'HAPBX_PG_DSN="host=/var/run/postgresql port=5432 dbname=pbx user=cdr_writer"' in worker
    assert 'HAPBX_CDR_NODES="pbx1,pbx2"' in worker


def test_worker_is_never_enabled_and_is_an_owner_service():
    c = stack("prod")
    files = {f.path: f for f in cdr.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    worker = files[f"/etc/systemd/system/{cdr.WORKER_UNIT}"].content
    assert "[Install]" not in worker and "WantedBy" not in worker
    for unit in (cdr.RECEIVER_UNIT, cdr.ADMIN_UNIT):
        assert "WantedBy=multi-user.target" in files[f"/etc/systemd/system/{unit}"].content
    for unit in cdr.UNITS:
        text = files[f"/etc/systemd/system/{unit}"].content
        assert "DynamicUser=yes" in text and "ProtectSystem=strict" in text and "CapabilityBoundingSet=\n" in text
        assert f"LimitNOFILE={c.os.nofile}" in text
    assert cdr.OWNER_SERVICES == (cdr.WORKER_UNIT,)


def test_failover_scripts_start_the_worker_on_promotion():
    from components.render import failover
    if not set(cdr.OWNER_SERVICES) <= set(failover.OWNER_SERVICES):
        pytest.skip("the HA layer does not list the CDR worker in OWNER_SERVICES yet "
                    "(components/render/failover.py: OWNER_SERVICES = cdr.OWNER_SERVICES)")
    c = stack("lab")
    env = next(f for f in failover.files(RenderContext(c, c.nodes[0], masked_secrets())) if f.path == failover.HA_ENV)
    assert cdr.WORKER_UNIT in env.content


def placement(tmp_path, pg_role: str, ha: str | None, active: bool, marker: bool,
              fail_first: bool = False) -> tuple[str, list[str]]:
    """Run the worker placement step with fake psql/runuser/systemctl; returns (stdout, systemctl calls)."""
    c = stack("lab")
    text = cdr.worker_placement_script(RenderContext(c, c.nodes[0], masked_secrets()))
    status = tmp_path / "status"
    pending = tmp_path / "pending"
    pending.mkdir()
    text = text.replace(cdr.HA_STATUS, str(status)).replace(cdr.PENDING_DIR, str(pending))
    if ha is not None:
        status.write_text(f"node=pbx1\nwriter={ha}\n")
    if marker:
        (pending / cdr.WORKER_UNIT).touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    fakes = {
        "runuser": f'#!/bin/sh\ncase "{pg_role}" in primary) echo f ;; standby) echo t ;; *) exit 2 ;; esac\n',
        "systemctl": f'#!/bin/sh\necho "$*" >> {log}\n[ "$1" = is-active ] && exit {0 if active else 3}\n'
                     + (f'[ "$1" = start ] && [ ! -e {tmp_path}/once ] && {{ touch {tmp_path}/once; '
                        'echo "Job canceled." >&2; exit 1; }\n' if fail_first else "") + "exit 0\n",
    }
    for name, body in fakes.items():
        p = bin_dir / name
        p.write_text(body)
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    out = subprocess.run(["bash", "-c", script("pbx1", "worker", text)], capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert not (pending / cdr.WORKER_UNIT).exists()
    calls = [line for line in (log.read_text().splitlines() if log.exists() else []) if not line.startswith("is-active")]
    return out.stdout.strip(), calls


@pytest.mark.parametrize("pg_role, ha, active, marker, expect, calls", [
    ("primary", "1", False, False, "worker started", [f"start {cdr.WORKER_UNIT}"]),
    ("primary", "1", True, False, "unchanged", []),
    ("primary", "1", True, True, "restarted", ["daemon-reload", f"restart {cdr.WORKER_UNIT}"]),
    ("primary", None, False, False, "worker started", [f"start {cdr.WORKER_UNIT}"]),      # no HA layer
    ("primary", "0", False, False, "unchanged", []),                                      # promote will start it
    ("standby", "0", True, False, "worker stopped", [f"stop {cdr.WORKER_UNIT}"]),
    ("down", None, True, False, "worker stopped", [f"stop {cdr.WORKER_UNIT}"]),
    ("standby", None, False, True, "unchanged", ["daemon-reload"]),
])
def test_worker_placement_decisions(tmp_path, pg_role, ha, active, marker, expect, calls):
    out, got = placement(tmp_path, pg_role, ha, active, marker)
    assert expect in out and got == calls, (out, got)


@pytest.mark.parametrize("name", STACKS)
def test_step_and_install_scripts_pass_shellcheck(name):
    c = stack(name)
    ctx = RenderContext(c, c.nodes[0], masked_secrets())
    texts = [script("n", "worker", SYSTEMD_LOCK + cdr.worker_placement_script(ctx))]
    texts += [script("n", f"install {f.path}", install_script(f, f.sha256)) for f in cdr.files(ctx)]
    for text in texts:
        out = subprocess.run(["shellcheck", "-s", "bash", "-S", "warning", "-"], input=text, capture_output=True,
                             text=True)
        assert out.returncode == 0, (out.stdout, text[:400])


def test_cdr_files_are_in_the_cluster_render():
    c = stack("lab")
    paths = {f.path for f in render_cluster(c, masked_secrets())["pbx1"]}
    assert f"/etc/systemd/system/{cdr.WORKER_UNIT}" in paths and "/etc/hapbx/admin.env" in paths


def test_worker_placement_looks_again_when_a_failover_cancels_its_job(tmp_path):
    out, calls = placement(tmp_path, "primary", "1", False, False, fail_first=True)
    assert calls == [f"start {cdr.WORKER_UNIT}", f"start {cdr.WORKER_UNIT}"] and "worker started" in out


def unit_environment(text: str) -> dict[str, str]:
    """The Environment= assignments of a unit, as systemd reads them (no quoting used here)."""
    env = {}
    for line in text.splitlines():
        if line.startswith("Environment="):
            for item in line[len("Environment="):].split():
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_replay_timer_only_where_freeswitch_runs():
    lab, prod = stack("lab"), stack("prod")
    assert lab.media.engine != "freeswitch" and not cdr.replays(lab)
    for node in lab.nodes:
        paths = {f.path for f in cdr.files(RenderContext(lab, node, masked_secrets()))}
        assert not any("replay" in p and p.startswith("/etc/systemd") for p in paths), paths
    assert prod.media.engine == "freeswitch" and cdr.replays(prod)
    for node in prod.nodes:
        files = {f.path: f for f in cdr.files(RenderContext(prod, node, masked_secrets()))}
        service = files[f"/etc/systemd/system/{cdr.REPLAY_UNIT}"]
        timer = files[f"/etc/systemd/system/{cdr.REPLAY_TIMER}"]
        for f in (service, timer):
            assert f.service == cdr.REPLAY_TIMER and f.action == "restart" and not f.secrets and f.validate
        text = service.content
        assert "Type=oneshot" in text and "ExecStart=/usr/bin/python3 -m hapbx_node.cdr.replay" in text
        assert "[Install]" not in text, "started by its timer only"
        assert "User=freeswitch" in text and "Group=freeswitch" in text, "the error directory is FreeSWITCH's"
        assert "ProtectSystem=strict" in text and "ReadWritePaths=-/var/log/freeswitch/json_cdr_errors" in text
        assert "ConditionPathIsDirectory=/var/log/freeswitch/json_cdr_errors" in text
        assert "Restart=" not in text
        assert "OnCalendar=minutely" in timer.content and "WantedBy=timers.target" in timer.content


def test_replay_unit_settings_are_what_the_replay_reads():
    from components.render import freeswitch
    from hapbx_node.cdr.settings import FS_CDR_ERROR_DIR, ReplaySettings
    from hapbx_node.layout import TLS_CA
    assert FS_CDR_ERROR_DIR == freeswitch.CDR_ERROR_DIR, "the replay's default is json_cdr.conf's err-log-dir"
    c = stack("prod")
    node = c.nodes[0]
    text = {f.path: f for f in cdr.files(RenderContext(c, node, masked_secrets()))}[
        f"/etc/systemd/system/{cdr.REPLAY_UNIT}"].content
    env = unit_environment(text)
    assert env["PYTHONPATH"] == cdr.LIB_DIR
    s = ReplaySettings.from_env(env)
    port = c.cdr.receiver_port
    assert s.directory == freeswitch.CDR_ERROR_DIR
    assert s.urls == [f"http://127.0.0.1:{port}/cdr", f"https://{c.peer_of(node).address}:{port}/cdr"], \
        "this node's receiver first (loopback: HTTP), then the peer's over HTTPS (json_cdr.conf's order)"
    assert s.ca == TLS_CA, "the peer's certificate checked against the cluster CA"
    assert s.timeout > c.cdr.redis_timeout_seconds, "a receiver may hold a post that long before its 503"
    assert s.min_age >= 5


def test_replay_unit_checkers_refuse_broken_units():
    c = stack("prod")
    files = {f.path: f for f in cdr.files(RenderContext(c, c.nodes[0], masked_secrets()))}
    service = files[f"/etc/systemd/system/{cdr.REPLAY_UNIT}"]
    timer = files[f"/etc/systemd/system/{cdr.REPLAY_TIMER}"]
    bad = service.content.replace("ExecStart=/usr/bin/python3", "ExecStart=python3-not-absolute")
    assert run_validator(type(service)(**{**service.__dict__, "content": bad})).returncode
    bad = timer.content.replace("OnCalendar=minutely", "OnCalendar=every-now-and-then").replace("OnBootSec=1min", "")
    assert run_validator(type(timer)(**{**timer.__dict__, "content": bad})).returncode


@pytest.mark.parametrize("name", STACKS)
def test_deadletters_command_runs_the_package_with_the_worker_env(name):
    """hapbx-cdr-deadletters: no secret in it, 0755, shellcheck-clean; it starts the shipped package as
    the units do, with the worker's env file as bash reads it (the values systemd gives the worker)."""
    c = stack(name)
    real = {**masked_secrets(), **{n: f"real-{n}-Zx9" for n in masked_secrets()}}
    ctx = RenderContext(c, c.nodes[0], real)
    files = {f.path: f for f in cdr.files(ctx)}
    cli = files[cdr.DEADLETTERS_CLI]
    assert cli.mode == "0755" and cli.owner == "root" and not cli.secrets and "real-" not in cli.content
    assert cli.service is None and cli.action == "none" and run_validator(cli).returncode == 0
    out = subprocess.run(["shellcheck", "-s", "bash", "-S", "warning", "-"], input=cli.content, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout
    text = cli.content
    assert f". \"$env_file\"" in text and f"env_file=/etc/hapbx/{cdr.WORKER_ENV}" in text
    assert f"export PYTHONPATH={cdr.LIB_DIR} PYTHONDONTWRITEBYTECODE=1" in text
    assert 'exec /usr/bin/python3 -m hapbx_node.cdr deadletters "$@"' in text
    # bash reads the env file as systemd does: every value of the worker's settings unchanged
    env_text = files[f"/etc/hapbx/{cdr.WORKER_ENV}"].content
    script = 'set -a; . "$1"; set +a; env -0'
    out = subprocess.run(["env", "-i", "bash", "-c", script, "bash", "/dev/stdin"], input=env_text,
                         capture_output=True, text=True)
    sourced = dict(item.split("=", 1) for item in out.stdout.split("\0") if "=" in item)
    expected = cdr.worker_env(ctx)
    assert {k: sourced.get(k) for k in expected} == expected


@pytest.mark.parametrize("name", STACKS)
def test_http_services_serve_https_beyond_loopback_with_the_nodes_pair(name, tmp_path):
    """The receiver and the admin API listen on the VIP and the node address (HTTPS) and loopback
    (HTTP); each loads the node's HTTPS pair as its own systemd credential, and the settings built
    from the rendered env file and unit accept it (a real pair from a scratch CA in the credentials
    directory: %d) and refuse to start without it. A new pair restarts both, one node at a time."""
    from hapbx_node.cdr.common import is_loopback, site_tls
    from hapbx_node.cdr.settings import AdminSettings, ReceiverSettings, SettingsError
    from hapbx_node.layout import tls_certificate, tls_key
    c = stack(name)
    real = {**with_https_pair(c, tmp_path), **{n: f"real-{n}-Zx9-0123456789" for n in masked_secrets()
                                               if not n.startswith("tls_https_")}}
    for node in c.nodes:
        files = {f.path: f for f in cdr.files(RenderContext(c, node, real))}
        creds = tmp_path / node.name
        creds.mkdir()
        for name_, path in zip(cdr.HTTPS_CREDENTIALS, (tls_certificate("https"), tls_key("https"))):
            assert files[path].service is None and cdr.restarts(files[path]) == cdr.HTTPS_UNITS
            assert all(f"/var/lib/hapbx/pending/{u}" in files[path].action for u in cdr.HTTPS_UNITS)
            assert f"/var/lib/hapbx/pending/{cdr.WORKER_UNIT}" not in files[path].action
            (creds / name_).write_text(files[path].content)
        for unit, env_file, settings in ((cdr.RECEIVER_UNIT, "cdr-receiver.env", ReceiverSettings),
                                         (cdr.ADMIN_UNIT, "admin.env", AdminSettings)):
            text = files[f"/etc/systemd/system/{unit}"].content
            assert f"LoadCredential=https.crt:{tls_certificate('https')}\n" in text
            assert f"LoadCredential=https.key:{tls_key('https')}\n" in text
            env = {**env_values(files[f"/etc/hapbx/{env_file}"].content), **unit_environment(text)}
            listen = env["HAPBX_CDR_LISTEN" if unit == cdr.RECEIVER_UNIT else "HAPBX_ADMIN_LISTEN"].split(",")
            assert [a for a in listen if not is_loopback(a)] == [c.vip.address, node.address]
            env = {k: v.replace("%d", str(creds)) for k, v in env.items()}
            s = settings.from_env(env)
            assert s.https is not None and [h for h, ctx in site_tls(s.listen, s.https.context) if ctx] == \
                [c.vip.address, node.address]
            for gone in ("HAPBX_HTTPS_CERT", "HAPBX_HTTPS_KEY"):
                with pytest.raises(SettingsError, match="HAPBX_HTTPS_CERT and HAPBX_HTTPS_KEY are required"):
                    settings.from_env({k: v for k, v in env.items() if k != gone})
        worker = files[f"/etc/systemd/system/{cdr.WORKER_UNIT}"].content
        assert "LoadCredential" not in worker and "HAPBX_HTTPS" not in worker


def env_values(text: str) -> dict[str, str]:
    """An env file's values (components/render/cdr.py env_file: double-quoted, escaped)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out[key] = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return out
