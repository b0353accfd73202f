"""Recordings retention (hapbx_node/recordings) as a node runs it: the shipped package run by the
node's python3 (psycopg2) against a real PostgreSQL 15 with our schema, real files in a scratch
recordings directory and a scratch posix repository.

- calls under different policies and ages: exactly the files past their retention go (the
  retention recorded with the call, else the policy now, else the global; no CDR: by mtime);
- a dry run deletes nothing and names the same files; recordings.json says what each run did;
- the copy sends what stays (times kept), never mirrors a deletion, and expires the repository
  by the same plan; a second run sends nothing again;
- a database that refuses the run deletes nothing and counts a failure; the password comes from
  the credential file only.
Plus the rendered unit, timer and rclone configurations (s3 and sftp are render-tested only).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from components.render import RenderContext, masked_secrets
from components.render import postgres as pg
from components.render import recordings_retention as rr
from tests.daemons.test_postgres import SECRETS, base, primary  # noqa: F401  (module-scoped PostgreSQL)
from tests.helpers import shipped_cluster

pytestmark = pytest.mark.timeout(180)
DAY = 86400
PYTHON = "/usr/bin/python3"   # the node's, with Debian's python3-psycopg2


@pytest.fixture(scope="module")
def db(primary):  # noqa: F811
    primary.psql(pg.roles_sql(primary.ctx))   # pbx_readonly's password, as the roles step sets it
    with primary.connect(db=pg.DATABASE) as conn:
        for number, kind in (("1001", "user"), ("1002", "user"), ("8000", "queue")):
            conn.execute("INSERT INTO pbx.extensions (number, type, display_name) VALUES (%s, %s, %s) "
                         "ON CONFLICT (number) DO NOTHING", (number, kind, f"ext {number}"))
        conn.execute("DELETE FROM pbx.recording_policies")
        policy = ("INSERT INTO pbx.recording_policies (scope, extension_id, extension_type, mode, retention_days) "
                  "SELECT %s, id, type, %s, %s FROM pbx.extensions WHERE number = %s")
        conn.execute(policy, ("extension", "always", 30, "1001"))
        conn.execute(policy, ("queue", "on-demand", 7, "8000"))
        conn.execute("INSERT INTO pbx.recording_policies (scope, mode, retention_days) VALUES ('global', 'always', 90)")
    return primary


@dataclasses.dataclass
class Rig:
    dir: Path
    rec: Path
    repo: Path
    status: Path
    env: dict
    now: float
    srv: object
    files: dict = dataclasses.field(default_factory=dict)   # name -> path

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "hapbx_node.recordings", "retention", *args], capture_output=True,
                              text=True, timeout=60, env={**self.env, **(env or {})}, cwd="/")

    def state(self) -> dict:
        return json.loads((self.status / "recordings.json").read_text())

    def present(self) -> set[str]:
        return {name for name, path in self.files.items() if path.exists()}

    def call(self, name: str, uuid: str, ended_days_ago: float, *, node: str = "pbx1", callee: str = "1002",
             caller: str = "1002", queue: str | None = None, recorded: int | None = None, mode: str = "always",
             local: bool = True, repo: bool = False) -> None:
        """A call's CDR (cdr.ingest, as the worker stores it) and its recording file(s)."""
        end = self.now - ended_days_ago * DAY
        day = time.strftime("%Y/%m/%d", time.gmtime(end - 60))
        path = self.rec / node / day / f"{uuid}.wav"
        variables = {"uuid": uuid, "hapbx_recording_mode": mode, "hapbx_recording_path": str(path)}
        if recorded is not None:
            variables["hapbx_recording_retention_days"] = str(recorded)
        row = {"call_uuid": uuid, "direction": "internal", "caller_number": caller, "callee_number": callee,
               "queue": queue, "start_time": _iso(end - 60), "end_time": _iso(end), "duration": 60,
               "hangup_cause": "NORMAL_CLEARING", "recording_path": str(path), "node": node,
               "raw": {"variables": variables}}
        with self.srv.connect(db=pg.DATABASE) as conn:
            assert conn.execute("SELECT cdr.ingest(%s::jsonb)", (json.dumps(row),)).fetchone()[0] is True
        self.file(name, path, end, local=local, repo=repo)

    def file(self, name: str, path: Path, mtime: float, *, local: bool = True, repo: bool = False) -> None:
        size = 1000 + len(self.files) * 17
        targets = ([path] if local else []) + ([self.repo / path.relative_to(self.rec)] if repo else [])
        for p in targets:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"R" * size)
            os.utime(p, (mtime, mtime))
        self.files[name] = targets[0]
        if repo and local:
            self.files[name + "@repo"] = targets[1]


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch))


def _uuid(n: int) -> str:
    return f"7d0f6a36-5d5c-4c52-9b7e-{n:012x}"


