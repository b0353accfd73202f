"""FreeSWITCH's configuration, checked statically (FreeSWITCH is not packaged by Debian): every XML
file through xmllint, the Lua scripts through luac, the shell script through sh -n and shellcheck,
and our reference checks over the whole tree (includes, $${vars}, profiles, gateways, ACLs,
contexts, queues, agents, IVR menus, transfer targets, modules)."""
from __future__ import annotations

import copy
import hashlib
import html
import dataclasses
import re
import shutil
import subprocess

import pytest

from components.config import ConfigError, build, read_stack_file
from components.render import SECRET_NAMES, RenderContext, masked_secrets
from components.render import freeswitch as fs
from tests.mockrun import ROOT
from tests.daemons.validators import run_validator

SECRETS = {n: f"Fs{n.replace('_', '')}8Wq" for n in SECRET_NAMES}
DIALPLAN = {
    "queues": [{"number": "8000", "name": "support", "strategy": "round-robin", "agents": ["1001", "1002"]},
               {"number": "8001", "name": "sales", "agents": ["1003"], "maxWaitSeconds": 120}],
    "ivrs": [{"number": "7000", "name": "main", "greeting": "ivr/ivr-welcome.wav",
              "options": [{"digit": "1", "target": "8000"}, {"digit": "2", "target": "8001"},
                          {"digit": "0", "target": "1001"}], "defaultTarget": "8000"}],
    "trunks": [{"name": "carrier-a", "host": "203.0.113.5", "prefixes": ["00", "+"], "stripPrefix": True,
                "callerId": "4420700000", "premiumPrefixes": ["00900"]},
               {"name": "carrier-b", "host": "sip.carrier-b.example", "transport": "tcp", "prefixes": ["00", ""],
                "prepend": "+"}],
}
pytestmark = pytest.mark.skipif(shutil.which("xmllint") is None or shutil.which("luac5.3") is None,
                                reason="needs xmllint (libxml2-utils) and luac5.3 (lua5.3)")


def raw_config(stack: str, dialplan: dict | None = None) -> dict:
    raw, _ = read_stack_file(f"{ROOT}/Pulumi.{stack}.yaml")
    raw = copy.deepcopy(raw)
    raw.setdefault("vendorRepoToken", "tok")
    if dialplan is not None:
        raw["dialplan"] = dialplan
    return raw


def cluster(stack: str = "prod", dialplan: dict | None = DIALPLAN, **media):
    c, _ = build(raw_config(stack, dialplan))
    if media:
        c = dataclasses.replace(c, media=dataclasses.replace(c.media, **media))
    return c


def tree(c, node: int = 0, secrets=SECRETS):
    return {f.path: f for f in fs.render(RenderContext(c, c.nodes[node], secrets))}


@pytest.mark.parametrize("stack,dialplan", [("prod", DIALPLAN), ("prod", None), ("lab", DIALPLAN)])
@pytest.mark.parametrize("node", [0, 1])
def test_every_file_passes_its_checker(stack, dialplan, node):
    files = tree(cluster(stack, dialplan), node)
    checked = 0
    for f in files.values():
        if f.validate:
            out = run_validator(f)
            assert out.returncode == 0, (f.path, out.stdout, out.stderr)
            checked += 1
    assert checked == len([p for p in files if p.endswith((".xml", ".lua", "recording-done", "policy-cache", ".service"))])
    assert fs.reference_problems({p: f.content for p, f in files.items()}) == []


