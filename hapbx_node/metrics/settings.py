"""hapbx-exporter's settings, from the environment (its unit's EnvironmentFile; no secret in it)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .. import layout
from ..status_file import STATUS_DIR as BACKUP_STATUS_DIR

ENGINES = ("sipp-uas", "freeswitch", "none")
#: BACKUP_STATUS_DIR: where the backup runner and the recordings retention write their status; the
#: exporter reads it only when told (HAPBX_BACKUP_STATUS_DIR: backup.enabled)


class SettingsError(ValueError):
    pass


def _port(env, name: str, default: int) -> int:
    raw = env.get(name, str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise SettingsError(f"{name}={raw!r} is not a port")
    return int(raw)


def _seconds(env, name: str, default: float) -> float:
    raw = env.get(name, str(default))
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if not 0 < value <= 3600:
        raise SettingsError(f"{name}={value} is out of range (0, 3600]")
    return value


@dataclass(frozen=True)
class Settings:
    listen: str             # the node address (bound with IP_FREEBIND: before it is up, too)
    port: int
    vip: str                # hapbx_vip_owner: is this address on one of this node's interfaces
    ha_status: str
    cdr_stats: str
    engine: str             # the media engine: sipp-uas (its statistics file), freeswitch (ESL), none
    sipp_stats: str
    sipp_max_age: float     # s: an older statistics file means SIPp is gone (hapbx_media_up 0)
    esl_port: int
    esl_conf: str           # a file with "password => ..." (fs_cli.conf, given as a systemd credential)
    esl_timeout: float
    backup_status_dir: str  # "" (backup disabled): no hapbx_backup_* or hapbx_recordings_* series

    @staticmethod
    def from_env(env=os.environ) -> "Settings":
        listen = env.get("HAPBX_EXPORTER_LISTEN", "")
        if not listen:
            raise SettingsError("HAPBX_EXPORTER_LISTEN is required")
        engine = env.get("HAPBX_MEDIA_ENGINE", "none")
        if engine not in ENGINES:
            raise SettingsError(f"HAPBX_MEDIA_ENGINE={engine!r} is not one of {', '.join(ENGINES)}")
        esl_conf = env.get("HAPBX_ESL_CONF", "")
        if esl_conf.startswith("%d/"):  # not expanded in an EnvironmentFile: the credentials directory
            esl_conf = os.path.join(env.get("CREDENTIALS_DIRECTORY", ""), esl_conf[3:])
        return Settings(
            listen=listen, port=_port(env, "HAPBX_EXPORTER_PORT", 9480), vip=env.get("HAPBX_VIP", ""),
            ha_status=env.get("HAPBX_HA_STATUS", layout.HA_STATUS),
            cdr_stats=env.get("HAPBX_CDR_STATS", layout.CDR_STATS), engine=engine,
            sipp_stats=env.get("HAPBX_SIPP_STATS", layout.MEDIA_UAS_STATS),
            sipp_max_age=_seconds(env, "HAPBX_SIPP_STATS_MAX_AGE", 3 * layout.MEDIA_UAS_STATS_EVERY + 2),
            esl_port=_port(env, "HAPBX_ESL_PORT", 8021), esl_conf=esl_conf,
            esl_timeout=_seconds(env, "HAPBX_ESL_TIMEOUT", 1.0),
            backup_status_dir=env.get("HAPBX_BACKUP_STATUS_DIR", ""))
