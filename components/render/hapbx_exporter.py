"""hapbx-exporter on each PBX node (pure: config + node -> files): the hapbx_* metrics of the
HA core, the CDR pipeline and the media engine on <node address>:monitoring.hapbxExporterPort
(hapbx_node/metrics; job hapbx, README: Monitoring and alerting).

  LIB_DIR/hapbx_node/...                 the code (hapbx_node's shared modules and .metrics)
  /etc/hapbx/hapbx-exporter.env          where it listens and what it reads (no secret: 0644)
  /etc/systemd/system/hapbx-exporter.service
                                         a dynamic user, read-only system, no capabilities; it
                                         reads the HA status (/run/hapbx/ha, 0755), the CDR
                                         worker's stats (its RuntimeDirectory, 0755) and SIPp's
                                         statistics (the stand-in's RuntimeDirectory, 0755); with
                                         FreeSWITCH it gets /etc/fs_cli.conf (0600 root) as a
                                         credential (LoadCredential=) for the event socket.
                                         With backup.enabled it reads the backup status files
                                         (/var/lib/hapbx/backup/{pgbackrest,recordings}.json): its
                                         user is dynamic and private (PrivateUsers), so their
                                         writers keep the directory 0755 and the files 0644 (others
                                         may read); ProtectSystem=strict leaves /var/lib readable.
Nothing on the witness.
"""
from __future__ import annotations

from hapbx_node import layout
from hapbx_node.metrics.settings import BACKUP_STATUS_DIR

from . import RenderContext, RenderedFile, header, node_module_source, node_package_modules, template

UNIT = layout.EXPORTER_UNIT
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
LIB_DIR = layout.EXPORTER_LIB_DIR
ENV_FILE = layout.EXPORTER_ENV
VERIFY = "! systemd-analyze verify --man=no {path} 2>&1 | grep ."


def package_files() -> list[tuple[str, str]]:
    """(path under LIB_DIR, source) of what the exporter runs, sorted."""
    return [(f"hapbx_node/{name}", node_module_source(name)) for name in node_package_modules("metrics")]


def env(ctx: RenderContext) -> dict[str, str]:
    from . import freeswitch
    c = ctx.cluster
    engine = c.media.engine if c.media.engine in ("sipp-uas", "freeswitch") else "none"
    return {"HAPBX_EXPORTER_LISTEN": ctx.host.address, "HAPBX_EXPORTER_PORT": str(c.monitoring.hapbx_exporter_port),
            "HAPBX_VIP": c.vip.address, "HAPBX_HA_STATUS": layout.HA_STATUS, "HAPBX_CDR_STATS": layout.CDR_STATS,
            "HAPBX_MEDIA_ENGINE": engine, "HAPBX_SIPP_STATS": layout.MEDIA_UAS_STATS,
            "HAPBX_ESL_PORT": str(freeswitch.ESL_PORT),
            "HAPBX_BACKUP_STATUS_DIR": BACKUP_STATUS_DIR if c.backup.enabled else ""}


def env_text(values: dict[str, str]) -> str:
    lines = [header(), "# hapbx-exporter: where it listens and what it reads (EnvironmentFile; no secret)."]
    return "\n".join(lines + [f"{k}={v}" for k, v in values.items()]) + "\n"


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    from . import freeswitch
    values = env(ctx)
    out = [RenderedFile(f"{LIB_DIR}/{name}", f"{header()}\n{source}", service=UNIT, action="restart",
                        validate="python3 -m py_compile {path}") for name, source in package_files()]
    out.append(RenderedFile(ENV_FILE, env_text(values), service=UNIT, action="restart"))
    unit = template("hapbx-exporter/hapbx-exporter.service.j2", ctx, port=values["HAPBX_EXPORTER_PORT"],
                    env_file=ENV_FILE, lib_dir=LIB_DIR, engine=values["HAPBX_MEDIA_ENGINE"],
                    fs_cli_conf=freeswitch.FS_CLI_CONF)
    out.append(RenderedFile(UNIT_PATH, unit, service=UNIT, action="restart", validate=VERIFY))
    return out
