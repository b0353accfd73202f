"""FreeSWITCH 1.10 (prod media engine): a complete, self-contained configuration tree.

Rendered for both stacks and validated statically (xmllint on every XML file, luac on the Lua
scripts, our reference checks in the render tests); deployed only where media.engine is
freeswitch. What it sets up: vars.xml (+ secrets.xml: event socket password, policy DSN), the
internal profile on the node address accepting only the two Kamailios (ACL), an external profile
with the trunks as gateways, event socket on loopback, max-sessions / sessions-per-second from
config, mod_callcenter queues and IVR menus from dialplan.*, a static dialplan, recording by the
database's recording policies to the live tmpfs then moved on hangup, JSON CDR to the local CDR
receiver (the peer's as fallback).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from hapbx_node.layout import TLS_CA

from . import MANAGED_BY, RenderContext, RenderedFile, cdr, secret_refs, template
from .dialing import all_trunk_addresses, allowed_callers, dial_rules, exclusive, routes_by_prefix, trunk_addresses
from .postgres import DATABASE

CONF = "/etc/freeswitch"
LIB_DIR = "/usr/local/lib/hapbx/freeswitch"
DROPIN = "/etc/systemd/system/freeswitch.service.d/hapbx.conf"
FS_CLI_CONF = "/etc/fs_cli.conf"
SERVICE = "freeswitch.service"
USER = GROUP = "freeswitch"
#: the recordings directory's group: FreeSWITCH writes there, lsyncd's receiving user too
RECORDINGS_GROUP = "hapbx-rec"
ESL_PORT = 8021
DB_USER = "pbx_readonly"
CDR_ERROR_DIR = "/var/log/freeswitch/json_cdr_errors"
#: the policy cache (recording policies, inbound routes) the Lua scripts read: no call waits on
#: PostgreSQL; refreshed from it by a timer (a failed refresh keeps the last copy)
POLICY_UNIT = "hapbx-fs-policies"
POLICY_RUNTIME_DIR = "hapbx-freeswitch"
POLICY_CACHE = f"/run/{POLICY_RUNTIME_DIR}/policies.tsv"
POLICY_PGPASS = "/etc/hapbx/freeswitch.pgpass"
POLICY_REFRESH_SECONDS = 2
POLICY_TIMEOUT_SECONDS = 1
#: the cache is still used when older (PostgreSQL down), with a warning in the log
POLICY_MAX_AGE_SECONDS = 60
#: RTP silence before a call is hung up, in a call / on hold (channel variables; the profiles'
#: rtp-timeout-sec is deprecated in 1.10)
MEDIA_TIMEOUT_MS, MEDIA_HOLD_TIMEOUT_MS = 300_000, 1_800_000
XML_VALIDATE = "xmllint --noout {path}"
LUA_VALIDATE = "luac5.3 -p -o /dev/null {path}"
#: files whose change FreeSWITCH takes with reloadxml (the unit drop-in's ExecReload); the rest
#: (core, modules, SIP profiles, ACL, event socket) need a restart
RELOADABLE = ("dialplan/hapbx.xml", "autoload_configs/ivr.conf.xml", "autoload_configs/callcenter.conf.xml")
AUTOLOAD = ("modules", "switch", "acl", "event_socket", "sofia", "logfile", "console", "local_stream", "lua",
            "json_cdr", "callcenter", "ivr")


@dataclass(frozen=True)
class OutboundRoute:
    prefix: str
    trunks: tuple
    prefix_re: str
    rest_re: str
    dial: str


def kamailio_sources(ctx: RenderContext) -> list[str]:
    c = ctx.cluster
    return [n.address for n in c.nodes] + [c.vip.address]


def kamailios(ctx: RenderContext) -> list:
    """The PBX nodes whose Kamailio this engine sends calls through: this node's, then the peer's; a
    media node's (mediaNodes) the initial primary's, then the standby's."""
    c = ctx.cluster
    return [c.primary, c.standby] if ctx.is_media_node else [ctx.host, ctx.peer]


