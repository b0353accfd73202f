"""The render layer: config + node + secrets -> files. Pure; no Pulumi engine needed.

Each daemon has a module here with ``files(ctx) -> list[RenderedFile]`` and a
template folder under ``templates/<daemon>/``. Components decide where the
files go and what happens after; ``hapbx render`` writes them all to disk.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping

import jinja2

from ..config import ClusterConfig, MediaNodeSettings, NodeSettings, WitnessSettings

TEMPLATES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "templates")
#: the node programs (hapbx_node: CDR services, migration runner and migrations), shipped as they are
NODE_PACKAGE = os.path.join(os.path.dirname(TEMPLATES), "hapbx_node")
MANAGED_BY = "Managed by high-cc-pbx (Pulumi). Local edits are overwritten on the next apply."

#: services whose certificate and key each PBX node gets from the cluster CA (components/certificates.py;
#: installed by render/tls.py): PostgreSQL, the etcd member (server, peer and client of its quorum), Redis,
#: and the node's HTTPS listeners (the admin API and the CDR receiver)
TLS_SERVICES = ("postgres", "etcd", "redis", "https", "pgbackrest")
#: the witness runs the third etcd member only
WITNESS_TLS_SERVICES = ("etcd",)
WITNESS = "witness"


def tls_stems(service: str) -> tuple[str, str]:
    """The secret stems of a service's certificate and key (node_secret adds the node's number)."""
    return f"tls_{service}_certificate", f"tls_{service}_key"


def _per_node(*stems: str) -> tuple[str, ...]:
    """``<stem>_1``, ``<stem>_2``: a secret of each PBX node (a cluster has two: config.py)."""
    return tuple(f"{stem}_{n}" for stem in stems for n in (1, 2))


_TLS_CERTS = (*_per_node(*(tls_stems(svc)[0] for svc in TLS_SERVICES)),
              *(f"{tls_stems(svc)[0]}_{WITNESS}" for svc in WITNESS_TLS_SERVICES))
_TLS_KEYS = (*_per_node(*(tls_stems(svc)[1] for svc in TLS_SERVICES)),
             *(f"{tls_stems(svc)[1]}_{WITNESS}" for svc in WITNESS_TLS_SERVICES))
# Names of the secrets a render may reference; values come from pulumi-random or Pulumi secrets.
SECRET_NAMES = (
    "postgres_superuser", "postgres_replication", "postgres_kamailio", "postgres_cdr", "postgres_admin",
    "postgres_readonly", "postgres_monitor", "redis_default", "redis_replication", "redis_cdr", "redis_ha", "redis_monitor", "etcd_root", "etcd_node",
    "freeswitch_esl", "admin_api_token", "vendor_repo_token",
    # the stack's own secret config (config.SECRET_KEYS): Alertmanager's receivers
    "alert_webhook_token", "alert_smtp_password",
    # the backup repository: its cipher pass (generated unless the config gives backupCipherPass) and
    # the credentials of an s3 or sftp repository (config)
    "backup_cipher_pass", "backup_s3_key", "backup_s3_key_secret", "backup_sftp_private_key",
    "kamailio_auth_secret", "kamailio_dialog_secret", "sip_media_secret",
    "kamailio_tls_certificate", "kamailio_tls_key",
    # per PBX node (node_secret): its CDR sender password (hapbx_node/cdr/auth.py), its service
    # certificates and keys from the cluster CA
    *_per_node("cdr_sender"), "tls_ca_certificate", *_TLS_CERTS, *_TLS_KEYS,
)
#: certificates travel like secrets (pulumi-tls outputs, masked in render output) but are public:
#: their files may be world-readable; their keys never
PUBLIC_CERTIFICATES = ("kamailio_tls_certificate", "tls_ca_certificate", *_TLS_CERTS)
#: secrets that are certificates or their keys (pulumi-tls or the stack's own), not generated passwords
CERTIFICATE_SECRETS = (*PUBLIC_CERTIFICATES, "kamailio_tls_key", *_TLS_KEYS)


#: a media node's own secrets (mediaNodes): its CDR sender password
MEDIA_NODE_STEMS = ("cdr_sender",)
_MEDIA_NODE_SECRET = re.compile(r"^(%s)_media_[a-z][a-z0-9_]{0,30}$" % "|".join(MEDIA_NODE_STEMS))


def node_secret(cluster, stem: str, node: str) -> str:
    """The name of a PBX node's own secret ``<stem>_<n>``: n is the node's place in `nodes` (1, 2);
    the witness's own is ``<stem>_witness``; a media node's ``<stem>_media_<name>`` (by name, not
    place: removing one media node leaves the others' credentials as they are)."""
    if cluster.witness is not None and node == cluster.witness.name:
        return f"{stem}_{WITNESS}"
    if node in {m.name for m in cluster.media_nodes}:
        return f"{stem}_media_{node.replace('-', '_')}"
    return f"{stem}_{[n.name for n in cluster.nodes].index(node) + 1}"


def media_node_secrets(cluster) -> tuple[str, ...]:
    """The secrets of the stack's media nodes (generated as pulumi-random passwords, like GENERATED_SECRETS)."""
    return tuple(node_secret(cluster, stem, m.name) for m in cluster.media_nodes for stem in MEDIA_NODE_STEMS)


def is_secret_name(name: str) -> bool:
    return name in SECRET_NAMES or bool(_MEDIA_NODE_SECRET.match(name))


#: secrets generated as pulumi-random passwords
#: secrets the stack's config gives (config.SECRET_KEYS), not generated
CONFIG_SECRETS = ("vendor_repo_token", "alert_webhook_token", "alert_smtp_password", "backup_s3_key",
                  "backup_s3_key_secret", "backup_sftp_private_key")
#: generated, unless the stack's config gives its own (the same key in camelCase)
OVERRIDABLE_SECRETS = ("backup_cipher_pass",)
GENERATED_SECRETS = tuple(n for n in SECRET_NAMES if n not in (*CONFIG_SECRETS, *CERTIFICATE_SECRETS))


@dataclass(frozen=True)
class RenderedFile:
    """One file for one node, with everything needed to install it safely."""
    path: str
    content: str
    service: str | None = None          # systemd unit that reads it
    action: str = "none"                # none | reload | restart | reload-or-restart | a shell command
    validate: str | None = None         # checker run on the staged copy; "{path}" is replaced by it
    owner: str = "root"
    group: str = "root"
    mode: str = "0644"
    secrets: tuple[str, ...] = ()       # secret names whose values the content holds

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content.encode()).hexdigest()

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.]+", "-", self.path.strip("/"))