@pytest.fixture
def rig(db, tmp_path):
    with db.connect(db=pg.DATABASE) as conn:
        conn.execute("TRUNCATE cdr.calls, cdr.call_uuids")
    lib = tmp_path / "lib"
    for rel, source in rr.package_files():   # what the node gets, not this checkout
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_text(source)
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    (creds / "postgres-password").write_text(SECRETS["postgres_readonly"] + "\n")
    (creds / "postgres-password").chmod(0o600)
    rec, repo, status = tmp_path / "rec", tmp_path / "repo" / "recordings", tmp_path / "status"
    (rec / "pbx1").mkdir(parents=True)
    (rec / "pbx2").mkdir()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(lib), "PYTHONDONTWRITEBYTECODE": "1",
           "CREDENTIALS_DIRECTORY": str(creds), "HAPBX_NODE": "pbx1", "HAPBX_RECORDINGS_DIR": str(rec),
           "HAPBX_PG_DSN": f"host=127.0.0.1 port={db.port} dbname={pg.DATABASE} user=pbx_readonly connect_timeout=5",
           "HAPBX_BACKUP_STATUS_DIR": str(status), "HAPBX_RECORDINGS_REPO_TYPE": "posix",
           "HAPBX_RECORDINGS_REPO": str(repo)}
    return Rig(tmp_path, rec, repo, status, env, time.time(), db)


def populate(r: Rig) -> tuple[set[str], set[str]]:
    """Calls under every rule; returns (files that must go, repository copies that must expire)."""
    r.call("recorded-short", _uuid(1), 15, callee="1001", recorded=10)          # 10 recorded; 1001's policy is 30 now
    r.call("recorded-long", _uuid(2), 45, callee="1001", recorded=60)           # 60 recorded; 30 now would delete
    r.call("queue-now", _uuid(3), 8, callee="8000", queue="8000")               # nothing recorded: the queue's 7 now
    r.call("global-old", _uuid(4), 100)                                         # no party policy: global 90
    r.call("global-young", _uuid(5), 80)
    r.call("peer-copy", _uuid(6), 6, node="pbx2", recorded=5)                   # pbx2's recording, lsyncd's copy
    r.call("on-demand", _uuid(7), 13, callee="8000", queue="8000", recorded=14, mode="on-demand")
    r.call("repo-expired", _uuid(8), 200, recorded=30, local=False, repo=True)  # deleted here long ago
    r.call("repo-lost-locally", _uuid(9), 50, recorded=365, local=False, repo=True)
    r.file("no-cdr-old", r.rec / "pbx1/2020/01/01" / f"{_uuid(10)}.wav", r.now - 120 * DAY)
    r.file("no-cdr-young", r.rec / "pbx1/2020/01/02" / f"{_uuid(11)}.wav", r.now - 10 * DAY)
    r.file("being-written", r.rec / "pbx1/2020/01/02" / f".{_uuid(12)}.wav.part", r.now - 400 * DAY)
    return {"recorded-short", "queue-now", "global-old", "peer-copy", "no-cdr-old"}, {"repo-expired"}


def lines(out: str, prefix: str) -> dict[str, str]:
    """path -> line, of the log lines starting with prefix."""
    return {line[len(prefix) + 1:].split(" ", 1)[0]: line for line in out.splitlines() if line.startswith(prefix + " ")}


