"""Settings of the processes (receiver, worker, admin, replay), from the environment (systemd
EnvironmentFile, mode 0600; the replay's unit sets its own, and its credential from a 0600 file).

Every variable is HAPBX_*; a missing required one or a bad value stops the process at start
with the variable's name (systemd then shows it in the journal).
"""
from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field

from ..layout import CDR_STATS, HA_STATUS, TLS_CA
from . import auth
from .common import is_loopback, server_tls
from .resp import Endpoint


class SettingsError(ValueError):
    pass


def _get(env, name: str, default: str | None = None) -> str:
    value = env.get(name, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise SettingsError(f"{name} is required")
    return value


def _number(env, name: str, default, lo, hi, parse, what: str):
    raw = _get(env, name, str(default))
    try:
        value = parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {what}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} is out of range {lo}..{hi}")
    return value


def _int(env, name: str, default: int, lo: int, hi: int) -> int:
    return _number(env, name, default, lo, hi, int, "an integer")


def _float(env, name: str, default: float, lo: float, hi: float) -> float:
    return _number(env, name, default, lo, hi, float, "a number")


def _endpoints(raw: str, name: str) -> list[tuple[str, int]]:
    out = []
    for item in raw.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"{name}: {item!r} is not host:port")
        out.append((host, int(port)))
    return out


def _list(raw: str) -> list[str]:
    return [x.strip() for x in raw.split(",") if x.strip()]


@dataclass(frozen=True)
class Keys:
    """Redis keys of the queue (all under the cdr user's ACL prefix)."""
    prefix: str = "cdr:"

    @property
    def queue(self) -> str:
        return self.prefix + "queue"

    @property
    def processing(self) -> str:
        return self.prefix + "processing"

    @property
    def dead(self) -> str:
        return self.prefix + "dead"


@dataclass(frozen=True)
class RedisSettings:
    """Redis over TLS only: ``ca`` (HAPBX_REDIS_CA, the cluster CA by default) is what every
    endpoint's certificate must chain to."""
    endpoints: list[Endpoint]
    user: str
    password: str
    keys: Keys
    ca: str = TLS_CA

    @staticmethod
    def from_env(env) -> "RedisSettings":
        prefix = _get(env, "HAPBX_CDR_KEY_PREFIX", "cdr:")
        ca = _get(env, "HAPBX_REDIS_CA", TLS_CA)
        pairs = _endpoints(_get(env, "HAPBX_REDIS_ENDPOINTS", "127.0.0.1:6379"), "HAPBX_REDIS_ENDPOINTS")
        return RedisSettings(
            endpoints=[Endpoint(host, port, ca) for host, port in pairs],
            user=_get(env, "HAPBX_REDIS_USER", "cdr"), password=_get(env, "HAPBX_REDIS_PASSWORD"),
            keys=Keys(prefix), ca=ca)

    def redis_py(self, endpoint: int = 0) -> dict:
        """redis.Redis arguments for an endpoint (the worker, the dead-letter tool): TLS, the server
        checked against the CA and its address."""
        host, port = self.endpoints[endpoint]
        return dict(host=host, port=port, username=self.user, password=self.password, ssl=True,
                    ssl_ca_certs=self.ca, ssl_cert_reqs="required", ssl_check_hostname=True)


@dataclass(frozen=True)
class HttpsSettings:
    """The certificate and key of an HTTP service's listeners beyond loopback (HAPBX_HTTPS_CERT,
    HAPBX_HTTPS_KEY; common.http_sites): required as soon as one listening address is not loopback."""
    cert: str
    key: str
    context: ssl.SSLContext = field(repr=False, compare=False)

    @staticmethod
    def from_env(env, listen: list[str], listen_var: str) -> "HttpsSettings | None":
        cert, key = env.get("HAPBX_HTTPS_CERT", ""), env.get("HAPBX_HTTPS_KEY", "")
        beyond = [a for a in listen if not is_loopback(a)]
        if beyond and not (cert and key):
            raise SettingsError(f"HAPBX_HTTPS_CERT and HAPBX_HTTPS_KEY are required when {listen_var} goes beyond "
                                f"loopback ({', '.join(beyond)} served over HTTPS only)")
        if not (cert or key):
            return None
        if not (cert and key):
            raise SettingsError("HAPBX_HTTPS_CERT and HAPBX_HTTPS_KEY go together")
        try:
            context = server_tls(cert, key)
        except (OSError, ssl.SSLError) as err:
            # the reason (no such file, permission, a key that is not the certificate's), never the file
            raise SettingsError(f"HAPBX_HTTPS_CERT={cert!r}, HAPBX_HTTPS_KEY={key!r}: cannot load them: "
                                f"{getattr(err, 'strerror', None) or getattr(err, 'reason', None) or err}") from None
        return HttpsSettings(cert, key, context)


