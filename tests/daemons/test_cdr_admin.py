"""The admin API against the real thing: PostgreSQL with the project's migrations, Redis with
the deployment's ACL, the service under Debian's python3 (bench/devstack.py).

Token auth, every resource's CRUD with 4xx validation listing each bad field, SIP credentials
Kamailio's auth view serves at once (digest checked with the view's HA1), CDR search by range
and extension with paging, health/readiness with the node's roles, and an OpenAPI document
that describes every route the service has.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from bench import devstack
from bench.devstack import ADMIN_TOKEN, SIP_DOMAIN, Stack, http

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(120),
]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def st():
    need = devstack.missing_packages()
    if need:
        from lab import hostdeps
        hostdeps.ensure(need, "the admin API tests")
    stack = Stack()
    try:
        stack.start_data()
        stack.start_admin()
        yield stack
    finally:
        stack.close()


def api(st, method: str, path: str, body=None, headers=None, raw: bytes | None = None):
    h = {**AUTH, "Content-Type": "application/json", **(headers or {})}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return http(method, st.admin_url + path, data, h)


def test_token_is_required_under_api_and_nowhere_else(st):
    for headers in ({}, {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"}, {"Authorization": ADMIN_TOKEN},
                    {"Authorization": f"Basic {ADMIN_TOKEN}"}):
        status, body = http("GET", f"{st.admin_url}/api/v1/extensions", headers=headers)
        assert status == 401 and "token" in body["error"], headers
    assert http("GET", f"{st.admin_url}/health")[0] == 200
    assert http("GET", f"{st.admin_url}/openapi.json")[0] == 200
    assert api(st, "GET", "/api/v1/extensions")[0] == 200


def subscriber(st, number: str) -> list[str]:
    out = st.pg.psql(f"SELECT username, domain, ha1, ha1b FROM kamailio.subscriber WHERE username = '{number}'",
                     user="postgres")
    return out.split("|") if out else []


def digest_ok(ha1: str, password_guess: str, user: str, realm: str) -> bool:
    """RFC 2617 digest (qop none) as Kamailio checks it with the stored HA1 (calculate_ha1 0)."""
    nonce, uri = "5f2a9c", f"sip:{realm}"
    ha2 = hashlib.md5(f"REGISTER:{uri}".encode()).hexdigest()
    client = hashlib.md5(f"{hashlib.md5(f'{user}:{realm}:{password_guess}'.encode()).hexdigest()}:{nonce}:{ha2}"
                         .encode()).hexdigest()
    server = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return client == server


def test_a_user_gets_sip_credentials_kamailio_can_use_at_once(st):
    status, ext = api(st, "POST", "/api/v1/extensions", {"number": "2101", "type": "user", "display_name": "Alice"})
    assert status == 201, ext
    password = ext.pop("sip_password")
    assert len(password) >= 20 and ext["sip"] == {"username": "2101", "domain": SIP_DOMAIN, "has_password": True}
    user, domain, ha1, ha1b = subscriber(st, "2101")
    assert (user, domain) == ("2101", SIP_DOMAIN)
    assert digest_ok(ha1, password, "2101", SIP_DOMAIN) and not digest_ok(ha1, password + "x", "2101", SIP_DOMAIN)
    assert ha1b == hashlib.md5(f"2101@{SIP_DOMAIN}:{SIP_DOMAIN}:{password}".encode()).hexdigest()
    # the password is never stored nor shown again
    assert password not in st.pg.psql("SELECT row_to_json(c)::text FROM pbx.sip_credentials c", user="postgres")
    assert "sip_password" not in api(st, "GET", "/api/v1/extensions/2101")[1]
    # disabled: gone from the auth view at once; enabled again: back
    assert api(st, "PATCH", "/api/v1/extensions/2101", {"enabled": False})[1]["enabled"] is False
    assert subscriber(st, "2101") == []
    assert api(st, "PATCH", "/api/v1/extensions/2101", {"enabled": True})[0] == 200
    assert subscriber(st, "2101")[2] == ha1
    # a new password replaces the hashes
    status, _ = api(st, "PATCH", "/api/v1/extensions/2101", {"sip_password": "correct horse battery"})
    assert status == 200 and digest_ok(subscriber(st, "2101")[2], "correct horse battery", "2101", SIP_DOMAIN)
    # a chosen password on create
    status, ext = api(st, "POST", "/api/v1/extensions", {"number": "2102", "type": "user", "display_name": "Bob",
                                                         "sip_password": "bob-secret-passw0rd"})
    assert status == 201 and "sip_password" not in ext
    assert digest_ok(subscriber(st, "2102")[2], "bob-secret-passw0rd", "2102", SIP_DOMAIN)


def test_every_extension_type_create_list_change_delete(st):
    types = {"3001": "queue", "3002": "ivr", "3003": "conference", "3004": "voicemail", "3005": "ring_group"}
    for number, typ in types.items():
        status, ext = api(st, "POST", "/api/v1/extensions", {"number": number, "type": typ,
                                                             "display_name": f"{typ} {number}"})
        assert status == 201 and ext["type"] == typ and "sip" not in ext and "sip_password" not in ext
    status, page = api(st, "GET", "/api/v1/extensions?type=queue")
    assert status == 200 and [e["number"] for e in page["items"]] == ["3001"] and page["total"] == 1
    status, ext = api(st, "PATCH", "/api/v1/extensions/3001",
                      {"display_name": "Support", "settings": {"strategy": "round-robin", "max_wait_seconds": 60}})
    assert status == 200 and ext["settings"]["strategy"] == "round-robin" and ext["display_name"] == "Support"
    status, body = api(st, "PATCH", "/api/v1/extensions/3001", {"settings": {"strategy": "loudest-first"}})
    assert status == 422 and "extensions_settings_valid" in body["error"]
    status, body = api(st, "PATCH", "/api/v1/extensions/3001", {"sip_password": "a-long-enough-pass"})
    assert status == 422 and "only user extensions" in body["fields"]["sip_password"]
    assert api(st, "DELETE", "/api/v1/extensions/3005")[0] == 204
    assert api(st, "GET", "/api/v1/extensions/3005")[0] == 404
    assert api(st, "DELETE", "/api/v1/extensions/3005")[0] == 404
    status, page = api(st, "GET", "/api/v1/extensions?enabled=true&limit=2&offset=1")
    assert status == 200 and len(page["items"]) == 2 and page["limit"] == 2


@pytest.fixture
def users(st):
    """Users 2001 and 2002, whatever ran before (the tests that need existing users; the
    credentials test makes its own)."""
    for number, name in (("2001", "Alice"), ("2002", "Bob")):
        status, body = api(st, "POST", "/api/v1/extensions", {"number": number, "type": "user", "display_name": name})
        assert status == 201 or (status == 409 and "already exists" in body["error"]), body
    return st


def test_input_is_validated_with_clear_4xx(st, users):
    status, body = api(st, "POST", "/api/v1/extensions",
                       {"number": "1", "type": "robot", "display_name": "  ", "enabled": "yes", "colour": "red"})
    assert status == 422
    assert set(body["fields"]) == {"number", "type", "display_name", "enabled", "colour"}, body
    assert "unknown field" in body["fields"]["colour"] and "must be a boolean" in body["fields"]["enabled"]
    status, body = api(st, "POST", "/api/v1/extensions", {"type": "user"})
    assert status == 422 and body["fields"] == {"number": "is required", "display_name": "is required"}
    assert api(st, "POST", "/api/v1/extensions", raw=b"{not json")[0] == 400
    assert api(st, "POST", "/api/v1/extensions", raw=b"[]")[0] == 422
    assert api(st, "POST", "/api/v1/extensions", raw=b"{}", headers={"Content-Type": "text/plain"})[0] == 415
    assert api(st, "POST", "/api/v1/extensions", raw=b'{"x": "' + b"a" * 70000 + b'"}')[0] == 413
    assert api(st, "PATCH", "/api/v1/extensions/2001", {})[0] == 422
    assert api(st, "GET", "/api/v1/extensions/not-a-number")[0] == 404
    assert api(st, "GET", "/api/v1/extensions?limit=0")[0] == 422
    assert api(st, "GET", "/api/v1/extensions?type=robot")[0] == 422
    assert api(st, "POST", "/api/v1/extensions", {"number": "4001", "type": "user", "display_name": "X",
                                                  "sip_password": "short"})[0] == 422
    assert api(st, "POST", "/api/v1/extensions", {"number": "4002", "type": "ivr", "display_name": "X",
                                                  "sip_password": "long-enough-password"})[0] == 422
    status, body = api(st, "POST", "/api/v1/extensions", {"number": "2001", "type": "user", "display_name": "Dup"})
    assert status == 409 and "already exists" in body["error"]


def test_trunks_routes_and_recording_policies(st, users):
    assert api(st, "POST", "/api/v1/trunks", {"name": "carrier-a", "host": "sip.carrier-a.example", "port": 5080,
                                              "transport": "tcp"})[0] == 201
    assert api(st, "POST", "/api/v1/trunks", {"name": "Bad Name", "host": "x"})[0] == 422
    status, route = api(st, "POST", "/api/v1/routes/outbound", {"prefix": "0049", "trunk": "carrier-a",
                                                                "strip_digits": 2, "prepend": "+"})
    assert status == 201 and route["trunk"] == "carrier-a"
    assert api(st, "POST", "/api/v1/routes/outbound", {"prefix": "00", "trunk": "nope"})[1]["fields"] == \
        {"trunk": "no trunk nope"}
    assert api(st, "POST", "/api/v1/routes/outbound", {"prefix": "1", "trunk": "carrier-a", "strip_digits": 3})[0] == 422
    # the data tier's routing function sees what the API wrote
    assert st.pg.psql("SELECT trunk, dial FROM pbx.outbound_routes_for('004930123')") == "carrier-a|+4930123"
    status, inbound = api(st, "POST", "/api/v1/routes/inbound", {"did": "+4930555", "extension": "2001",
                                                                 "trunk": "carrier-a"})
    assert status == 201 and inbound["extension"] == "2001"
    assert api(st, "POST", "/api/v1/routes/inbound", {"did": "+4930556", "extension": "9999"})[1]["fields"] == \
        {"extension": "no extension 9999"}
    assert api(st, "DELETE", "/api/v1/extensions/2001")[0] == 409, "a route still points at it"
    assert api(st, "PATCH", f"/api/v1/routes/inbound/{inbound['id']}", {"enabled": False})[1]["enabled"] is False
    # recording policies: scope and target must agree
    assert api(st, "POST", "/api/v1/recording-policies", {"scope": "global", "mode": "never"})[0] == 201
    assert api(st, "POST", "/api/v1/recording-policies", {"scope": "global", "mode": "always"})[0] == 409
    assert api(st, "POST", "/api/v1/recording-policies", {"scope": "queue", "extension": "2002",
                                                          "mode": "always"})[0] == 422
    assert api(st, "POST", "/api/v1/recording-policies", {"scope": "extension", "mode": "always"})[1]["fields"] == \
        {"extension": "is required with scope extension"}
    status, pol = api(st, "POST", "/api/v1/recording-policies", {"scope": "extension", "extension": "2002",
                                                                 "mode": "on-demand", "retention_days": 30})
    assert status == 201 and pol["extension"] == "2002" and pol["retention_days"] == 30
    assert api(st, "POST", "/api/v1/recording-policies", {"scope": "trunk", "trunk": "carrier-a", "mode": "always"})[0] == 201
    assert st.pg.psql("SELECT scope, mode FROM pbx.recording_policy_for('2002')") == "extension|on-demand"
    assert api(st, "PATCH", f"/api/v1/recording-policies/{pol['id']}", {"mode": "always"})[1]["mode"] == "always"
    assert api(st, "PATCH", f"/api/v1/recording-policies/{pol['id']}", {"scope": "global"})[0] == 422
    assert api(st, "GET", "/api/v1/recording-policies/999999")[0] == 404
    assert api(st, "GET", "/api/v1/recording-policies/abc")[0] == 404
    status, page = api(st, "GET", "/api/v1/recording-policies")
    assert status == 200 and page["total"] == 3
    assert api(st, "DELETE", "/api/v1/trunks/carrier-a")[0] == 409, "outbound routes use it"
    assert api(st, "DELETE", f"/api/v1/recording-policies/{pol['id']}")[0] == 204


def test_cdr_search_by_range_extension_and_pages(st):
    base = time.time() - 3 * 3600
    rows = []
    for i in range(25):
        caller, callee = ("5001", "5002") if i % 2 else ("5003", "5001")
        rows.append(f"cdr.ingest('{json.dumps(cdr_row(base + i * 60, caller, callee))}'::jsonb)")
    st.pg.psql("SELECT " + ", ".join(rows), user="postgres")
    frm = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base - 1))
    to = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(base + 3600))
    status, page = api(st, "GET", f"/api/v1/cdrs?from={frm}&to={to}&extension=5001&limit=10")
    assert status == 200 and len(page["items"]) == 10 and page["next_cursor"]
    seen = [r["call_uuid"] for r in page["items"]]
    while page["next_cursor"]:
        page = api(st, "GET", f"/api/v1/cdrs?from={frm}&to={to}&extension=5001&limit=10&cursor={page['next_cursor']}")[1]
        seen += [r["call_uuid"] for r in page["items"]]
    assert len(seen) == len(set(seen)) == 25, "5001 is in every call, each page continues the last"
    status, page = api(st, "GET", f"/api/v1/cdrs?from={frm}&to={to}&extension=5002")
    assert len(page["items"]) == 12
    starts = [r["start_time"] for r in page["items"]]
    assert starts == sorted(starts, reverse=True)
    one = page["items"][0]["call_uuid"]
    status, cdr = api(st, "GET", f"/api/v1/cdrs/{one}")
    assert status == 200 and cdr["raw"] == {"test": True}
    assert api(st, "GET", f"/api/v1/cdrs/{uuid.uuid4()}")[0] == 404
    for query, field in (("from=yesterday", "from"), (f"from={to}&to={frm}", "from"), ("limit=5000", "limit"),
                         ("from=2020-01-01T00:00:00Z&to=2024-01-01T00:00:00Z", "to"), ("direction=up", "direction"),
                         ("cursor=!!!", "cursor")):
        status, body = api(st, "GET", f"/api/v1/cdrs?{query}")
        assert status == 422 and field in body["fields"], (query, body)


def cdr_row(start: float, caller: str, callee: str) -> dict:
    t = lambda s: time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(s))  # noqa: E731
    return {"call_uuid": str(uuid.uuid4()), "caller_number": caller, "callee_number": callee, "start_time": t(start),
            "answer_time": t(start + 2), "end_time": t(start + 30), "duration": 28, "billsec": 28,
            "hangup_cause": "NORMAL_CLEARING", "node": "pbx1", "raw": {"test": True}}


def test_health_reports_roles_and_readiness_follows_postgres(st):
    status, health = http("GET", f"{st.admin_url}/health")
    assert status == 200 and health["node"] == "pbx1"
    roles = health["roles"]
    assert (roles["postgres"], roles["redis"], roles["vip"]) == ("primary", "master", True)
    assert roles["cdr_queue"] == 0 and roles["cdr_dead_letters"] == 0 and roles["ha"] is None
    with open(os.path.join(st.base, "ha-status"), "w") as fh:
        fh.write("node=pbx1\nhold=1\nholder=pbx1\nvrrp=MASTER\nwriter=1\n")
    assert http("GET", f"{st.admin_url}/health")[1]["roles"]["ha"] == \
        {"writer": True, "lease_holder": True, "holder": "pbx1", "vrrp": "MASTER"}
    assert http("GET", f"{st.admin_url}/ready")[0] == 200
    st.pg.stop("fast")
    try:
        status, body = http("GET", f"{st.admin_url}/ready")
        assert status == 503 and body["roles"]["postgres"] == "down"
        assert http("GET", f"{st.admin_url}/health")[0] == 200
        status, body = api(st, "GET", "/api/v1/extensions")
        assert status == 503 and body["error"] == "database unavailable"
    finally:
        st.pg.start()
    devstack._wait(lambda: http("GET", f"{st.admin_url}/ready")[0] == 200, 10, "ready again")


def test_writes_on_a_read_only_database_say_use_the_vip(st):
    st.pg.psql("ALTER ROLE pbx_admin SET default_transaction_read_only = on")
    try:
        st.admin.stop()
        st.start_admin()   # new sessions pick the role setting up
        status, body = api(st, "POST", "/api/v1/extensions", {"number": "6001", "type": "ivr", "display_name": "M"})
        assert status == 503 and "standby" in body["error"]
        assert api(st, "GET", "/api/v1/extensions")[0] == 200, "reads still work (a standby serves them)"
    finally:
        st.pg.psql("ALTER ROLE pbx_admin RESET default_transaction_read_only")
        st.admin.stop()
        st.start_admin()


def test_openapi_describes_every_route(st):
    status, doc = http("GET", f"{st.admin_url}/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    # the routes the service has, from its aiohttp router (Debian's python3: aiohttp is not in the venv)
    code = ("import json; from hapbx_node.cdr import admin, settings; app = admin.make_app(settings.AdminSettings.from_env("
            "{'HAPBX_NODE': 'x', 'HAPBX_ADMIN_TOKEN': 't' * 20, 'HAPBX_PG_DSN': 'd', 'HAPBX_PG_PASSWORD': 'p', "
            "'HAPBX_REDIS_PASSWORD': 'r'})); print(json.dumps([[r.method, r.resource.canonical] "
            "for r in app.router.routes() if r.method != 'HEAD']))")
    out = subprocess.run([devstack.SYSTEM_PYTHON, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": devstack.NODE_PATH}, check=True)
    routes = {(m, p.replace("{key}", "{name}").replace("{uuid}", "{call_uuid}")) for m, p in json.loads(out.stdout)}
    assert routes == documented, routes ^ documented
    text = json.dumps(doc)
    for ref in {part.split('"')[0] for part in text.split('"$ref": "')[1:]}:
        kind, name = ref.split("/")[-2:]
        assert name in doc["components"][kind], ref
    assert doc["components"]["schemas"]["Extension"]["properties"]["sip_password"]["writeOnly"] is True
