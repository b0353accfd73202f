"""Recordings retention and their copy to the backup repository, on each PBX node (issue 23).

Both nodes hold every recording (their own, and the peer's copy from lsyncd), so each enforces the
retention on what it holds: hapbx-recordings-retention.timer (backup.recordingsSchedule) runs
``python3 -m hapbx_node.recordings retention`` (``--dry-run`` with backup.recordingsDryRun):
files past their retention are deleted (one journal line each), the rest is copied to
<repository>/recordings/<node>/ and the repository is expired by the same plan; the outcome goes to
/var/lib/hapbx/backup/recordings.json. The code is the ``hapbx_node.recordings`` package, shipped
under LIB_DIR.

Least privilege: the service runs as USER, a system user (sysusers.d) whose group is the
recordings group (FreeSWITCH writes 2770 directories there, lsyncd's receiving user too: the
group may delete). It reads the database as pbx_readonly; its password, and for s3/sftp the rclone
configuration (the repository's credentials) and the SFTP key, are root-only files handed to the
service as systemd credentials (LoadCredential=): never in the environment, argv or the journal.
tmpfiles.d gives USER write access to the status directory and its own recordings/ folder of a
posix repository (POSIX ACLs, the directories stay pgBackRest's).
"""
from __future__ import annotations

import shlex

import os

from hapbx_node.layout import ETC_DIR, LIB_ROOT, PG_SOCKET_DIR
from hapbx_node.recordings import settings as node_settings
from hapbx_node.recordings.status import STATUS_DIR

from . import (NODE_PACKAGE, RenderContext, RenderedFile, header, node_module_source, node_package_modules,
               postgres_unit, template)
from .freeswitch import RECORDINGS_GROUP
from .postgres import DATABASE

PACKAGE_DIR = os.path.join(NODE_PACKAGE, "recordings")
LIB_DIR = f"{LIB_ROOT}/recordings"
UNIT = "hapbx-recordings-retention.service"
TIMER = "hapbx-recordings-retention.timer"
USER = "hapbx-recret"
GROUP = RECORDINGS_GROUP
SYSUSERS = "/etc/sysusers.d/hapbx-recordings.conf"
TMPFILES = "/etc/tmpfiles.d/hapbx-recordings.conf"
DB_USER, DB_SECRET = "pbx_readonly", "postgres_readonly"
PASSWORD_FILE = f"{ETC_DIR}/recordings-retention.password"
RCLONE_CONF = f"{ETC_DIR}/recordings-rclone.conf"
SFTP_KEY = f"{ETC_DIR}/recordings-sftp.key"
SFTP_KEY_CREDENTIAL = "backup-sftp.key"
#: the rclone remote's name in RCLONE_CONF
REMOTE = "hapbx-repo"
#: a run may take this long (a first copy of a large recordings directory)
TIMEOUT_HOURS = 6


def package_files() -> list[tuple[str, str]]:
    """(path under LIB_DIR, source): hapbx_node's shared modules and the whole recordings package."""
    return [(f"hapbx_node/{name}", node_module_source(name)) for name in node_package_modules("recordings")]


def repository_target(ctx: RenderContext) -> str:
    """Where the copy goes: a path (posix), or the rclone remote's (s3: in the bucket)."""
    r = ctx.cluster.backup.repository
    path = r.path.rstrip("/")
    if r.type == "posix":
        return f"{path}/recordings"
    if r.type == "s3":
        return f"{REMOTE}:{r.s3_bucket}{path}/recordings"
    return f"{REMOTE}:{path}/recordings"


def environment(ctx: RenderContext) -> dict[str, str]:
    """The service's settings (hapbx_node/recordings/settings.py): no secret among them."""
    c, r = ctx.cluster, ctx.cluster.backup.repository
    env = {
        "HAPBX_NODE": ctx.host.name,
        "HAPBX_RECORDINGS_DIR": c.recordings.directory,
        "HAPBX_PG_DSN": f"host={PG_SOCKET_DIR} port={c.postgres.port} dbname={DATABASE} user={DB_USER} "
                        "connect_timeout=10",
        "HAPBX_BACKUP_STATUS_DIR": STATUS_DIR,
        "HAPBX_RECORDINGS_REPO_TYPE": r.type,
        "HAPBX_RECORDINGS_REPO": repository_target(ctx),
        "HAPBX_RECORDINGS_COPY_TIMEOUT": str((TIMEOUT_HOURS - 1) * 3600),
    }
    if r.type == "sftp":
        env.update(HAPBX_SFTP_HOST=r.sftp_host, HAPBX_SFTP_PORT=str(r.sftp_port), HAPBX_SFTP_HOST_KEY=r.sftp_host_key)
    return env


def credentials(ctx: RenderContext) -> list[tuple[str, str]]:
    """(credential name, root-only file) the unit loads."""
    out = [(node_settings.PASSWORD_CREDENTIAL, PASSWORD_FILE)]
    kind = ctx.cluster.backup.repository.type
    if kind in ("s3", "sftp"):
        out.append((node_settings.RCLONE_CREDENTIAL, RCLONE_CONF))
    if kind == "sftp":
        out.append((SFTP_KEY_CREDENTIAL, SFTP_KEY))
    return out


