"""pgBackRest on a PBX node: its configuration, its TLS server and the scheduled backups.

Both nodes carry the same stanza: ``pg1`` is the local PostgreSQL, ``pg2`` the peer's, reached
through the peer's pgBackRest TLS server (client certificates from the cluster CA). Whichever
node is primary archives WAL (archive_command, render/postgres.py); the scheduled backup runs
on the streaming standby (``--backup-standby``: the primary's files come through its TLS server,
the bulk from the standby), or on the primary when no standby streams
(hapbx_node/backup: the runner decides). The repository is encrypted (repo1-cipher-pass, kept in
the configuration file, never on a command line).

pgBackRest's TLS checks, read from its source (src/common/io/tls, 2.45 and 2.55):
- the client checks the server's name against the certificate's DNS names only (2.45; 2.55
  also IP addresses): pg2-host is the peer's name in /etc/hosts (``<node>.<domain>``), which
  every node certificate carries;
- the server authorizes a client by its certificate's subject common name (tls-server-auth
  ``<cn>=<stanza>``): the "pgbackrest" certificate of each node needs CN = client_cn(node).
"""
from __future__ import annotations

import shlex

from hapbx_node.layout import LIB_ROOT, PG_SOCKET_DIR, TLS_CA, tls_certificate, tls_key

from . import (RenderContext, RenderedFile, header, node_module_source, node_package_modules, secret_refs,
               template, tls)
from .postgres import paths as pg_paths

#: the service name of the TLS server's (and client's) certificate: one of render.TLS_SERVICES
TLS_SERVICE = "pgbackrest"
CONF_DIR = "/etc/pgbackrest"
CONF = f"{CONF_DIR}/pgbackrest.conf"
SFTP_KEY = f"{CONF_DIR}/sftp.key"
#: Debian's package makes these (postgres:postgres 0750)
SPOOL_DIR = "/var/spool/pgbackrest"
LOG_DIR = "/var/log/pgbackrest"
#: the runner (hapbx_node/backup), shipped as files under LIB_DIR/hapbx_node
LIB_DIR = f"{LIB_ROOT}/backup"
USER = GROUP = "postgres"
#: Debian's own unit of the same name is replaced (it would run `pgbackrest server` unhardened)
SERVER_UNIT = "pgbackrest.service"
BACKUP_UNIT = "hapbx-backup@.service"
#: started by promote on the new writer (render/failover.py OWNER_SERVICES)
ARCHIVE_CHECK_UNIT = "hapbx-archive-check.service"
TIMERS = {"full": "hapbx-backup-full.timer", "diff": "hapbx-backup-diff.timer"}
TMPFILES = "/etc/tmpfiles.d/hapbx-backup.conf"
#: lz4: in both Debian builds (2.45 and 2.55), fast enough not to slow a backup down
COMPRESS_TYPE = "lz4"
#: the commands the validator asks pgBackRest to parse the staged file for (each parses the options
#: it uses: a bad value, an unknown option or one in the wrong section fails)
VALIDATED_COMMANDS = ("archive-push", "archive-get", "backup", "check", "expire", "info", "restore", "server",
                      "stanza-create")


def client_cn(node_name: str) -> str:
    """The subject common name of a node's "pgbackrest" certificate: the peer's TLS server admits
    exactly this name (tls-server-auth). components/certificates.py issues it."""
    return f"pgbackrest-{node_name}"


def peer_host(ctx: RenderContext) -> str:
    """The peer as pg2-host: its name in /etc/hosts (pgBackRest 2.45 checks DNS names only)."""
    return f"{ctx.peer.name}.{ctx.cluster.network.domain}"


def stanza_command(cluster) -> str:
    """The deploy's stanza step (as root): create the stanza if missing, check archiving; exit
    status hapbx_node.backup.stanza.EXIT_OTHER_SYSTEM when the repository holds another database
    system (new hardware before a restore)."""
    env = f"PYTHONPATH={LIB_DIR} PYTHONDONTWRITEBYTECODE=1 PGBACKREST_STANZA={shlex.quote(cluster.backup.stanza)}"
    return f"runuser -u {USER} -- env {env} python3 -m hapbx_node.backup stanza"


def first_backup_script(cluster) -> str:
    """Starts a full backup (without waiting) when the repository has none: the runner takes it on
    the node that should (the streaming standby) and skips elsewhere."""
    has_backup = "import json, sys; sys.exit(0 if any(s.get('backup') for s in json.load(sys.stdin)) else 1)"
    return (f"if runuser -u {USER} -- pgbackrest --config={CONF} --stanza={shlex.quote(cluster.backup.stanza)} "
            f"--output=json info | python3 -c {shlex.quote(has_backup)}; then echo 'the repository has a backup'\n"
            "else systemctl start --no-block hapbx-backup@full.service; echo 'first full backup started'; fi")


