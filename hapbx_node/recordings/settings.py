"""The retention run's settings, from its unit's environment (rendered by
components/render/recordings_retention.py). Credentials come as files (systemd LoadCredential=:
$CREDENTIALS_DIRECTORY), never in the environment or argv."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .copy import PosixRepository, RcloneRepository
from .status import STATUS_DIR

REPOSITORY_TYPES = ("none", "posix", "s3", "sftp")
#: names of the credential files (LoadCredential=<name>:<path>)
PASSWORD_CREDENTIAL = "postgres-password"
RCLONE_CREDENTIAL = "rclone.conf"


class SettingsError(ValueError):
    pass


@dataclass(frozen=True)
class Settings:
    node: str
    recordings_dir: str
    dsn: str
    password_file: str | None
    status_dir: str
    repository_type: str
    repository: str
    rclone_config: str | None
    sftp_pin: tuple[str, int, str] | None
    copy_timeout: float

    def password(self) -> str | None:
        if not self.password_file:
            return None
        with open(self.password_file, encoding="utf-8") as fh:
            return fh.read().strip("\r\n")

    def target(self) -> PosixRepository | RcloneRepository | None:
        if self.repository_type == "posix":
            return PosixRepository(self.repository, self.copy_timeout)
        if self.repository_type in ("s3", "sftp"):
            return RcloneRepository(self.repository, self.rclone_config or "", self.copy_timeout, self.sftp_pin)
        return None


def _credential(name: str) -> str | None:
    d = os.environ.get("CREDENTIALS_DIRECTORY")
    return os.path.join(d, name) if d else None


def load(env: dict | None = None) -> Settings:
    e = os.environ if env is None else env

    def need(key: str) -> str:
        value = e.get(key, "")
        if not value:
            raise SettingsError(f"{key} is not set")
        return value

    kind = e.get("HAPBX_RECORDINGS_REPO_TYPE", "none")
    if kind not in REPOSITORY_TYPES:
        raise SettingsError(f"HAPBX_RECORDINGS_REPO_TYPE {kind!r} is not one of {', '.join(REPOSITORY_TYPES)}")
    pin = None
    if kind == "sftp" and e.get("HAPBX_SFTP_HOST_KEY"):
        pin = (need("HAPBX_SFTP_HOST"), int(e.get("HAPBX_SFTP_PORT", "22")), e["HAPBX_SFTP_HOST_KEY"])
    recordings = need("HAPBX_RECORDINGS_DIR")
    if not os.path.isabs(recordings) or recordings.rstrip("/") == "":
        raise SettingsError(f"HAPBX_RECORDINGS_DIR {recordings!r} is not an absolute directory below /")
    return Settings(
        node=need("HAPBX_NODE"), recordings_dir=recordings.rstrip("/"), dsn=need("HAPBX_PG_DSN"),
        password_file=e.get("HAPBX_PG_PASSWORD_FILE") or _credential(PASSWORD_CREDENTIAL),
        status_dir=e.get("HAPBX_BACKUP_STATUS_DIR") or STATUS_DIR, repository_type=kind,
        repository=need("HAPBX_RECORDINGS_REPO") if kind != "none" else "",
        rclone_config=e.get("HAPBX_RCLONE_CONFIG") or _credential(RCLONE_CREDENTIAL),
        sftp_pin=pin, copy_timeout=float(e.get("HAPBX_RECORDINGS_COPY_TIMEOUT", str(4 * 3600))))