def rclone_conf(ctx: RenderContext) -> str:
    """The repository as rclone's remote REMOTE, its credentials inline (s3) or the SFTP key as a
    credential file (rclone expands ${CREDENTIALS_DIRECTORY} in key_file)."""
    r = ctx.cluster.backup.repository
    lines = [header(), f"# The backup repository for the recordings copy ({r.type}); 0600 root, loaded by {UNIT}",
             "# as a systemd credential.", f"[{REMOTE}]"]
    if r.type == "s3":
        endpoint = r.s3_endpoint if "://" in r.s3_endpoint else f"https://{r.s3_endpoint}"
        lines += ["type = s3", "provider = Other", "env_auth = false",
                  f"access_key_id = {ctx.secret('backup_s3_key')}",
                  f"secret_access_key = {ctx.secret('backup_s3_key_secret')}",
                  f"endpoint = {endpoint}", f"region = {r.s3_region}",
                  f"force_path_style = {'true' if r.s3_uri_style == 'path' else 'false'}",
                  "no_check_bucket = true"]
    else:
        lines += ["type = sftp", f"host = {r.sftp_host}", f"port = {r.sftp_port}", f"user = {r.sftp_user}",
                  f"key_file = ${{CREDENTIALS_DIRECTORY}}/{SFTP_KEY_CREDENTIAL}",
                  # the host key is checked against the pinned fingerprint by the run (copy.py)
                  "shell_type = none", "md5sum_command = none", "sha1sum_command = none"]
    return "\n".join(lines) + "\n"


def _values(ctx: RenderContext) -> dict:
    c, b = ctx.cluster, ctx.cluster.backup
    r = b.repository
    rw = [c.recordings.directory, STATUS_DIR] + ([repository_target(ctx)] if r.type == "posix" else [])
    return dict(unit=UNIT, timer=TIMER, user=USER, group=GROUP, lib_dir=LIB_DIR, env=environment(ctx),
                credentials=credentials(ctx), dry_run=b.recordings_dry_run, schedule=b.recordings_schedule,
                pg_unit=postgres_unit(c), recordings=c.recordings.directory, read_write=rw,
                mounts=[c.recordings.directory] + ([r.path] if r.type == "posix" else []),
                tmpfiles=TMPFILES, sysusers=SYSUSERS, status_dir=STATUS_DIR, repo_type=r.type, repo_path=r.path,
                repo_target=repository_target(ctx), timeout_hours=TIMEOUT_HOURS)


def unit_validator(unit: str) -> str:
    return f"systemd-analyze verify --man=no {{path}}:{unit}"


def _lines(conf: str) -> str:
    """A sysusers.d file's entries, without comments, as --inline's arguments (one per line)."""
    return " ".join(shlex.quote(line) for line in conf.splitlines() if line.strip() and not line.startswith("#"))


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness or not ctx.cluster.backup.enabled:
        return []
    v = _values(ctx)
    kind = ctx.cluster.backup.repository.type
    password = ctx.secret(DB_SECRET) + "\n"
    sysusers = template("recordings/sysusers.conf.j2", ctx, **v)
    out = [
        RenderedFile(SYSUSERS, sysusers, action=f"systemd-sysusers {SYSUSERS}",
                     validate="systemd-sysusers --dry-run {path}"),
        # the files install in parallel: the ACLs name the user, so it is made here first too
        RenderedFile(TMPFILES, template("recordings/tmpfiles.conf.j2", ctx, **v),
                     action=f"systemd-sysusers --inline {_lines(sysusers)} && "
                            f"systemd-tmpfiles --create {TMPFILES}"),
        RenderedFile(PASSWORD_FILE, password, mode="0600", secrets=(DB_SECRET,)),
    ]
    if kind in ("s3", "sftp"):
        secrets = ("backup_s3_key", "backup_s3_key_secret") if kind == "s3" else ()
        out.append(RenderedFile(RCLONE_CONF, rclone_conf(ctx), mode="0600", secrets=secrets))
    if kind == "sftp":
        key = ctx.secret("backup_sftp_private_key")
        out.append(RenderedFile(SFTP_KEY, key if key.endswith("\n") else key + "\n", mode="0600",
                                secrets=("backup_sftp_private_key",)))
    out += [
        RenderedFile(f"/etc/systemd/system/{UNIT}", template(f"recordings/{UNIT}.j2", ctx, **v),
                     service=TIMER, action="restart", validate=unit_validator(UNIT)),
        RenderedFile(f"/etc/systemd/system/{TIMER}", template(f"recordings/{TIMER}.j2", ctx, **v),
                     service=TIMER, action="restart", validate=unit_validator(TIMER)),
    ]
    for name, source in package_files():
        out.append(RenderedFile(f"{LIB_DIR}/{name}", f"{header()}\n{source}", validate="python3 -m py_compile {path}"))
    return out
