"""The admin API against the real thing: PostgreSQL with the project's migrations, Redis with
the deployment's ACL, the service under Debian's python3 (bench/devstack.py).

Token auth, every resource's CRUD with 4xx validation listing each bad field, SIP credentials
Kamailio's auth view serves at once (digest checked with the view's HA1), CDR search by range
and extension with paging, health/readiness with the node's roles (probed at most once a
second), an OpenAPI document that describes every route the service has, and a 4xx, never a
500, for any input (issue 21).
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid

import pytest

from bench import devstack
from tests.daemons import cdr_stack
from bench.devstack import ADMIN_TOKEN, SIP_DOMAIN, http

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(120),
]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def st():
    yield from cdr_stack.started("admin")


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
        # PostgreSQL is probed at most once a second (health.PROBE_TTL): the next probe sees it down
        devstack._wait(lambda: http("GET", f"{st.admin_url}/ready")[0] == 503, 5, "not ready")
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


# --- no server error for any input (issue 21): each of these was a 500 ---------------------------------

def admin_log_lines(st, text: str) -> int:
    return sum(text in line for line in st.admin.output().splitlines())


def test_a_token_of_any_bytes_is_a_401_and_refusals_are_logged_rate_limited(st):
    before = admin_log_lines(st, "refused a bad token")
    started = time.monotonic()
    # http.client sends a str header as Latin-1 (not UTF-8: aiohttp keeps the byte as a surrogate),
    # bytes as they are
    for token in ("Bearer t\u00f6k\u00e9n", b"Bearer t\xc3\xb6k\xc3\xa9n \xe2\x82\xac", b"Bearer \xff\xfe"):
        status, body = http("GET", f"{st.admin_url}/api/v1/extensions", headers={"Authorization": token})
        assert status == 401 and body == {"error": "bad token"}, (token, status, body)
    for _ in range(27):
        assert http("GET", f"{st.admin_url}/api/v1/extensions",
                    headers={"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"})[0] == 401
    elapsed = time.monotonic() - started
    logged = admin_log_lines(st, "refused a bad token") - before
    # 2 lines a second at most (common.RateLimitedLog), the rest counted in a summary line
    assert 1 <= logged <= 2 * (int(elapsed) + 2) < 30, (logged, elapsed)
    assert api(st, "GET", "/api/v1/extensions")[0] == 200


def test_cdr_search_with_times_the_api_cannot_use_is_a_422(st):
    for query, field in (("to=0001-01-01", "to"), ("to=0001-01-01T00:00:00%2B14:00", "to"),
                         ("from=0001-01-01T00:00:00Z&to=2025-01-01T00:00:00Z", "from"),
                         ("to=1969-12-31T23:59:59Z", "to")):
        status, body = api(st, "GET", f"/api/v1/cdrs?{query}")
        assert status == 422 and "before 1970-01-01" in body["fields"][field], (query, status, body)
    # the edges that are times: answered, empty
    for query in ("to=1970-01-01T00:00:00Z", "from=9999-12-30T00:00:00Z&to=9999-12-31T23:59:59-14:00"):
        status, body = api(st, "GET", f"/api/v1/cdrs?{query}")
        assert status == 200 and body["items"] == [], (query, status, body)
    # a cursor that is no next_cursor (a NUL where the UUID goes), a call UUID that is none
    bad = base64.urlsafe_b64encode(b"2025-01-01T00:00:00+00:00|\x00").decode()
    status, body = api(st, "GET", f"/api/v1/cdrs?cursor={bad}")
    assert status == 422 and "cursor" in body["fields"], body
    status, body = api(st, "GET", "/api/v1/cdrs/" + "-" * 36)
    assert status == 404 and body == {"error": "not found"}
    status, body = api(st, "GET", "/api/v1/recording-policies/%C2%B2")   # '²' is a digit to str.isdigit
    assert status == 404 and body == {"error": "not found"}


def nested(depth: int) -> str:
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def test_json_the_database_cannot_store_is_a_400(st, users):
    ext = '{"number": "4101", "type": "ivr", "display_name": %s, "settings": %s}'
    for display, settings, reason in (
            ('"Ann\\u0000"', "{}", "NUL character (\\u0000) in 'display_name'"),
            ('"Ann"', '{"x": "\\u0000"}', "NUL character (\\u0000) in 'settings.x'"),
            ('"Ann \\ud800"', "{}", "lone surrogate (\\ud800) in 'display_name'"),
            ('"Ann"', '{"x": NaN}', "NaN"), ('"Ann"', '{"x": 1e400}', "1e400"),
            ('"Ann"', nested(40), "nests deeper than 32 levels"),
            # far deeper than the interpreter's recursion limit (json's parser recurses)
            ('"Ann"', '{"a": ' + "[" * 30000 + "]" * 30000 + "}", "nests deeper than 32 levels")):
        status, body = api(st, "POST", "/api/v1/extensions", raw=(ext % (display, settings)).encode())
        assert status == 400 and reason in body["error"], (display, settings[:40], status, body)
        status, body = api(st, "PATCH", "/api/v1/extensions/2001",
                           raw=('{"display_name": %s, "settings": %s}' % (display, settings)).encode())
        assert status == 400 and reason in body["error"], (display, settings[:40], status, body)
    # every resource's body goes through the same parser
    for path, body in (("/api/v1/trunks", '{"name": "t1", "host": "h", "settings": {"k\\u0000": 1}}'),
                       ("/api/v1/routes/inbound",
                        '{"did": "+4930777", "extension": "2001", "description": "a\\u0000"}'),
                       ("/api/v1/recording-policies", '{"scope": "trunk", "trunk": "a\\u0000", "mode": "always"}')):
        status, answer = api(st, "POST", path, raw=body.encode())
        assert status == 400 and "NUL character" in answer["error"], (path, status, answer)
    # what the database stores still goes in: nesting up to the limit, an emoji (a surrogate pair)
    status, created = api(st, "POST", "/api/v1/extensions",
                          raw=(ext % ('"Zo\\ud83d\\ude00"', nested(31))).encode())
    assert status == 201 and created["display_name"] == "Zo\U0001F600", created
    assert json.dumps(created["settings"]) == nested(31).replace(":", ": ")
    assert api(st, "DELETE", "/api/v1/extensions/4101")[0] == 204


def redis_counters(st) -> tuple[int, int]:
    """(connections Redis accepted, LLEN calls) from one INFO (one redis-cli connection)."""
    info = dict(line.strip().partition(":")[::2] for line in st.redis.cli("INFO", "stats", "commandstats").splitlines())
    llen = dict(p.split("=") for p in info.get("cmdstat_llen", "calls=0").split(","))
    return int(info["total_connections_received"]), int(llen["calls"])


def test_health_and_ready_are_cheap_whatever_the_rate(st):
    """Open to anyone: a flood of /health and /ready probes PostgreSQL and Redis at most once a
    second, and asks Redis over the one connection the service keeps."""
    assert http("GET", f"{st.admin_url}/health")[0] == 200
    connections, llens = redis_counters(st)
    started = time.monotonic()
    for i in range(30):
        status, body = http("GET", f"{st.admin_url}/{'ready' if i % 2 else 'health'}")
        assert status == 200 and (body["roles"]["postgres"], body["roles"]["redis"]) == ("primary", "master"), body
    elapsed = time.monotonic() - started
    connections_after, llens_after = redis_counters(st)
    probes = (llens_after - llens) / 2   # two LLEN a probe
    assert probes <= int(elapsed) + 1, (probes, elapsed)
    assert connections_after - connections == 1, "redis-cli's own (this INFO): none of the service"