def conf_validator(stanza: str) -> str:
    """pgBackRest parses the staged file for each command it will run (``help <command>`` reads
    the whole configuration and touches no repository): a WARN or ERROR line fails it."""
    cmds = " ".join(VALIDATED_COMMANDS)
    return (f"for c in {cmds}; do s=--stanza={shlex.quote(stanza)}; [ $c = server ] && s=; "  # server takes no stanza
            'out=$(pgbackrest --config={path} $s help $c 2>&1); '
            'rc=$?; bad=$(printf "%s\\n" "$out" | grep -E "^(WARN|ERROR):"); '
            'if [ $rc -ne 0 ] || [ -n "$bad" ]; then echo "pgbackrest $c: ${bad:-exit $rc}"; exit 1; fi; done')


def conf(ctx: RenderContext) -> str:
    c, b = ctx.cluster, ctx.cluster.backup
    pg = pg_paths(c)
    repo = b.repository
    return template("pgbackrest/pgbackrest.conf.j2", ctx, b=b, repo=repo, pg=pg, socket_dir=PG_SOCKET_DIR,
                    cipher_pass=ctx.secret("backup_cipher_pass"),
                    s3_key=ctx.secret("backup_s3_key") if repo.type == "s3" else "",
                    s3_key_secret=ctx.secret("backup_s3_key_secret") if repo.type == "s3" else "",
                    sftp_key=SFTP_KEY, spool_dir=SPOOL_DIR, log_dir=LOG_DIR, compress_type=COMPRESS_TYPE,
                    queue_max=f"{b.archive_push_queue_max_mb}MiB", ca=TLS_CA,
                    cert=tls_certificate(TLS_SERVICE), key=tls_key(TLS_SERVICE),
                    peer_cn=client_cn(ctx.peer.name), peer_host=peer_host(ctx))


def package_files() -> list[tuple[str, str]]:
    """(path under LIB_DIR, source) of the runner: hapbx_node's shared modules and .backup."""
    return [(f"hapbx_node/{name}", node_module_source(name)) for name in node_package_modules("backup")]


def _unit(path: str, text: str, unit: str, *, service: str | None = None, action: str = "none") -> RenderedFile:
    return RenderedFile(path, text, service=service, action=action,
                        validate=f"systemd-analyze verify --man=no {{path}}:{unit}")


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness or not ctx.cluster.backup.enabled:
        return []
    c, b = ctx.cluster, ctx.cluster.backup
    text = conf(ctx)
    values = dict(b=b, lib_dir=LIB_DIR, conf=CONF, user=USER, group=GROUP, pg_unit=pg_paths(c).service,
                  data_dir=pg_paths(c).data_dir, spool_dir=SPOOL_DIR, log_dir=LOG_DIR, socket_dir=PG_SOCKET_DIR,
                  server_unit=SERVER_UNIT, backup_unit=BACKUP_UNIT, repo_path=b.repository.path,
                  status_dir=status_dir())
    out = [
        # the server re-reads its configuration on start only; the other commands at each run
        RenderedFile(CONF, text, service=SERVER_UNIT, action="restart", validate=conf_validator(b.stanza),
                     owner="root", group=GROUP, mode="0640", secrets=secret_refs(ctx, text)),
        # this node's certificate: the TLS server's, and the client's towards the peer's server
        *tls.service_files(ctx, TLS_SERVICE, unit=SERVER_UNIT, action="restart", owner=USER, group=GROUP),
        RenderedFile(TMPFILES, template("pgbackrest/tmpfiles.conf.j2", ctx, **values),
                     action=f"systemd-tmpfiles --create {TMPFILES}"),
        _unit(f"/etc/systemd/system/{SERVER_UNIT}", template("pgbackrest/server.service.j2", ctx, **values),
              SERVER_UNIT, service=SERVER_UNIT, action="restart"),
        _unit(f"/etc/systemd/system/{ARCHIVE_CHECK_UNIT}",
              template("pgbackrest/archive-check.service.j2", ctx, **values), ARCHIVE_CHECK_UNIT),
        _unit(f"/etc/systemd/system/{BACKUP_UNIT}", template("pgbackrest/hapbx-backup@.service.j2", ctx, **values),
              BACKUP_UNIT.replace("@", "@full")),
    ]
    if b.repository.type == "sftp":
        out.append(RenderedFile(SFTP_KEY, ctx.secret("backup_sftp_private_key"), owner=USER, group=GROUP,
                                mode="0600", secrets=("backup_sftp_private_key",)))
    for kind, timer in TIMERS.items():
        schedule = b.full_schedule if kind == "full" else b.diff_schedule
        out.append(RenderedFile(f"/etc/systemd/system/{timer}",
                                template("pgbackrest/hapbx-backup.timer.j2", ctx, kind=kind, schedule=schedule, **values),
                                service=timer, action="restart"))
    for name, source in package_files():
        out.append(RenderedFile(f"{LIB_DIR}/{name}", f"{header()}\n{source}", validate="python3 -m py_compile {path}"))
    return out


def status_dir() -> str:
    from hapbx_node.backup.status import STATUS_DIR
    return STATUS_DIR