def test_exactly_the_files_past_their_retention_go_and_a_dry_run_names_the_same(rig):
    gone, expired = populate(rig)
    local = {n for n in rig.files if not n.startswith("repo-")}
    sizes = {n: rig.files[n].stat().st_size for n in rig.files}

    dry = rig.run("--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert rig.present() == set(rig.files), "a dry run deleted something"
    would = lines(dry.stdout, "would delete")
    assert set(would) == {str(rig.files[n]) for n in gone}, dry.stdout
    assert set(lines(dry.stdout, "would expire from the repository")) == {str(rig.files[n]) for n in expired}
    s = rig.state()
    kept = local - gone - {"being-written"}
    assert (s["outcome"], s["dry_run"], s["deleted"], s["kept"]) == ("success", True, len(gone), len(kept))
    assert s["deleted_bytes"] == sum(sizes[n] for n in gone)
    # the dry run still copies what stays, and only that
    assert (s["copied"], s["copied_bytes"]) == (len(kept), sum(sizes[n] for n in kept))
    in_repo = {str(p.relative_to(rig.repo)) for p in rig.repo.rglob("*") if p.is_file()}
    assert in_repo == {str(rig.files[n].relative_to(rig.rec)) for n in kept} | {
        str(rig.files[n].relative_to(rig.repo)) for n in ("repo-expired", "repo-lost-locally")}
    for n in kept:   # the recording's time travels with it (a copy's mtime is the recording's)
        assert (rig.repo / rig.files[n].relative_to(rig.rec)).stat().st_mtime == rig.files[n].stat().st_mtime

    real = rig.run()
    assert real.returncode == 0, real.stdout + real.stderr
    assert rig.present() == set(rig.files) - gone - expired
    deleted = lines(real.stdout, "deleted")
    assert set(deleted) == set(would)
    line = deleted[str(rig.files["recorded-short"])]
    assert f"call {_uuid(1)}, retention 10 days, age 15.0 days" in line and "recorded with the call" in line
    assert "retention 7 days" in deleted[str(rig.files["queue-now"])] and "queue policy now" in \
        deleted[str(rig.files["queue-now"])]
    assert "retention 90 days" in deleted[str(rig.files["global-old"])]
    assert "no CDR" in deleted[str(rig.files["no-cdr-old"])]
    assert "no CDR" in lines(real.stdout, "kept")[str(rig.files["no-cdr-young"])]   # said, and kept
    assert set(lines(real.stdout, "expired from the repository")) == {str(rig.files["repo-expired"])}
    s = rig.state()
    assert (s["outcome"], s["dry_run"], s["deleted"], s["kept"], s["failures"]) == ("success", False, len(gone),
                                                                                    len(kept), 0)
    assert s["deleted_bytes"] == sum(sizes[n] for n in gone) and (s["copied"], s["copied_bytes"]) == (0, 0)
    assert abs(s["last_success"] - time.time()) < 60 and abs(s["finished"] - time.time()) < 60
    assert set(s) == {"finished", "outcome", "reason", "dry_run", "deleted", "deleted_bytes", "kept", "copied",
                      "copied_bytes", "last_success", "failures"}
    # the repository: what stays here, and the copy lost here but within its retention (no mirroring)
    assert (rig.repo / rig.files["repo-lost-locally"].relative_to(rig.repo)).exists()
    again = rig.run()
    assert again.returncode == 0 and rig.state()["deleted"] == 0 and rig.state()["copied"] == 0
    assert rig.present() == set(rig.files) - gone - expired


def test_a_new_recording_is_copied_and_a_policy_change_after_the_call_changes_nothing(rig):
    rig.call("a", _uuid(21), 20, callee="1001", recorded=25)      # 1001 records 30 days now
    rig.call("b", _uuid(22), 20, callee="1001")                   # before the variable existed: 30 now
    assert rig.run().returncode == 0 and rig.present() == {"a", "b"} and rig.state()["copied"] == 2
    with rig.srv.connect(db=pg.DATABASE) as conn:
        conn.execute("UPDATE pbx.recording_policies SET retention_days = 15 WHERE scope = 'extension'")
    try:
        out = rig.run()
        assert out.returncode == 0, out.stdout
        assert rig.present() == {"a"}   # b follows the policy of the moment; a what was recorded with it
        assert not (rig.repo / rig.files["b"].relative_to(rig.rec)).exists()   # the copy expires too
        assert (rig.repo / rig.files["a"].relative_to(rig.rec)).exists()
    finally:
        with rig.srv.connect(db=pg.DATABASE) as conn:
            conn.execute("UPDATE pbx.recording_policies SET retention_days = 30 WHERE scope = 'extension'")


def test_a_database_that_refuses_the_run_deletes_nothing_and_counts_a_failure(rig, tmp_path):
    populate(rig)
    rig.status.mkdir()
    (rig.status / "recordings.json").write_text(json.dumps({"last_success": 1700000000, "failures": 2}))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "postgres-password").write_text("not-the-password\n")
    out = rig.run(env={"CREDENTIALS_DIRECTORY": str(wrong)})
    assert out.returncode == 1 and rig.present() == set(rig.files)
    s = rig.state()
    assert (s["outcome"], s["last_success"], s["failures"], s["deleted"]) == ("failed", 1700000000, 3, 0)
    assert "password authentication failed" in s["reason"]
    assert "not-the-password" not in out.stdout + out.stderr + json.dumps(s)
    down = rig.run(env={"HAPBX_PG_DSN": "host=127.0.0.1 port=1 dbname=pbx user=pbx_readonly connect_timeout=2"})
    assert down.returncode == 1 and rig.present() == set(rig.files) and rig.state()["failures"] == 4
    ok = rig.run()
    assert ok.returncode == 0 and SECRETS["postgres_readonly"] not in ok.stdout + ok.stderr
    assert rig.state()["failures"] == 4 and rig.state()["outcome"] == "success"


# --- the rendered files --------------------------------------------------------------------------

def _cluster(kind: str = "posix", dry_run: bool = False):
    c = shipped_cluster("lab")
    r = c.backup.repository
    repo = {"posix": r, "s3": dataclasses.replace(r, type="s3", s3_endpoint="s3.example.net", s3_bucket="pbx-backup",
                                                  s3_region="eu-west-1", s3_uri_style="path"),
            "sftp": dataclasses.replace(r, type="sftp", path="/srv/backup", sftp_host="backup.example.net",
                                        sftp_user="pbx", sftp_host_key="0a" * 20)}[kind]
    return dataclasses.replace(c, backup=dataclasses.replace(c.backup, repository=repo, recordings_dry_run=dry_run))


