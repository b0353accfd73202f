"""stop_writes(mode): the one way local writes stop. What each mode does is a row of MODES.

    lease     the lease was lost or its deadline passed: urgent, waits for nothing. PostgreSQL
              immediate shutdown and Redis paused in parallel, then the lease is revoked (in the
              background: the store may be what is unreachable), writer-only units stopped.
    resign    orderly hand-over while the lease still runs: writer-only units stopped, PostgreSQL
              fast shutdown (the standby receives everything) bounded by what is left of the
              lease, Redis paused, then the lease revoked so the peer need not wait for expiry.
    follower  no lease, yet a local primary (or the writer-only units) runs: fenced like `lease`,
              Redis left to the follower duties (it follows the peer).
    stopped   the daemon stopped while holding (systemd ExecStopPost): PostgreSQL immediate
              shutdown and Redis paused; the authority file says nobody holds.
    demote    the operator's `hapbx-ha demote` on a node without the lease: writer-only units
              stopped first, PostgreSQL fast shutdown (PG_FAST_STOP_MS); Redis then follows the
              peer (the demote job). `demote-fence` (demote --fence): immediate shutdown.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from .clock import mono_ms


@dataclass(frozen=True)
class Mode:
    postgres: str          # immediate | fast (bounded by the lease when one is held)
    redis: bool            # pause Redis writes
    release: str           # none | wait | background: revoke the lease in the store
    owner_services: str    # none | first (before PostgreSQL, waited for) | after (in the background)
    kill_promote: bool     # a running promote job is stopped first
    level: str             # how it is logged


MODES = {
    "lease": Mode(postgres="immediate", redis=True, release="background", owner_services="after", kill_promote=True,
                  level="FENCE"),
    "resign": Mode(postgres="fast", redis=True, release="wait", owner_services="first", kill_promote=True,
                   level="WARN"),
    "follower": Mode(postgres="immediate", redis=False, release="none", owner_services="after", kill_promote=True,
                     level="FENCE"),
    "stopped": Mode(postgres="immediate", redis=True, release="none", owner_services="none", kill_promote=False,
                    level="FENCE"),
    "demote": Mode(postgres="fast", redis=False, release="none", owner_services="first", kill_promote=False,
                   level="INFO"),
    "demote-fence": Mode(postgres="immediate", redis=False, release="none", owner_services="first",
                         kill_promote=False, level="WARN"),
}

#: a resigning primary's fast stop ends this long before the lease deadline at the latest
RESIGN_SAFETY_MS = 200


def stop_writes(mode: str, why: str, *, pg, redis, store=None, owners=None, promote=None, log,
                lease_id: str = "-", deadline: int = 0, fast_stop_ms: int = 5000, release_timeout_ms: int = 1000) -> int:
    """Stops the local writes as MODES[mode] says; returns how long it took (ms)."""
    m = MODES[mode]
    t0 = mono_ms()
    log(m.level, f"{why}: stopping local writes ({mode})")
    if m.kill_promote and promote is not None:
        promote.kill()
    if m.owner_services == "first" and owners is not None:
        owners.stop(log, background=(mode == "resign"))    # the resigning holder must not wait for them
    if m.postgres == "fast" and pg.running() and not pg.standby_configured():
        left = min(deadline - mono_ms() - RESIGN_SAFETY_MS, fast_stop_ms) if deadline else fast_stop_ms
        pg_ok = pg.stop_fast(left) if left > 100 else pg.fence()
        redis_ok = redis.fence() if m.redis else True
    else:
        # immediate: PostgreSQL and Redis at the same time (the Redis call is a subprocess)
        result = {}
        t = None
        if m.redis:
            t = threading.Thread(target=lambda: result.setdefault("redis", redis.fence()))
            t.start()
        pg_ok = pg.fence()
        if t is not None:
            t.join(10)
        redis_ok = result.get("redis", not m.redis)
    if not pg_ok:
        log("ERROR", "postgres fence failed")
    if not redis_ok:
        log("ERROR", "redis fence failed")
    took = mono_ms() - t0
    log(m.level, f"local writes stopped in {took}ms")
    if m.release != "none" and store is not None and lease_id != "-":
        if m.release == "wait":
            if store.revoke(lease_id, release_timeout_ms):
                log("INFO", f"released the leader lease {lease_id}")
        else:
            threading.Thread(target=lambda: store.revoke(lease_id, release_timeout_ms) and
                             log("INFO", f"released the leader lease {lease_id}"), daemon=True).start()
    if m.owner_services == "after" and owners is not None:
        owners.stop(log)
    return took
