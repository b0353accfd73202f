"""Every parameter of the HA core, read from the node's env file (components/render/failover.py
writes it from the validated stack config). No defaults here: a missing or malformed setting
stops the program before it touches anything, naming the key."""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

from .. import layout


class SettingsError(Exception):
    pass


def _seconds_ms(value: str, key: str) -> int:
    try:
        ms = round(float(value) * 1000)
    except ValueError:
        raise SettingsError(f"{key}={value!r}: not a number of seconds") from None
    if ms < 0:
        raise SettingsError(f"{key}={value!r}: negative")
    return ms


#: env key -> (attribute, kind); kind "s" = seconds -> ms, "ms" = ms, "b" = 0/1, "str"
KEYS: dict[str, tuple[str, str]] = {
    "HAPBX_NODE": ("node", "str"),
    "HAPBX_PEER": ("peer", "str"),
    "HA_BIN": ("bin_dir", "str"),
    "HA_RUN_DIR": ("run_dir", "str"),
    "HA_LIB_DIR": ("lib_dir", "str"),
    "WITNESS": ("witness", "b"),
    "HA_CHECK_VIP": ("check_vip", "b"),
    "HA_HEARTBEAT": ("heartbeat", "b"),
    "LEASE_TTL": ("ttl_ms", "s"),
    "RENEW_INTERVAL": ("renew_ms", "s"),
    "FENCE_MARGIN": ("margin_ms", "s"),
    "ETCD_TIMEOUT": ("etcd_timeout_ms", "s"),
    "HUNG_AFTER": ("hung_ms", "s"),
    "YIELD_AFTER": ("yield_ms", "s"),
    "RESIGN_GRACE": ("grace_ms", "s"),
    "PROMOTE_TIMEOUT": ("promote_giveup_ms", "s"),
    "REJOIN_MODE": ("rejoin_mode", "str"),
    "REJOIN_BACKOFF": ("rejoin_backoff_ms", "s"),
    "SYNC_RELAX_AFTER": ("sync_relax_ms", "s"),
    "STREAM_LOST_AFTER": ("stream_lost_ms", "s"),
    "SYNC_REPLY_MAX": ("sync_reply_max_ms", "s"),
    "NO_WITNESS_POLICY": ("no_witness_policy", "str"),
    "NO_WITNESS_TIMEOUT": ("nw_timeout_ms", "s"),
    "PG_FAST_STOP_MS": ("fast_stop_ms", "ms"),
    "PG_SYNC_NAMES": ("sync_names", "str"),
}
#: may be empty (no witness: no policy needed with one, no sync names without one)
MAY_BE_EMPTY = {"NO_WITNESS_POLICY", "PG_SYNC_NAMES"}


@dataclass(frozen=True)
class Settings:
    node: str
    peer: str
    bin_dir: str
    run_dir: str
    lib_dir: str
    witness: bool
    check_vip: bool
    heartbeat: bool
    ttl_ms: int
    renew_ms: int
    margin_ms: int
    etcd_timeout_ms: int
    hung_ms: int
    yield_ms: int
    grace_ms: int
    promote_giveup_ms: int
    rejoin_mode: str
    rejoin_backoff_ms: int
    sync_relax_ms: int
    stream_lost_ms: int
    sync_reply_max_ms: int
    no_witness_policy: str
    nw_timeout_ms: int
    fast_stop_ms: int
    sync_names: str

    @property
    def sync_back_ms(self) -> int:
        """A relaxed holder turns synchronous replication on again once the peer has streamed this
        long: twice what declaring it gone takes (no reply for SYNC_REPLY_MAX, then SYNC_RELAX_AFTER)."""
        return 2 * (self.sync_reply_max_ms + self.sync_relax_ms)

    @staticmethod
    def from_env(env: dict[str, str]) -> "Settings":
        missing = [k for k in KEYS if k not in env or (env[k] == "" and k not in MAY_BE_EMPTY)]
        if missing:
            raise SettingsError(f"missing in the HA env file: {', '.join(missing)}")
        values = {}
        for key, (attr, kind) in KEYS.items():
            raw = env[key]
            if kind == "s":
                values[attr] = _seconds_ms(raw, key)
            elif kind == "ms":
                try:
                    values[attr] = int(raw)
                except ValueError:
                    raise SettingsError(f"{key}={raw!r}: not an integer (ms)") from None
            elif kind == "b":
                if raw not in ("0", "1"):
                    raise SettingsError(f"{key}={raw!r}: must be 0 or 1")
                values[attr] = raw == "1"
            else:
                values[attr] = raw
        s = Settings(**values)
        if s.rejoin_mode not in ("auto", "manual"):
            raise SettingsError(f"REJOIN_MODE={s.rejoin_mode!r}: auto or manual")
        if s.witness and s.margin_ms >= s.ttl_ms:
            raise SettingsError("FENCE_MARGIN must be below LEASE_TTL")
        if s.renew_ms <= 0:
            raise SettingsError("RENEW_INTERVAL must be above 0")
        return s


def read_env_file(path: str) -> dict[str, str]:
    """KEY=value lines as the render layer writes them (values shell-quoted)."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            parts = shlex.split(value) if value else [""]
            out[key] = parts[0] if parts else ""
    return out


def load(environ: dict[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    """The settings and the whole environment the node programs run with: the process environment,
    HAPBX_ENV's file over it, HA_SECRETS_ENV's over that."""
    environ = dict(os.environ if environ is None else environ)
    path = environ.get("HAPBX_ENV", layout.HA_ENV)
    try:
        env = read_env_file(path)
    except OSError as e:
        raise SettingsError(f"cannot read {path}: {e.strerror}") from None
    secrets = env.get("HA_SECRETS_ENV") or environ.get("HA_SECRETS_ENV")
    if secrets and os.access(secrets, os.R_OK):
        env.update(read_env_file(secrets))
    env = {**environ, **env}      # as bash's `set -a; . file`: the file wins
    return Settings.from_env(env), env