@dataclass(frozen=True)
class ReceiverSettings:
    node: str
    listen: list[str]
    port: int
    max_body: int
    redis: RedisSettings
    redis_timeout: float       # s a record may wait for Redis before the poster gets a 503
    wait_replica_ms: int       # WAIT for one replica after each push (0: off)
    max_batch: int             # records per LPUSH
    pg_dsn: str                # the direct path (the replica did not confirm): "" none
    pg_password: str
    senders: dict              # user -> password of the nodes allowed to post (auth.py); {} loopback only
    https: HttpsSettings | None  # the listeners beyond loopback (required with one)

    @staticmethod
    def from_env(env=os.environ) -> "ReceiverSettings":
        listen = _list(_get(env, "HAPBX_CDR_LISTEN", "127.0.0.1"))
        try:
            senders = auth.parse_senders(env.get("HAPBX_CDR_SENDERS", ""))
        except ValueError as err:
            raise SettingsError(f"HAPBX_CDR_SENDERS: {err}") from None
        if not senders and not all(is_loopback(a) for a in listen):
            raise SettingsError("HAPBX_CDR_SENDERS is required when HAPBX_CDR_LISTEN goes beyond loopback "
                                "(no post is trusted for its source address)")
        return ReceiverSettings(
            node=_get(env, "HAPBX_NODE"), listen=listen, senders=senders,
            https=HttpsSettings.from_env(env, listen, "HAPBX_CDR_LISTEN"),
            port=_int(env, "HAPBX_CDR_PORT", 8088, 1, 65535),
            max_body=_int(env, "HAPBX_CDR_MAX_BODY", 262144, 1024, 64 << 20),
            redis=RedisSettings.from_env(env),
            redis_timeout=_float(env, "HAPBX_CDR_REDIS_TIMEOUT", 3.0, 0.1, 60),
            wait_replica_ms=_int(env, "HAPBX_CDR_WAIT_REPLICA_MS", 0, 0, 5000),
            max_batch=_int(env, "HAPBX_CDR_PUSH_BATCH", 256, 1, 10000),
            pg_dsn=_get(env, "HAPBX_PG_DSN", ""),
            pg_password=_get(env, "HAPBX_PG_PASSWORD") if env.get("HAPBX_PG_DSN") else "")


@dataclass(frozen=True)
class WorkerSettings:
    node: str
    redis: RedisSettings
    pg_dsn: str
    pg_password: str
    batch: int
    block_seconds: float
    backoff_max: float
    stats_path: str = CDR_STATS  # the stats file hapbx-exporter reads ("": none)
    stats_every: float = 1.0     # s between its writes

    @staticmethod
    def from_env(env=os.environ) -> "WorkerSettings":
        return WorkerSettings(
            node=_get(env, "HAPBX_NODE"), redis=RedisSettings.from_env(env),
            pg_dsn=_get(env, "HAPBX_PG_DSN"), pg_password=_get(env, "HAPBX_PG_PASSWORD"),
            batch=_int(env, "HAPBX_CDR_BATCH", 500, 1, 10000),
            block_seconds=_float(env, "HAPBX_CDR_BLOCK_SECONDS", 1.0, 0.01, 30),
            backoff_max=_float(env, "HAPBX_CDR_BACKOFF_MAX", 5.0, 0.05, 300),
            stats_path=env.get("HAPBX_CDR_STATS", CDR_STATS),
            stats_every=_float(env, "HAPBX_CDR_STATS_EVERY", 1.0, 0.05, 60))