def user_dial(ctx: RenderContext, number: str) -> str:
    """Through Kamailio (this node's first, then the peer's), which knows where the user is; over
    TCP, the only transport on which Kamailio takes the engine's calls without a password."""
    port = ctx.cluster.kamailio.sip_port
    return "|".join(f"sofia/internal/{number}@{n.address}:{port};transport=tcp" for n in kamailios(ctx))


def policy_db_hosts(ctx: RenderContext) -> list[str]:
    """Where the policy cache reads: the node's own PostgreSQL on loopback; a media node has none and
    reads the nodes' (the standby's read-only replica first, then the primary), over TLS checked
    against the cluster CA for the node's address (pg_hba lets pbx_readonly in from media nodes)."""
    c = ctx.cluster
    return [c.standby.address, c.primary.address] if ctx.is_media_node else ["127.0.0.1"]


def policy_pgpass(ctx: RenderContext) -> str:
    port, password = ctx.cluster.postgres.port, ctx.secret("postgres_readonly")
    return "".join(f"{h}:{port}:{DATABASE}:{DB_USER}:{password}\n" for h in policy_db_hosts(ctx))


@dataclass(frozen=True)
class ClassGate:
    """Numbers matching ``regex`` may be dialled only by callers of ``allowed`` classes."""
    regex: str
    dial_class: str
    allowed: tuple[str, ...]


def class_gates(ctx: RenderContext) -> list[ClassGate]:
    """The trunk-bound dial rules, each with the classes of service that may dial it."""
    return [ClassGate(r.regex, r.dial_class, allowed_callers(r.dial_class))
            for r in exclusive(dial_rules(ctx.cluster.dialplan)) if r.trunk]


def outbound_routes(ctx: RenderContext) -> list[OutboundRoute]:
    """One route per dialled prefix, longest first ('' last); trunks sharing it tried in order."""
    routes = []
    for prefix, trunks in routes_by_prefix(ctx.cluster.dialplan):
        legs = []
        for t in trunks:
            number = t.prepend + ("$2" if t.strip_prefix else "$1$2")
            legs.append(f"{caller_id_vars(t)}sofia/gateway/{t.name}/{number}")
        routes.append(OutboundRoute(prefix, tuple(trunks), re.escape(prefix),
                                    r"\+?[0-9]+" if prefix == "" else "[0-9]+", "|".join(legs)))
    return routes


def caller_id_vars(trunk) -> str:
    """Per-leg caller ID a trunk presents: its callerId (else the caller's number) and its
    callerIdName (else that number); an internal display name never reaches a carrier."""
    number = trunk.caller_id or "${caller_id_number}"
    return f"[origination_caller_id_number={number},origination_caller_id_name={trunk.caller_id_name or number}]"


@dataclass(frozen=True)
class TrunkSource:
    name: str
    address_re: str


def trunk_sources(ctx: RenderContext) -> list[TrunkSource]:
    """Trunks known by source address: how an inbound call names its trunk (a trunk given by name
    only is identified by ${sip_gateway} when the call is addressed to its gateway)."""
    return [TrunkSource(t.name, "(" + "|".join(re.escape(a) for a in trunk_addresses(t)) + ")")
            for t in ctx.cluster.dialplan.trunks if trunk_addresses(t)]


def agents(ctx: RenderContext) -> list[str]:
    seen: list[str] = []
    for q in ctx.cluster.dialplan.queues:
        seen += [a for a in q.agents if a not in seen]
    return seen