@dataclass(frozen=True)
class RenderContext:
    cluster: ClusterConfig
    host: NodeSettings | WitnessSettings
    secrets: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_witness(self) -> bool:
        return isinstance(self.host, WitnessSettings)

    @property
    def is_media_node(self) -> bool:
        """A media-only host (mediaNodes): baseline, media engine, recordings sender, node exporter."""
        return isinstance(self.host, MediaNodeSettings)

    @property
    def peer(self) -> NodeSettings | None:
        """The other PBX node; a witness and a media node have none (their PBX nodes: cluster.nodes)."""
        if self.is_witness or self.is_media_node:
            return None
        return self.cluster.peer_of(self.host)  # type: ignore[arg-type]

    def secret(self, name: str) -> str:
        if not is_secret_name(name):
            raise KeyError(f"unknown secret {name!r}")
        return self.secrets[name]


class MaskedSecrets(dict):
    """Placeholders for secrets; a media node's (named after it) is made when first asked for."""

    def __missing__(self, name: str) -> str:
        if not _MEDIA_NODE_SECRET.match(name):
            raise KeyError(name)
        return f"@@SECRET:{name}@@"


def masked_secrets() -> dict[str, str]:
    """Placeholders that stand for secrets in `hapbx render` output."""
    return MaskedSecrets({name: f"@@SECRET:{name}@@" for name in SECRET_NAMES})


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def header(comment: str = "#") -> str:
    return f"{comment} {MANAGED_BY}"