def test_shell_script_passes_shellcheck():
    f = tree(cluster())[f"{fs.LIB_DIR}/recording-done"]
    out = subprocess.run(["shellcheck", "-s", "sh", "-"], input=f.content, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_validators_reject_broken_files():
    files = tree(cluster())
    for path, damage in [(f"{fs.CONF}/dialplan/hapbx.xml", ("</context>", "</contxt>")),
                         (f"{fs.LIB_DIR}/hapbx_recording.lua", ("then mode", "them mode")),
                         (f"{fs.LIB_DIR}/recording-done", ("[ -f", "[ -f ]] ("))]:
        f = files[path]
        assert damage[0] in f.content
        broken = dataclasses.replace(f, content=f.content.replace(damage[0], damage[1], 1))
        assert run_validator(broken).returncode != 0, path


@pytest.mark.parametrize("path,old,new,problem", [
    ("dialplan/hapbx.xml", 'data="support@default"', 'data="nosuch@default"', "queue 'nosuch@default' is not defined"),
    ("dialplan/hapbx.xml", 'data="main"', 'data="nomenu"', "IVR menu 'nomenu' is not defined"),
    ("dialplan/hapbx.xml", "sofia/gateway/carrier-a/", "sofia/gateway/carrier-x/", "gateway 'carrier-x'"),
    ("dialplan/hapbx.xml", "sofia/internal/", "sofia/intern/", "SIP profile 'intern'"),
    ("dialplan/hapbx.xml", f'data="{fs.LIB_DIR}/hapbx_inbound.lua"', 'data="hapbx_inbound.lua"',
     f"Lua script 'hapbx_inbound.lua' is {fs.SCRIPT_DIR}/hapbx_inbound.lua, which is not installed"),
    ("dialplan/hapbx.xml", 'data="8000 XML hapbx"', 'data="8000 XML nowhere"', "context 'nowhere'"),
    ("autoload_configs/ivr.conf.xml", 'param="transfer 8001 XML hapbx"', 'param="transfer 9999 XML hapbx"',
     "transfer target '9999' matches no dialplan extension"),
    ("autoload_configs/callcenter.conf.xml", 'queue="sales@default"', 'queue="gone@default"', "tier queue 'gone"),
    ("autoload_configs/acl.conf.xml", '<list name="kamailio"', '<list name="kamailio2"', "'kamailio' is no ACL"),
    ("autoload_configs/event_socket.conf.xml", 'value="127.0.0.1"', 'value="0.0.0.0"', "not loopback"),
    ("autoload_configs/modules.conf.xml", '<load module="mod_callcenter"/>', "", "needs mod_callcenter"),
    ("vars.xml", "hapbx_node=", "hapbx_nod=", "$${hapbx_node} is never set"),
    ("freeswitch.xml", 'data="dialplan/*.xml"', 'data="dialplans/*.xml"', "matches no file"),
    ("sip_profiles/internal.xml", 'name="context" value="hapbx"', 'name="context" value="default"',
     "context 'default' is no dialplan context"),
])
def test_reference_checks_catch_broken_references(path, old, new, problem):
    dialplan = copy.deepcopy(DIALPLAN)
    dialplan["trunks"][1]["prefixes"] = ["00"]   # with a '' route every number would be dialable
    texts = {p: f.content for p, f in tree(cluster(dialplan=dialplan)).items()}
    key = f"{fs.CONF}/{path}"
    assert old in texts[key], old
    texts[key] = texts[key].replace(old, new, 1)
    problems = fs.reference_problems(texts)
    assert any(problem in p for p in problems), problems


def test_profiles_sessions_and_event_socket_from_config():
    c = cluster(max_sessions=750, sessions_per_second=90)
    files = tree(c)
    switch = files[f"{fs.CONF}/autoload_configs/switch.conf.xml"].content
    assert '"max-sessions" value="750"' in switch and '"sessions-per-second" value="90"' in switch
    assert f'"rtp-start-port" value="{c.firewall.rtp_port_min}"' in switch
    internal = files[f"{fs.CONF}/sip_profiles/internal.xml"].content
    assert f'"sip-ip" value="{c.nodes[0].address}"' in internal and '"apply-inbound-acl" value="kamailio"' in internal
    assert '"disable-register" value="true"' in internal
    acl = files[f"{fs.CONF}/autoload_configs/acl.conf.xml"].content
    kam = re.search(r'<list name="kamailio" default="deny">(.*?)</list>', acl, re.S).group(1)
    assert sorted(re.findall(r'cidr="([0-9.]+)/32"', kam)) == sorted([n.address for n in c.nodes] + [c.vip.address])
    assert 'host="203.0.113.5"' in acl and "carrier-b.example" not in acl  # names are not put in an ACL
    esl = files[f"{fs.CONF}/autoload_configs/event_socket.conf.xml"].content
    assert '"listen-ip" value="127.0.0.1"' in esl and "$${hapbx_esl_password}" in esl
    vars_ = files[f"{fs.CONF}/vars.xml"].content
    assert f"internal_sip_port={c.media.sip_port}" in vars_ and f"hapbx_node={c.nodes[0].name}" in vars_


def test_dialplan_trusts_only_kamailio_and_checks_the_class_again():
    """A call on the internal profile needs Kamailio's media secret (compared as an MD5, so the
    secret is in no file and no log line); a trunk-bound number needs the caller's class, which
    only Kamailio vouches for (X-Hapbx-Class on the internal profile); X- headers go no further."""
    c = cluster()
    files = tree(c)
    dialplan = files[f"{fs.CONF}/dialplan/hapbx.xml"].content
    secret = SECRETS["sip_media_secret"]
    assert secret not in "".join(f.content for f in files.values() if f.path != f"{fs.CONF}/secrets.xml")
    trust = re.search(r'<extension name="hapbx-trust".*?</extension>', dialplan, re.S).group(0)
    assert '${sofia_profile_name}" expression="^internal$"' in trust
    assert f'expression="^{hashlib.md5(secret.encode()).hexdigest()}$"' in trust and '"respond" data="403' in trust
    gates = re.findall(r'<extension name="class-\d+-(\w+)" continue="true">\s*<condition field="destination_number" '
                       r'expression="([^"]+)"/>\s*<condition field="\$\{sofia_profile_name\}:\$\{sip_h_X-Hapbx-Class\}" '
                       r'expression="\^internal:\(([a-z|]+)\)\$">', dialplan)

    def gate(number):   # FreeSWITCH tries every gate: at most one may take a number
        hits = [(cls, allowed) for cls, regex, allowed in gates if re.search(html.unescape(regex), number)]
        assert len(hits) <= 1, (number, hits)
        return hits[0] if hits else None
    assert gate("00900123") == ("premium", "premium")
    assert gate("0049301234") == ("international", "international|premium")   # carrier-a lists no other class
    assert gate("+4930123") == ("international", "international|premium")     # '+' and '' routes: unlisted
    assert gate("1001") is None and gate("8000") is None                       # our own numbers: no gate
    # every gate precedes the routes it guards
    assert dialplan.index("class-1-") < dialplan.index('<extension name="outbound-1">')
    assert '"sip_copy_custom_headers=false"' in dialplan


def test_cdr_goes_to_the_local_receiver_then_the_peer():
    c = cluster()
    conf = tree(c)[f"{fs.CONF}/autoload_configs/json_cdr.conf.xml"].content
    urls = re.findall(r'name="url" value="([^"]+)"', conf)
    # this node's on loopback in plain HTTP; the peer's over HTTPS, its certificate and address checked
    assert urls == [f"http://127.0.0.1:{c.cdr.receiver_port}/cdr", f"https://{c.nodes[1].address}:{c.cdr.receiver_port}/cdr"]
    params = dict(re.findall(r'<param name="([^"]+)" value="([^"]*)"/>', conf))
    assert params["enable-cacert-check"] == "true" and params["enable-ssl-verifyhost"] == "true"
    assert params["ssl-cacert-file"] == "/etc/hapbx/tls/ca.crt"
    dialplan = tree(c)[f"{fs.CONF}/dialplan/hapbx.xml"].content
    for var in ("hapbx_node", "hapbx_direction=internal", "hapbx_direction=outbound", "hapbx_direction=inbound",
                "hapbx_queue=8000", "hapbx_trunk="):
        assert var in dialplan, var   # what the CDR receiver takes its columns from


def test_dialplan_follows_the_config():
    c = cluster()
    files = tree(c)
    dialplan = files[f"{fs.CONF}/dialplan/hapbx.xml"].content
    # longest prefix first, '' last; shared prefixes fail over in the order listed
    routes = re.findall(r'expression="\^\((.*?)\)\((.*?)\)\$"', dialplan)
    assert [p for p, _ in routes] == ["00", r"\+", ""]
    assert ("[origination_caller_id_number=4420700000,origination_caller_id_name=4420700000]sofia/gateway/carrier-a/$2|"
            "[origination_caller_id_number=${caller_id_number},origination_caller_id_name=${caller_id_number}]"
            "sofia/gateway/carrier-b/+$1$2") in dialplan
    cc = files[f"{fs.CONF}/autoload_configs/callcenter.conf.xml"].content
    assert '<queue name="support@default">' in cc and '"strategy" value="round-robin"' in cc
    assert len(re.findall(r"<tier ", cc)) == 3 and len(re.findall(r"<agent ", cc)) == 3
    assert (f"sofia/internal/1001@{c.nodes[0].address}:{c.kamailio.sip_port};transport=tcp|"
            f"sofia/internal/1001@{c.nodes[1].address}:{c.kamailio.sip_port};transport=tcp") in cc
    ivr = files[f"{fs.CONF}/autoload_configs/ivr.conf.xml"].content
    assert 'digits="2" param="transfer 8001 XML hapbx"' in ivr
    assert 'data="8000 XML hapbx"' in dialplan  # IVR default target
    # recording by policy, to the live tmpfs, moved on hangup
    lua = files[f"{fs.LIB_DIR}/hapbx_recording.lua"].content
    assert "policies.recording_mode" in lua and "record_post_process_exec_api" in lua and "execute_on_answer" in lua
    assert f"hapbx_live_dir={c.recordings.tmpfs_dir}" in files[f"{fs.CONF}/vars.xml"].content
    # no trunks: no external profile, no gateway
    assert f"{fs.CONF}/sip_profiles/external.xml" not in tree(cluster(dialplan={}))


def test_secrets_only_where_needed():
    files = tree(cluster())
    holders = {p for p, f in files.items() if f.secrets}
    assert holders == {f"{fs.CONF}/secrets.xml", fs.FS_CLI_CONF, fs.POLICY_PGPASS}
    for p, f in files.items():
        if p not in holders:
            assert not any(v in f.content for v in SECRETS.values()), p
    assert files[fs.FS_CLI_CONF].mode == "0600"
    sec = files[f"{fs.CONF}/secrets.xml"]
    assert sec.mode == "0640" and sec.group == "freeswitch" and SECRETS["freeswitch_esl"] in sec.content
    # the database password is in no DSN FreeSWITCH holds (it would log it on every failed
    # connection): only the policy cache's pgpass file, the freeswitch user's alone
    assert "pgsql://" not in "".join(f.content for f in files.values())
    assert SECRETS["postgres_readonly"] not in sec.content
    pgpass = files[fs.POLICY_PGPASS]
    assert pgpass.mode == "0600" and pgpass.owner == "freeswitch" and pgpass.secrets == ("postgres_readonly",)
    assert pgpass.content == f"127.0.0.1:5432:pbx:pbx_readonly:{SECRETS['postgres_readonly']}\n"
    masked = {f.path: f for f in fs.render(RenderContext(cluster(), cluster().nodes[0], masked_secrets()))}
    assert "@@SECRET:freeswitch_esl@@" in masked[f"{fs.CONF}/secrets.xml"].content


def test_dialplan_config_errors_name_their_key():
    bad = copy.deepcopy(DIALPLAN)
    bad["queues"][1]["number"] = "8000"                     # taken by the first queue
    bad["queues"][0]["agents"].append("99999")              # not a user number
    bad["ivrs"][0]["options"][0]["target"] = "9999"         # nothing there
    bad["ivrs"][0]["options"][1]["digit"] = "1"             # twice
    bad["trunks"][1]["name"] = "carrier-a"                  # twice
    bad["trunks"][0]["prefixes"] = ["0x"]
    with pytest.raises(ConfigError) as err:
        build(raw_config("prod", bad))
    text = str(err.value)
    for needle in ("dialplan.queues[1].number: '8000' is already dialplan.queues[0]",
                   "dialplan.queues[0].agents[2]: '99999' is not a user number",
                   "dialplan.ivrs[0].options[0].target: '9999' is no user, queue or IVR number",
                   "dialplan.ivrs[0].options: digit '1' is used twice",
                   "dialplan.trunks: name 'carrier-a' is used twice",
                   "dialplan.trunks[0].prefixes[0]: '0x' is not a dial prefix"):
        assert needle in text, (needle, text)


def test_setup_moves_foreign_files_aside_and_prepares_directories():
    c = cluster()
    script = fs.setup_script(RenderContext(c, c.nodes[0], masked_secrets()))
    out = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Managed by high-cc-pbx" in script and "/var/backups/hapbx-freeswitch-dist" in script
    assert f"install -d -o root -g {fs.RECORDINGS_GROUP} -m 2770 {c.recordings.directory} {c.recordings.directory}/{c.nodes[0].name}" in script


# --- what FreeSWITCH really does (seen on a real 1.10.12, issue 17) -------------------------------

def test_every_lua_script_the_dialplan_runs_resolves_the_way_mod_lua_resolves_it():
    """mod_lua runs a bare name from FreeSWITCH's own scripts directory, never lua.conf's
    script-directory: a bare name here would run nothing in production."""
    for dialplan in (DIALPLAN, None):
        files = tree(cluster(dialplan=dialplan))
        text = files[f"{fs.CONF}/dialplan/hapbx.xml"].content
        runs = re.findall(r'application="lua" data="([^"]+)"', text)
        assert runs, "the dialplan runs Lua"
        for data in runs:
            assert fs.mod_lua_path(data) in files, data
        for path, f in files.items():
            for loaded in fs.lua_dofile_paths(f.content):
                assert loaded in files, (path, loaded)
    assert fs.mod_lua_path("hapbx_recording.lua queue 8000") == "/usr/share/freeswitch/scripts/hapbx_recording.lua"
    assert fs.mod_lua_path("/x/y.lua a b") == "/x/y.lua"


def test_json_cdr_posts_json_the_receiver_accepts():
    """disable-100-continue replaces mod_json_cdr's header list in 1.10 (Content-Type lost)."""
    text = tree(cluster())[f"{fs.CONF}/autoload_configs/json_cdr.conf.xml"].content
    params = dict(re.findall(r'<param name="([^"]+)" value="([^"]*)"/>', text))
    assert params["encode"] == "false" and "disable-100-continue" not in params


def test_calls_from_ip_trunks_are_named_by_source_address_and_carriers_see_the_trunks_caller_id():
    c = cluster()
    dialplan = tree(c)[f"{fs.CONF}/dialplan/hapbx.xml"].content
    inbound = dialplan[dialplan.index('<context name="hapbx-inbound">'):]
    # carrier-a is an address: known by it; carrier-b a name: known by its gateway only
    assert re.search(r'field="network_addr" expression="\^\(203\\\.0\\\.113\\\.5\)\$">\s*'
                     r'<action application="set" data="hapbx_trunk=carrier-a"/>', inbound)
    assert 'data="hapbx_trunk=${sip_gateway}"' in inbound and "sip_gateway_name" not in dialplan
    assert inbound.index("inbound-trunk-carrier-a") < inbound.index('name="inbound"')
    # no internal display name to a carrier: name = the trunk's callerIdName, else the number shown
    named = copy.deepcopy(DIALPLAN)
    named["trunks"][0]["callerIdName"] = "Example Ltd"
    text = tree(cluster(dialplan=named))[f"{fs.CONF}/dialplan/hapbx.xml"].content
    assert "[origination_caller_id_number=4420700000,origination_caller_id_name=Example Ltd]" in text
    with pytest.raises(ConfigError, match=r"dialplan.trunks\[0\].callerIdName"):
        named["trunks"][0]["callerIdName"] = "Evil]name,x=y"
        build(raw_config("prod", named))


def test_no_codec_without_a_module_and_no_deprecated_or_unconfigured_module():
    files = tree(cluster())
    modules = set(re.findall(r'<load module="([^"]+)"/>', files[f"{fs.CONF}/autoload_configs/modules.conf.xml"].content))
    assert "mod_db" not in modules and "mod_pgsql" not in modules   # nothing uses them; mod_db wanted a db.conf
    vars_ = files[f"{fs.CONF}/vars.xml"].content
    for key in ("global_codec_prefs", "outbound_codec_prefs"):
        codecs = re.search(rf"{key}=([^\"]+)", vars_).group(1).split(",")
        assert set(codecs) <= {"PCMU", "PCMA"}, codecs   # the core's own codecs; G722 needs a module
    for path, f in files.items():
        assert "rtp-timeout-sec" not in f.content and "rtp-hold-timeout-sec" not in f.content, path
    dialplan = files[f"{fs.CONF}/dialplan/hapbx.xml"].content
    assert dialplan.count(f'data="media_timeout={fs.MEDIA_TIMEOUT_MS}"') == 2   # both contexts