def _values(ctx: RenderContext) -> dict:
    c = ctx.cluster
    return dict(
        managed_by_text=MANAGED_BY, lib_dir=LIB_DIR, esl_port=ESL_PORT, queues=c.dialplan.queues,
        ivrs=c.dialplan.ivrs, trunks=c.dialplan.trunks, outbound=outbound_routes(ctx),
        user_pattern=c.dialplan.user_pattern, user_dial=user_dial(ctx, "${destination_number}"),
        agent_dial=lambda number: user_dial(ctx, number), agents=agents(ctx), kamailio_sources=kamailio_sources(ctx),
        trunk_hosts=all_trunk_addresses(c.dialplan), kamailio_uris=",".join(f"{n.address}:{c.kamailio.sip_port}"
                                                                  for n in kamailios(ctx)),
        cdr_urls=cdr.receiver_urls(ctx), tls_ca=TLS_CA,
        cdr_error_dir=CDR_ERROR_DIR, user=USER, group=GROUP, trunk_sources=trunk_sources(ctx),
        policy_cache=POLICY_CACHE, policy_max_age=POLICY_MAX_AGE_SECONDS, runtime_dir=POLICY_RUNTIME_DIR,
        refresh_seconds=POLICY_REFRESH_SECONDS, timeout_seconds=POLICY_TIMEOUT_SECONDS, pgpass=POLICY_PGPASS,
        port=c.postgres.port, db_user=DB_USER, database=DATABASE, db_hosts=",".join(policy_db_hosts(ctx)),
        db_tls=ctx.is_media_node,
        media_timeout_ms=MEDIA_TIMEOUT_MS, media_hold_timeout_ms=MEDIA_HOLD_TIMEOUT_MS,
        # compared as a hash: the dialplan's debug log prints both sides of a condition
        media_secret_md5=hashlib.md5(ctx.secret("sip_media_secret").encode()).hexdigest(),
        class_gates=class_gates(ctx))


def fs_cli_conf(ctx: RenderContext) -> str:
    return (f"; {MANAGED_BY}\n; fs_cli for root (and the unit's ExecReload): the local event socket.\n"
            f"[default]\nhost => 127.0.0.1\nport => {ESL_PORT}\npassword => {ctx.secret('freeswitch_esl')}\n")


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness or ctx.cluster.media.engine != "freeswitch":
        return []
    return render(ctx)


def render(ctx: RenderContext) -> list[RenderedFile]:
    """Every FreeSWITCH file of a node, whatever the stack's engine (the render tests check prod's)."""
    v = _values(ctx)

    def xml(rel: str, name: str | None = None, **kw) -> RenderedFile:
        text = template(f"freeswitch/{name or rel}.j2", ctx, **v)
        return RenderedFile(f"{CONF}/{rel}", text, service=SERVICE,
                            action="reload" if rel in RELOADABLE else "restart", validate=XML_VALIDATE,
                            group=GROUP, mode="0640", **kw)

    secrets = template("freeswitch/secrets.xml.j2", ctx, esl_password=ctx.secret("freeswitch_esl"),
                       cdr_cred=":".join(cdr.sender_credential(ctx)), **v)
    cli = fs_cli_conf(ctx)
    pgpass = policy_pgpass(ctx)
    out = [
        xml("freeswitch.xml"),
        xml("vars.xml"),
        RenderedFile(f"{CONF}/secrets.xml", secrets, service=SERVICE, action="restart", validate=XML_VALIDATE,
                     group=GROUP, mode="0640", secrets=secret_refs(ctx, secrets) or
                     ("freeswitch_esl", cdr.sender_secret(ctx.cluster, ctx.host.name))),
        *[xml(f"autoload_configs/{m}.conf.xml") for m in AUTOLOAD],
        xml("sip_profiles/internal.xml"),
        xml("dialplan/hapbx.xml"),
    ]
    if ctx.cluster.dialplan.trunks:
        out.append(xml("sip_profiles/external.xml"))
    out += [
        RenderedFile(f"{LIB_DIR}/hapbx_recording.lua", template("freeswitch/scripts/hapbx_recording.lua.j2", ctx, **v),
                     validate=LUA_VALIDATE),
        RenderedFile(f"{LIB_DIR}/hapbx_inbound.lua", template("freeswitch/scripts/hapbx_inbound.lua.j2", ctx, **v),
                     validate=LUA_VALIDATE),
        RenderedFile(f"{LIB_DIR}/hapbx_policies.lua", template("freeswitch/scripts/hapbx_policies.lua.j2", ctx, **v),
                     validate=LUA_VALIDATE),
        RenderedFile(f"{LIB_DIR}/policy-cache", template("freeswitch/scripts/policy-cache.j2", ctx, **v),
                     mode="0755", validate="bash -n {path}"),
        RenderedFile(POLICY_PGPASS, pgpass, owner=USER, group=GROUP, mode="0600",
                     secrets=secret_refs(ctx, pgpass) or ("postgres_readonly",)),
        RenderedFile(f"/etc/systemd/system/{POLICY_UNIT}.service",
                     template("freeswitch/hapbx-fs-policies.service.j2", ctx, **v), service=f"{POLICY_UNIT}.timer",
                     action="restart", validate=f"systemd-analyze verify --man=no {{path}}:{POLICY_UNIT}.service"),
        RenderedFile(f"/etc/systemd/system/{POLICY_UNIT}.timer",
                     template("freeswitch/hapbx-fs-policies.timer.j2", ctx, **v), service=f"{POLICY_UNIT}.timer",
                     action="restart"),
        RenderedFile(f"{LIB_DIR}/recording-done", template("freeswitch/scripts/recording-done.j2", ctx, **v),
                     mode="0755", validate="sh -n {path}"),
        RenderedFile(FS_CLI_CONF, cli, mode="0600", secrets=secret_refs(ctx, cli) or ("freeswitch_esl",)),
        RenderedFile(DROPIN, template("freeswitch/unit-override.conf.j2", ctx, **v), service=SERVICE,
                     action="restart"),
    ]
    problems = reference_problems({f.path: f.content for f in out})
    if problems:  # a bug of the templates or a config the schema let through: never ship it
        raise ValueError(f"FreeSWITCH configuration of {ctx.host.name}: " + "; ".join(problems))
    return out


