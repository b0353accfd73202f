"""The Debian releases a node may run, and what each one ships: one table.

Everything that differs between releases is read from here: the PostgreSQL and
Kamailio majors Debian itself packages (any other major needs a vendor
repository in ``packages.repositories``), the package names that carry a
version, and the versions the other daemons come in (for the README and for
the checks that must work on both, e.g. ``keepalived -t`` and the etcd
bootstrap). Templates do not fork on the release: where two versions of a
daemon differ, the template takes the form both accept.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Release:
    codename: str         # /etc/os-release VERSION_CODENAME, and the debootstrap suite
    debian: str           # Debian's version number
    postgres: str         # PostgreSQL major Debian packages (postgresql-<major>)
    kamailio: str         # Kamailio major.minor Debian packages
    versions: dict        # what the other daemons come in, measured on the release's packages

    def postgres_packages(self, major: str) -> list[str]:
        return [f"postgresql-{major}", "postgresql-client-common"]


RELEASES: dict[str, Release] = {
    "bookworm": Release("bookworm", "12", postgres="15", kamailio="5.6", versions={
        "Kamailio": "5.6.3", "PostgreSQL": "15", "keepalived": "2.2.7", "etcd": "3.4.23",
        "Redis": "7.0", "pgBackRest": "2.45", "lsyncd": "2.3.1", "Prometheus": "2.42",
        "postgres_exporter": "0.11.1"}),
    "trixie": Release("trixie", "13", postgres="17", kamailio="6.0", versions={
        "Kamailio": "6.0.1", "PostgreSQL": "17", "keepalived": "2.3.3", "etcd": "3.5.16",
        "Redis": "8.0", "pgBackRest": "2.55", "lsyncd": "2.3.1", "Prometheus": "2.53",
        "postgres_exporter": "0.17.1"}),
}
#: the release new stacks get: Debian's stable release
DEFAULT_RELEASE = "trixie"
#: majors the templates are written and tested for (Debian's own, or a vendor repository's)
SUPPORTED_POSTGRES = ("15", "16", "17")
SUPPORTED_KAMAILIO = ("5.6", "6.0")


def release(codename: str) -> Release:
    try:
        return RELEASES[codename]
    except KeyError:
        raise ValueError(f"unknown Debian release {codename!r} (allowed: {', '.join(RELEASES)})") from None
