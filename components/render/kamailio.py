"""Kamailio on the PBX nodes: kamailio.cfg (one template for 5.6 and 6.0), its secrets include,
the TLS certificate, and the unit drop-in carrying -m/-M from the stack configuration."""
from __future__ import annotations

from hapbx_node.layout import HA_BIN

from . import RenderContext, RenderedFile, secret_refs, template
from .dialing import CALL_CLASSES, dial_rules
from .postgres import DATABASE, DISPATCHER_SET

CONF_DIR = "/etc/kamailio"
CFG = f"{CONF_DIR}/kamailio.cfg"
SECRETS_CFG = f"{CONF_DIR}/hapbx-secrets.cfg"
DROPIN = "/etc/systemd/system/kamailio.service.d/hapbx.conf"
SERVICE = "kamailio.service"
TLS_DIR = f"{CONF_DIR}/tls"
TLS_CFG = f"{CONF_DIR}/tls.cfg"
TLS_CERTIFICATE = f"{TLS_DIR}/fullchain.pem"
TLS_KEY = f"{TLS_DIR}/privkey.pem"
#: secrets held by hapbx-secrets.cfg
SECRET_NAMES = ("postgres_kamailio", "kamailio_auth_secret", "kamailio_dialog_secret", "sip_media_secret")
#: what Kamailio refuses, as statistics (kamcmd stats.get_statistics all)
STATISTICS = ("hapbx_relay_refused", "hapbx_forged_dialog", "hapbx_untrusted_media", "hapbx_dmq_refused",
              "hapbx_banned_dropped", "hapbx_flood_banned", "hapbx_scanner_dropped", "hapbx_auth_failed",
              "hapbx_auth_banned", "hapbx_class_refused", "hapbx_call_rate_refused", "hapbx_call_limit_refused",
              "hapbx_trunk_limit_refused")
#: Prometheus metrics (xhttp_prom) on the node address, port monitoring.kamailioPort: the path and
#: the gauge of media engines dispatcher would use now (exported as kamailio_<name>)
METRICS_PATH = "/metrics"
MEDIA_GAUGE = "hapbx_media_destinations_active"
#: User-Agent headers of SIP scanners and password-guessing tools (dropped and banned)
SCANNER_USER_AGENTS = ("friendly-scanner", "sipvicious", "sip-vicious", "sipcli", "sip-scan", "sipscan",
                       "sundayddr", "iWar", "VaxSIPUserAgent", "smap", "pplsip", "SIVuS", "SIPBomber")
#: what the validator puts beside a staged kamailio.cfg where the real secrets file does not
#: exist yet (rendering off the node, CI); on a node the secrets file is installed first
PLACEHOLDER_SECRETS = ('#!define DBURL "postgres://kamailio:x@127.0.0.1/pbx"\\n#!define AUTH_SECRET "x"\\n'
                       '#!define DIALOG_SECRET "x"\\n#!define MEDIA_SECRET "x"\\n')


def validate_command(binary: str = "kamailio") -> str:
    """`kamailio -c` on the staged file, with the installed secrets include beside it."""
    return (f'd=$(dirname {{path}}); if [ -r {SECRETS_CFG} ]; then cp {SECRETS_CFG} "$d/"; '
            f"else printf '{PLACEHOLDER_SECRETS}' > \"$d/hapbx-secrets.cfg\"; fi; "
            f"{binary} -c -f {{path}}")


SECRETS_VALIDATE = ("grep -Eq '^#!define DBURL \"postgres://kamailio:[^@\"]+@127\\.0\\.0\\.1:[0-9]+/[a-z_]+\"$' {path} && "
                    "grep -Eq '^#!define AUTH_SECRET \"[A-Za-z0-9@:_-]+\"$' {path} && "
                    "grep -Eq '^#!define DIALOG_SECRET \"[A-Za-z0-9@:_-]+\"$' {path} && "
                    "grep -Eq '^#!define MEDIA_SECRET \"[A-Za-z0-9@:_-]+\"$' {path}")


def aliases(ctx: RenderContext) -> list[str]:
    """Names that mean this proxy besides its listen addresses (as /etc/hosts has them)."""
    domain = ctx.cluster.network.domain
    return [f"vip.{domain}", f"{ctx.host.name}.{domain}"]


def config(ctx: RenderContext) -> str:
    c = ctx.cluster
    return template("kamailio/kamailio.cfg.j2", ctx, k=c.kamailio, m=c.monitoring, metrics_path=METRICS_PATH,
                    media_gauge=MEDIA_GAUGE, media_set=DISPATCHER_SET, aliases=aliases(ctx),
                    scanner_ua_re="|".join(SCANNER_USER_AGENTS), statistics=STATISTICS,
                    call_classes=CALL_CLASSES, dial_rules=dial_rules(c.dialplan), trunks=c.dialplan.trunks)


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    c = ctx.cluster
    secrets = template("kamailio/hapbx-secrets.cfg.j2", ctx, db_password=ctx.secret("postgres_kamailio"),
                       auth_secret=ctx.secret("kamailio_auth_secret"), database=DATABASE,
                       dialog_secret=ctx.secret("kamailio_dialog_secret"), media_secret=ctx.secret("sip_media_secret"))
    out = [
        RenderedFile(SECRETS_CFG, secrets, service=SERVICE, action="restart", validate=SECRETS_VALIDATE,
                     group="kamailio", mode="0640", secrets=secret_refs(ctx, secrets) or SECRET_NAMES),
        *tls_files(ctx),
        RenderedFile(CFG, config(ctx), service=SERVICE, action="restart", validate=validate_command(),
                     group="kamailio", mode="0640"),
        RenderedFile(DROPIN, template("kamailio/unit-override.conf.j2", ctx, k=c.kamailio, ha_bin=HA_BIN),
                     service=SERVICE, action="restart"),
    ]
    return out


def tls_files(ctx: RenderContext) -> list[RenderedFile]:
    """The certificate chain, its key and tls.cfg; installed before kamailio.cfg, whose check
    (kamailio -c) loads them."""
    if not ctx.cluster.kamailio.tls:
        return []
    chain, key = ctx.secret("kamailio_tls_certificate"), ctx.secret("kamailio_tls_key")
    return [
        RenderedFile(TLS_CERTIFICATE, chain, service=SERVICE, action="restart", group="kamailio", mode="0644",
                     validate="openssl x509 -noout -in {path}", secrets=secret_refs(ctx, chain)),
        RenderedFile(TLS_KEY, key, service=SERVICE, action="restart", group="kamailio", mode="0640",
                     validate="openssl pkey -noout -in {path}", secrets=secret_refs(ctx, key) or ("kamailio_tls_key",)),
        RenderedFile(TLS_CFG, template("kamailio/tls.cfg.j2", ctx, certificate=TLS_CERTIFICATE, key=TLS_KEY),
                     service=SERVICE, action="restart", group="kamailio", mode="0640"),
    ]