@dataclass(frozen=True)
class AdminSettings:
    node: str
    listen: list[str]
    port: int
    token: str
    pg_dsn: str
    pg_password: str
    redis: RedisSettings
    vip: str
    ha_status: str
    max_body: int
    db_pool: int
    https: HttpsSettings | None  # the listeners beyond loopback (required with one)

    @staticmethod
    def from_env(env=os.environ) -> "AdminSettings":
        token = _get(env, "HAPBX_ADMIN_TOKEN")
        if len(token) < 16:
            raise SettingsError("HAPBX_ADMIN_TOKEN is shorter than 16 characters")
        listen = _list(_get(env, "HAPBX_ADMIN_LISTEN", "127.0.0.1"))
        return AdminSettings(
            node=_get(env, "HAPBX_NODE"), listen=listen, https=HttpsSettings.from_env(env, listen, "HAPBX_ADMIN_LISTEN"),
            port=_int(env, "HAPBX_ADMIN_PORT", 8080, 1, 65535), token=token,
            pg_dsn=_get(env, "HAPBX_PG_DSN"), pg_password=_get(env, "HAPBX_PG_PASSWORD"),
            redis=RedisSettings.from_env(env), vip=_get(env, "HAPBX_VIP", "127.0.0.1"),
            ha_status=_get(env, "HAPBX_HA_STATUS", HA_STATUS),
            max_body=_int(env, "HAPBX_ADMIN_MAX_BODY", 65536, 1024, 16 << 20),
            db_pool=_int(env, "HAPBX_ADMIN_DB_POOL", 4, 1, 64))


#: FreeSWITCH's err-log-dir in json_cdr.conf (components/render/freeswitch.py CDR_ERROR_DIR)
FS_CDR_ERROR_DIR = "/var/log/freeswitch/json_cdr_errors"


@dataclass(frozen=True)
class ReplaySettings:
    directory: str             # where mod_json_cdr left what no receiver took
    urls: list[str]            # receivers, tried in order (this node's, then the peer's)
    timeout: float             # s per POST (a receiver may wait HAPBX_CDR_REDIS_TIMEOUT for Redis)
    min_age: float             # s a file must be old: FreeSWITCH may still be writing a younger one
    give_up_after: int         # receivers unavailable for this many files in a row: stop this run
    credential: tuple          # (user, password) this node posts as (auth.py), or () none
    ca: str                    # what an https:// receiver's certificate is checked against (the cluster CA)

    @staticmethod
    def from_env(env=os.environ) -> "ReplaySettings":
        urls = _list(_get(env, "HAPBX_CDR_REPLAY_URLS", "http://127.0.0.1:8088/cdr"))
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise SettingsError(f"HAPBX_CDR_REPLAY_URLS: {url!r} is not an http(s) URL")
        directory = _get(env, "HAPBX_CDR_REPLAY_DIR", FS_CDR_ERROR_DIR)
        if not directory.startswith("/"):
            raise SettingsError(f"HAPBX_CDR_REPLAY_DIR={directory!r} is not an absolute path")
        return ReplaySettings(
            directory=directory.rstrip("/") or "/", urls=urls,
            timeout=_float(env, "HAPBX_CDR_REPLAY_TIMEOUT", 10.0, 0.1, 300),
            min_age=_float(env, "HAPBX_CDR_REPLAY_MIN_AGE", 10.0, 0, 86400),
            give_up_after=_int(env, "HAPBX_CDR_REPLAY_GIVE_UP_AFTER", 3, 1, 1000000),
            ca=_get(env, "HAPBX_CDR_REPLAY_CA", TLS_CA),
            credential=((_get(env, "HAPBX_CDR_POST_USER"), _get(env, "HAPBX_CDR_POST_PASSWORD"))
                        if env.get("HAPBX_CDR_POST_USER") else ()))