def _files(kind: str = "posix", dry_run: bool = False) -> dict:
    c = _cluster(kind, dry_run)
    return {f.path: f for f in rr.files(RenderContext(c, c.nodes[0], masked_secrets()))}


def test_the_unit_and_timer_pass_systemd_and_hold_no_secret(tmp_path):
    files = _files()
    unit = files[f"/etc/systemd/system/{rr.UNIT}"].content
    timer = files[f"/etc/systemd/system/{rr.TIMER}"].content
    for name, text in ((rr.UNIT, unit), (rr.TIMER, timer)):
        (tmp_path / name).write_text(text)
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / rr.TIMER),
                          str(tmp_path / rr.UNIT)], capture_output=True, text=True, timeout=60)
    problems = [line for line in out.stderr.splitlines() if rr.UNIT in line or rr.TIMER in line]
    assert not problems, out.stderr
    assert f"User={rr.USER}\nGroup=hapbx-rec" in unit and "CapabilityBoundingSet=\n" in unit
    assert "ProtectSystem=strict" in unit and "NoNewPrivileges=yes" in unit
    assert f"LoadCredential=postgres-password:{rr.PASSWORD_FILE}" in unit and "@@SECRET" not in unit
    assert unit.rstrip().count("ExecStart=") == 1 and "retention --dry-run" not in unit
    assert "retention --dry-run" in _files(dry_run=True)[f"/etc/systemd/system/{rr.UNIT}"].content
    assert "OnCalendar=*-*-* 03:30:00" in timer and "Persistent=true" in timer
    password = files[rr.PASSWORD_FILE]
    assert (password.mode, password.owner, password.secrets) == ("0600", "root", ("postgres_readonly",))
    sysusers = files[rr.SYSUSERS].content
    assert f"m {rr.USER} hapbx-rec" in sysusers
    assert any(p.endswith("hapbx_node/recordings/plan.py") for p in files) and rr.RCLONE_CONF not in files


def test_s3_and_sftp_get_an_rclone_configuration_as_a_root_only_credential():
    s3 = _files("s3")
    conf = s3[rr.RCLONE_CONF]
    assert (conf.mode, conf.owner) == ("0600", "root") and set(conf.secrets) == {"backup_s3_key", "backup_s3_key_secret"}
    assert "access_key_id = @@SECRET:backup_s3_key@@" in conf.content
    assert "secret_access_key = @@SECRET:backup_s3_key_secret@@" in conf.content
    assert "endpoint = https://s3.example.net" in conf.content and "force_path_style = true" in conf.content
    unit = s3[f"/etc/systemd/system/{rr.UNIT}"].content
    assert f"LoadCredential=rclone.conf:{rr.RCLONE_CONF}" in unit and "@@SECRET" not in unit
    assert f"HAPBX_RECORDINGS_REPO={rr.REMOTE}:pbx-backup/var/lib/hapbx-backup/recordings" in unit
    sftp = _files("sftp")
    key = sftp[rr.SFTP_KEY]
    assert (key.mode, key.secrets) == ("0600", ("backup_sftp_private_key",))
    text = sftp[rr.RCLONE_CONF].content
    assert "type = sftp" in text and "key_file = ${CREDENTIALS_DIRECTORY}/backup-sftp.key" in text
    assert "@@SECRET" not in text and "@@SECRET" not in sftp[f"/etc/systemd/system/{rr.UNIT}"].content
    unit = sftp[f"/etc/systemd/system/{rr.UNIT}"].content
    assert "HAPBX_SFTP_HOST_KEY=" + "0a" * 20 in unit and f"LoadCredential=backup-sftp.key:{rr.SFTP_KEY}" in unit


def test_the_sftp_host_key_must_be_the_pinned_one():
    from hapbx_node.recordings.copy import CopyError, pinned_known_hosts, sha1_fingerprint
    key = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    scan = f"# backup.example.net:2222 SSH-2.0-OpenSSH\n[backup.example.net]:2222 ssh-ed25519 {key}\n"
    pin = sha1_fingerprint(key)
    assert pinned_known_hosts(scan, "backup.example.net", 2222, pin) == f"[backup.example.net]:2222 ssh-ed25519 {key}\n"
    colons = ":".join(pin[i:i + 2] for i in range(0, 40, 2)).upper()
    assert pinned_known_hosts(scan, "backup.example.net", 2222, colons)
    with pytest.raises(CopyError):
        pinned_known_hosts(scan, "backup.example.net", 2222, "0a" * 20)