def setup_script(ctx: RenderContext) -> str:
    """Before the files: the configuration tree is ours alone (the packaged sample configuration
    would be loaded beside it by the include globs: moved aside once, kept), the recordings group
    and directories exist and FreeSWITCH may write there."""
    c = ctx.cluster
    return f"""
changed=0
getent group {RECORDINGS_GROUP} >/dev/null || {{ groupadd -r {RECORDINGS_GROUP}; changed=1; }}
id -nG {USER} | tr ' ' '\\n' | grep -qx {RECORDINGS_GROUP} || {{ usermod -aG {RECORDINGS_GROUP} {USER}; changed=1; }}
for d in {CONF} {CONF}/autoload_configs {CONF}/sip_profiles {CONF}/dialplan; do
  [ -d "$d" ] || changed=1
  install -d -o root -g {GROUP} -m 0750 "$d"
done
backup=/var/backups/hapbx-freeswitch-dist
while IFS= read -r -d '' f; do
  rel=${{f#{CONF}/}}
  mkdir -p "$backup/$(dirname "$rel")"
  mv -f "$f" "$backup/$rel"
  echo "moved aside: $rel"; changed=1
done < <(find {CONF} -type f ! -exec grep -q 'Managed by high-cc-pbx' {{}} \\; -print0)
find {CONF} -mindepth 1 -type d -empty -not -path '{CONF}/autoload_configs' -not -path '{CONF}/sip_profiles' \\
  -not -path '{CONF}/dialplan' -delete
[ -d {c.recordings.directory}/{ctx.host.name} ] || changed=1
install -d -o root -g {RECORDINGS_GROUP} -m 2770 {c.recordings.directory} {c.recordings.directory}/{ctx.host.name}
install -d -o {USER} -g {GROUP} -m 0750 {CDR_ERROR_DIR}
[ $changed = 1 ] && echo changed || echo unchanged
"""


# --- reference checks: what xmllint cannot see ------------------------------------------------

#: variables FreeSWITCH defines itself ($${...})
BUILTIN_VARS = {"base_dir", "conf_dir", "sounds_dir", "recordings_dir", "log_dir", "run_dir", "db_dir", "mod_dir",
                "script_dir", "temp_dir", "grammar_dir", "storage_dir", "cache_dir", "hostname", "switch_serial",
                "local_ip_v6", "local_mask_v4", "core_uuid", "certs_dir", "fonts_dir", "images_dir", "data_dir",
                "localstate_dir", "htdocs_dir", "zrtp_enabled", "nat_public_addr", "nat_private_addr", "nat_type"}
#: dialplan applications and the module providing them
APP_MODULES = {"callcenter": "mod_callcenter", "lua": "mod_lua", "bridge": "mod_dptools", "ivr": "mod_dptools",
               "transfer": "mod_dptools", "answer": "mod_dptools", "set": "mod_dptools", "respond": "mod_dptools",
               "hangup": "mod_dptools", "sleep": "mod_dptools", "record_session": "mod_dptools"}