#: hapbx_node's own modules every node program imports, shipped beside its subpackage
NODE_SHARED_MODULES = ("__init__.py", "layout.py", "status_file.py")


def node_package_modules(subpackage: str) -> list[str]:
    """The shared modules and every module of hapbx_node.<subpackage> (walked: a new module ships
    with no list to update), as paths under hapbx_node/, sorted."""
    out = list(NODE_SHARED_MODULES)
    for top, dirs, names in os.walk(os.path.join(NODE_PACKAGE, subpackage)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = os.path.relpath(top, NODE_PACKAGE)
        out += [f"{rel}/{n}" for n in names if n.endswith(".py")]
    return sorted(out)


def node_module_source(rel: str) -> str:
    """A module of hapbx_node as it is in the repository (rel: a path under hapbx_node/)."""
    with open(os.path.join(NODE_PACKAGE, rel), encoding="utf-8") as fh:
        return fh.read()


def postgres_unit(cluster) -> str:
    """The cluster's own unit (Debian's postgresql.service is an umbrella that does not wait
    for it): what depends on a running PostgreSQL orders itself after this one."""
    from .postgres import paths
    return paths(cluster).service


_env.globals["managed_by"] = header
_env.globals["postgres_unit"] = postgres_unit


def template(name: str, ctx: RenderContext, **extra) -> str:
    """Render templates/<name> with the cluster, this host and extra values."""
    return _env.get_template(name).render(cluster=ctx.cluster, host=ctx.host, peer=ctx.peer, ctx=ctx, **extra)


def secret_refs(ctx: RenderContext, content: str) -> tuple[str, ...]:
    """Which secrets a rendered content holds (so it is shipped as a secret)."""
    def value(name: str) -> str | None:
        try:
            return ctx.secrets[name]
        except KeyError:
            return None
    names = (*SECRET_NAMES, *media_node_secrets(ctx.cluster))
    return tuple(n for n in names if (v := value(n)) and v in content)


Renderer = Callable[[RenderContext], list[RenderedFile]]


def renderers() -> list[Renderer]:
    """Every daemon's file set, in install order."""
    from . import baseline, postgres, redis
    from . import etcd, failover, keepalived
    from . import kamailio, sipp_uas, freeswitch, lsyncd
    from . import cdr, monitoring, pgbackrest, recordings_retention
    return [baseline.files, postgres.files, redis.files, etcd.files, failover.files, keepalived.files,
            kamailio.files, sipp_uas.files, freeswitch.files, lsyncd.files, cdr.files, monitoring.files,
            pgbackrest.files, recordings_retention.files]


def media_node_renderers() -> list[Renderer]:
    """A media node's file sets (mediaNodes): no data tier, HA, SIP proxy or CDR pipeline."""
    from . import baseline, freeswitch, lsyncd, monitoring, sipp_uas
    return [baseline.files, sipp_uas.files, freeswitch.files, lsyncd.files, monitoring.files]


def render_host(ctx: RenderContext) -> list[RenderedFile]:
    files: list[RenderedFile] = []
    for render in media_node_renderers() if ctx.is_media_node else renderers():
        files.extend(render(ctx))
    paths = [f.path for f in files]
    dup = {p for p in paths if paths.count(p) > 1}
    if dup:
        raise ValueError(f"two renderers write {sorted(dup)} for {ctx.host.name}")
    return files


def render_cluster(cluster: ClusterConfig, secrets: Mapping[str, str]) -> dict[str, list[RenderedFile]]:
    hosts = list(cluster.nodes) + ([cluster.witness] if cluster.witness else []) + list(cluster.media_nodes)
    return {h.name: render_host(RenderContext(cluster, h, secrets)) for h in hosts}
