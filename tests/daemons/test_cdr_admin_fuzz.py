"""The admin API fuzzed from its own OpenAPI description (issue 21: no server error for any input).

The service runs as on a node (bench/devstack.py: PostgreSQL with the project's migrations, Redis
with the deployment's ACL, Debian's python3) on loopback; schemathesis loads the document the
service serves at /openapi.json and sends every operation data that fits the schema and data that
does not (schemathesis' positive and negative modes), with the bearer token and with none or a
junk one. Every answer must be no 5xx, a status the operation documents, the content type it
documents and a body that matches the documented schema. Deterministic (derandomize, a fixed
seed) and bounded (examples per operation, a deadline per example), so CI runs the same cases
in well under two minutes on two cores.

The inputs found by hand (a non-ASCII bearer token, to=0001-01-01, a NUL in display_name, deeply
nested settings) are explicit cases in test_cdr_admin.py.
"""
from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as hst
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.control import SkipTest
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                               status_code_conformance)

from bench.devstack import ADMIN_TOKEN
from tests.daemons import cdr_stack

pytestmark = [
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server"),
    pytest.mark.skipif(not os.path.exists("/usr/lib/postgresql"), reason="needs PostgreSQL server binaries"),
    pytest.mark.timeout(150),
]
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
#: per example (one request); a request that hangs is a failure, not a slow run
REQUEST_TIMEOUT = 10
#: bounded and repeatable: the same cases on every run
FUZZ = settings(max_examples=25, deadline=timedelta(seconds=REQUEST_TIMEOUT), derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def st():
    yield from cdr_stack.started("admin")


@pytest.fixture(scope="module")
def admin_schema(st):
    """The service's own description (/openapi.json): {generation mode: (schema, its operations)}
    (a schema each: with negative alone, an operation that has nothing to negate says so)."""
    out = {}
    for mode in GenerationMode:
        config = schemathesis.Config.from_dict({"seed": 21, "generation": {"mode": mode.value, "deterministic": True}})
        schema = schemathesis.openapi.from_url(f"{st.admin_url}/openapi.json", config=config, timeout=10)
        out[mode] = schema, [result.ok() for result in schema.get_all_operations()]
    return out


def test_the_served_description_is_valid_openapi_3(admin_schema):
    schema, operations = admin_schema[GenerationMode.POSITIVE]
    schema.validate()   # against the OpenAPI 3.0 meta-schema; raises what is wrong
    assert schema.raw_schema["openapi"].startswith("3.0")
    # every route of the service (test_cdr_admin.py checks the list against the router)
    assert len(operations) >= 25, [f"{o.method.upper()} {o.path}" for o in operations]


def fuzz_every_operation(operations, mode: GenerationMode, check) -> tuple[list[str], Counter]:
    """Each operation's cases (mode) through ``check(case, extra) -> response``; fails listing
    every operation whose (shrunk) counterexample failed, not only the first. Returns the
    operations that have no case in this mode (nothing in them to negate) and the statuses seen."""
    failures, none, statuses = [], [], Counter()
    for operation in operations:
        label = f"{operation.method.upper()} {operation.path}"

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode), extra=JUNK_AUTH)
        def run(case, extra):
            statuses[check(case, extra).status_code] += 1
        try:
            run()
        except (SkipTest, Unsatisfiable):   # no value of this operation can be made invalid (schemathesis
            none.append(label)              # skips, or rejects every try)
        except (Exception, BaseExceptionGroup) as err:   # noqa: BLE001  (schemathesis' FailureGroup too)
            failures.append(f"{label} ({mode.value}): {err}")
    assert not failures, "\n\n".join(failures)
    return none, statuses


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_operation_answers_a_server_error_or_off_its_schema(st, admin_schema, mode):
    """With the token: data that fits each operation's schema (positive) and data that does not
    (negative: a wrong type, a value out of range, a missing field, an unknown one...)."""
    def check(case, _extra):
        return case.call_and_validate(base_url=st.admin_url, headers=AUTH, checks=CHECKS, timeout=REQUEST_TIMEOUT)
    operations = admin_schema[mode][1]
    none, statuses = fuzz_every_operation(operations, mode, check)
    print(f"{mode.value}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}, "
          f"nothing to negate in {none}")
    if mode is GenerationMode.POSITIVE:
        # the requests got through to the handlers: things were created and found
        assert none == [] and {200, 201} <= set(statuses), statuses
    else:
        # only the operations without a parameter or body that could be wrong (the open GETs)
        assert len(none) <= 3, none
        assert {400, 404, 422} <= set(statuses), statuses


#: the bytes a header's value may hold (RFC 9110 field-value: visible ASCII, blank, tab, obs-text);
#: a control character is a protocol error aiohttp's parser answers itself (400 text/plain)
FIELD_BYTES = bytes([9, *range(0x20, 0x7f), *range(0x80, 0x100)])
NOT_FIELD_BYTES = bytes(set(range(256)) - set(FIELD_BYTES))


def field_value(raw: bytes) -> bytes:
    # requests refuses a leading blank itself
    return raw.translate(None, NOT_FIELD_BYTES).lstrip(b" \t")


#: Authorization values that are no valid token: none at all, other schemes, other tokens, any
#: bytes (aiohttp keeps a byte that is no UTF-8 as a surrogate), any text as UTF-8
JUNK_AUTH = hst.one_of(
    hst.none(),
    hst.binary(max_size=60).map(field_value),
    hst.sampled_from(["Bearer", "Bearer ", "bearer " + ADMIN_TOKEN[:-1], f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN,
                      f"Bearer {ADMIN_TOKEN}x", f"Bearer {ADMIN_TOKEN.upper()}"]),
    hst.text(min_size=1, max_size=40).map(lambda t: field_value(("Bearer " + t).encode("utf-8", "surrogatepass"))),
)


def test_without_a_valid_token_every_api_operation_answers_401(st, admin_schema):
    """No token, another scheme, a wrong token, bytes that are no UTF-8: 401 under /api/ (and no
    5xx, the documented status and body), the open paths answer as with a token."""
    def check(case, auth):
        headers = {} if auth is None else {"Authorization": auth}
        response = case.call_and_validate(base_url=st.admin_url, headers=headers, checks=CHECKS,
                                          timeout=REQUEST_TIMEOUT)
        if case.operation.path.startswith("/api/"):
            assert response.status_code == 401, (auth, response.status_code, response.text[:200])
            assert "token" in response.json()["error"]
        else:
            assert response.status_code == 200, (case.operation.path, response.status_code)
        return response
    none, statuses = fuzz_every_operation(admin_schema[GenerationMode.POSITIVE][1], GenerationMode.POSITIVE, check)
    assert none == [] and set(statuses) == {200, 401}, statuses