#: Debian's freeswitch package: SWITCH_GLOBAL_dirs.script_dir
SCRIPT_DIR = "/usr/share/freeswitch/scripts"


def mod_lua_path(data: str, script_dir: str = SCRIPT_DIR) -> str:
    """The file the `lua` application runs for ``data``, as mod_lua 1.10 resolves it
    (mod_lua.cpp lua_parse_and_execute): the first word; unless switch_is_file_path (starts with
    '/' or holds '://'), FreeSWITCH's own scripts directory in front. lua.conf's
    script-directory is only Lua's package.path, for `require`."""
    name = data.strip().split(" ", 1)[0]
    return name if name.startswith("/") or "://" in name else f"{script_dir}/{name}"


def lua_dofile_paths(text: str) -> list[str]:
    """Files a Lua script loads with dofile("...") (absolute paths only: nothing is resolved)."""
    return re.findall(r'dofile\("([^"]+)"\)', text)


def _xml(text: str):
    import xml.etree.ElementTree as ET
    return ET.fromstring(text)


def reference_problems(files: dict[str, str]) -> list[str]:
    """Cross-file checks of a rendered tree (path -> content): includes resolve, every $${var} is
    set, every profile, gateway, ACL, context, queue, agent, IVR menu, Lua script and module a
    file refers to exists, every transfer target is dialable. Returns one line per problem."""
    import fnmatch
    import posixpath
    problems: list[str] = []
    conf = {p[len(CONF) + 1:]: t for p, t in files.items() if p.startswith(CONF + "/")}
    docs = {}
    for rel, text in conf.items():
        try:
            docs[rel] = _xml(text)
        except Exception as err:  # noqa: BLE001 - reported, xmllint says the same
            problems.append(f"{rel}: not well-formed ({err})")
    if problems:
        return problems

    # includes, from freeswitch.xml down
    loaded, todo = [], ["freeswitch.xml"]
    while todo:
        rel = todo.pop(0)
        loaded.append(rel)
        for el in docs[rel].iter("X-PRE-PROCESS"):
            if el.get("cmd") != "include":
                continue
            pattern = posixpath.normpath(posixpath.join(posixpath.dirname(rel), el.get("data", "")))
            hits = sorted(p for p in docs if fnmatch.fnmatch(p, pattern))
            if not hits:
                problems.append(f"{rel}: include {el.get('data')!r} matches no file")
            todo += [h for h in hits if h not in loaded and h not in todo]
    for rel in docs:
        if rel not in loaded:
            problems.append(f"{rel}: never included from freeswitch.xml")

    # $${global} variables
    defined = set(BUILTIN_VARS) | {"local_ip_v4", "domain"}
    for rel in loaded:
        for el in docs[rel].iter("X-PRE-PROCESS"):
            if el.get("cmd") == "set":
                defined.add(el.get("data", "").split("=", 1)[0])
    for rel in loaded:
        for name in re.findall(r"\$\$\{([A-Za-z0-9_]+)\}", conf[rel]):
            if name not in defined:
                problems.append(f"{rel}: $${{{name}}} is never set")

    def all_of(tag: str, rel_prefix: str = "") -> list:
        return [(rel, el) for rel in loaded if rel.startswith(rel_prefix) for el in docs[rel].iter(tag)]

    profiles = {el.get("name") for _, el in all_of("profile", "sip_profiles/")}
    gateways = {el.get("name") for _, el in all_of("gateway", "sip_profiles/")}
    acls = {el.get("name") for _, el in all_of("list", "autoload_configs/acl")}
    contexts = {el.get("name") for _, el in all_of("context", "dialplan/")}
    queues = {el.get("name") for _, el in all_of("queue", "autoload_configs/callcenter")}
    agents_ = {el.get("name") for _, el in all_of("agent", "autoload_configs/callcenter")}
    menus = {el.get("name") for _, el in all_of("menu", "autoload_configs/ivr")}
    modules = {el.get("module") for _, el in all_of("load", "autoload_configs/modules")}
    installed = set(files)

    for rel, el in all_of("param", "sip_profiles/"):
        name, value = el.get("name"), el.get("value", "")
        if name in ("apply-inbound-acl", "apply-register-acl") and value not in acls:
            problems.append(f"{rel}: {name} {value!r} is no ACL of acl.conf")
        if name == "context" and value not in contexts:
            problems.append(f"{rel}: context {value!r} is no dialplan context")
    es = {el.get("name"): el.get("value") for _, el in all_of("param", "autoload_configs/event_socket")}
    if es.get("listen-ip") not in ("127.0.0.1", "::1"):
        problems.append(f"event socket listens on {es.get('listen-ip')!r}, not loopback")
    if es.get("apply-inbound-acl") not in acls:
        problems.append("event socket ACL is no ACL of acl.conf")
    for rel, el in all_of("tier", "autoload_configs/callcenter"):
        if el.get("agent") not in agents_:
            problems.append(f"{rel}: tier agent {el.get('agent')!r} is not defined")
        if el.get("queue") not in queues:
            problems.append(f"{rel}: tier queue {el.get('queue')!r} is not defined")

    def dial_refs(rel: str, dial: str) -> None:
        for leg in dial.split("|"):
            leg = re.sub(r"^\[[^]]*\]", "", leg)
            m = re.match(r"sofia/gateway/([^/]+)/", leg)
            if m:
                if m.group(1) not in gateways:
                    problems.append(f"{rel}: gateway {m.group(1)!r} is not defined")
                continue
            m = re.match(r"sofia/([^/]+)/", leg)
            if m and m.group(1) not in profiles:
                problems.append(f"{rel}: SIP profile {m.group(1)!r} is not defined")

    numbers: dict[str, list] = {}
    for _, ctx_el in all_of("context", "dialplan/"):
        numbers[ctx_el.get("name")] = [re.compile(el.get("expression")) for el in ctx_el.iter("condition")
                                       if el.get("field") == "destination_number" and el.get("expression")]

    def dialable(rel: str, target: str, context: str) -> None:
        if context not in contexts:
            problems.append(f"{rel}: transfer to context {context!r}, which does not exist")
        elif "$" not in target and not any(r.match(target) for r in numbers[context]):
            problems.append(f"{rel}: transfer target {target!r} matches no dialplan extension")

    for rel, el in all_of("action", "dialplan/"):
        app, data = el.get("application"), el.get("data", "")
        module = APP_MODULES.get(app)
        if module and module != "mod_dptools" and module not in modules:
            problems.append(f"{rel}: application {app!r} needs {module}, which is not loaded")
        if app == "bridge":
            dial_refs(rel, data)
        elif app == "callcenter" and data not in queues:
            problems.append(f"{rel}: queue {data!r} is not defined in callcenter.conf")
        elif app == "ivr" and data not in menus:
            problems.append(f"{rel}: IVR menu {data!r} is not defined in ivr.conf")
        elif app == "lua" and mod_lua_path(data) not in installed:
            problems.append(f"{rel}: Lua script {data.split()[0]!r} is {mod_lua_path(data)}, which is not installed")
        elif app == "transfer":
            parts = data.split()
            dialable(rel, parts[0], parts[2] if len(parts) > 2 else "default")
    for rel, el in all_of("agent", "autoload_configs/callcenter"):
        dial_refs(rel, re.sub(r"^\[[^]]*\]", "", el.get("contact", "")))
    for rel, el in all_of("entry", "autoload_configs/ivr"):
        parts = el.get("param", "").split()
        if el.get("action") == "menu-exec-app" and parts[:1] == ["transfer"]:
            dialable(rel, parts[1], parts[3] if len(parts) > 3 else "default")
    if not {"mod_sofia", "mod_dialplan_xml", "mod_event_socket", "mod_json_cdr"} <= modules:
        problems.append("modules.conf: sofia, dialplan_xml, event_socket and json_cdr must be loaded")
    if "pgsql://" in "".join(conf.values()) and "mod_pgsql" not in modules:
        problems.append("a pgsql:// DSN is used but mod_pgsql is not loaded")
    for path, text in files.items():
        if path.endswith(".lua"):
            for loaded in lua_dofile_paths(text):
                if loaded not in installed:
                    problems.append(f"{path}: dofile({loaded!r}) is not installed")
    return problems
