"""The admin API: a JSON HTTP API on the VIP (aiohttp; PostgreSQL through psycopg2 in a small
thread pool), HTTPS on every address beyond loopback (HAPBX_HTTPS_CERT/KEY: common.http_sites),
plain HTTP on loopback. Token authentication (``Authorization: Bearer <token>``) on everything under
/api/; /health, /ready and /openapi.json are open (monitoring, load balancers, clients).

  /api/v1/extensions[/{number}]            unified extensions; users get SIP credentials (HA1
                                           only, computed here: the password never reaches the
                                           database), which Kamailio's auth view serves at once,
                                           and toll-fraud controls: class_of_service (internal <
                                           national < international < premium: a class dials its
                                           own and every lower one), max_calls (concurrent calls
                                           out) and calls_per_minute (call attempts); defaults
                                           national, 2, 10; Kamailio reads them at digest auth
  /api/v1/trunks[/{name}]                  carriers (targets of routes and trunk policies)
  /api/v1/recording-policies[/{id}]        DB-driven recording policies
  /api/v1/routes/inbound[/{id}]            DID -> extension
  /api/v1/routes/outbound[/{id}]           prefix -> trunk
  /api/v1/cdrs[/{call_uuid}]               CDR search by time range, extension, direction
  /api/v1/cdr/dead-letters                 records the worker could not store, with the reason
  /health  200 while the process runs: the node's roles (PostgreSQL, Redis, VIP, HA writer)
  /ready   200 when this node takes writes (PostgreSQL primary here), else 503

Errors: 400 malformed JSON or JSON the database cannot store (records.loads: NaN, a NUL, nesting
deeper than 32), 401 no/bad token, 404, 409 conflict (duplicate, still referenced),
413 body too large, 415 not JSON, 422 validation (every bad field listed), 503 this node is a
standby (use the VIP) or the database is unavailable.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import time

import psycopg2
from aiohttp import web

from ..common import RateLimitedLog, http_sites, listeners, setup_logging, until_stopped
from ..settings import AdminSettings
from . import cdrs, crud, extensions, health
from .api import Api, ApiError, Db, error, pg_error


def make_app(s: AdminSettings, log: logging.Logger | None = None) -> web.Application:
    """The application: bearer token on /api/, errors as JSON, then each resource's routes."""
    log = log or logging.getLogger("hapbx-admin")
    db = Db(s)
    token = s.token.encode()
    # a line per refused request would let anyone without a token flood the journal
    bad_token_log = RateLimitedLog(log, 2)

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path.startswith("/api/"):
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            if scheme.lower() != "bearer" or not given:
                return error(401, "missing bearer token")
            # aiohttp decodes a header as UTF-8 with surrogateescape: encode it back so, to the bytes
            # sent (a plain encode() raised on a byte that is no UTF-8: a 500)
            if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token):
                bad_token_log(logging.WARNING, "refused a bad token from %s", request.remote)
                return error(401, "bad token")
        try:
            return await handler(request)
        except ApiError as err:
            return error(err.status, err.message, err.fields)
        except psycopg2.Error as err:
            mapped = pg_error(err)
            if mapped.status >= 500:
                log.warning("%s %s: %s", request.method, request.path, str(err).strip()[:200])
            return error(mapped.status, mapped.message)
        except web.HTTPException as err:
            if err.status >= 400:
                return error(err.status, err.reason)
            raise

    async def stop(app):
        db.close()

    app = web.Application(client_max_size=s.max_body, middlewares=[middleware])
    app["db"] = db
    app.on_cleanup.append(stop)
    api = Api(s, db, log)
    # each resource's routes (in the order they have always been registered)
    for resource in (crud, health, extensions, cdrs):
        resource.add_routes(app, api)
    return app


async def serve(s: AdminSettings, log: logging.Logger) -> None:
    tls = s.https.context if s.https else None
    async with http_sites(make_app(s, log), s.listen, s.port, 5, tls):
        log.info("admin API on %s port %d", listeners(s.listen, tls), s.port)
        await until_stopped()


def main() -> int:
    log = setup_logging("hapbx-admin")
    s = AdminSettings.from_env()
    started = time.monotonic()
    asyncio.run(serve(s, log))
    log.info("stopped after %.0f s", time.monotonic() - started)
    return 0
