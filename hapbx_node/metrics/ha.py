"""The HA core's state, from the leader daemon's status file (layout.HA_STATUS, format_status)."""
from __future__ import annotations

import re

from .. import layout
from . import files
from .exposition import Gauge


#: the durations in a reason change every cycle ("fence in 2464ms"): one series per role and kind of
#: reason, not one per scrape
DURATION = re.compile(r"-?\b\d+ms\b")
REASON_MAX = 200


def reason_label(reason: str) -> str:
    return DURATION.sub("Nms", reason)[:REASON_MAX]


def gauges(path: str) -> list[Gauge]:
    age = Gauge("hapbx_ha_status_age_seconds", "Age of the HA core's status file (+Inf: none); the leader daemon "
                "rewrites it every renewal interval, so a growing age means the HA core is stopped or hung.")
    lease = Gauge("hapbx_lease_holder", "1 when this node holds the etcd leader lease (the HA core's status).")
    primary = Gauge("hapbx_postgres_primary", "1 when the HA core sees the local PostgreSQL as the writing primary "
                    "(status writer=1: lease held and primary confirmed).")
    role = Gauge("hapbx_ha_role_info", "The HA core's current role and the reason of its last decision.")
    since = Gauge("hapbx_ha_role_since_timestamp_seconds", "Wall time the HA core's current role began.")
    gap = Gauge("hapbx_ha_renew_max_gap_seconds", "Longest gap between lease renewals since the HA core started.")
    fence = Gauge("hapbx_ha_last_fence_timestamp_seconds", "Wall time of the HA core's last self-fencing (0: never).")
    out = [age, lease, primary, role, since, gap, fence]
    found = files.read(path)
    if found is None:
        age.set(float("inf"))
        return out
    text, seconds = found
    age.set(round(seconds, 3))
    status = layout.parse_status(text)
    for gauge, key in ((lease, "hold"), (primary, "writer")):
        if status.get(key) in ("0", "1"):
            gauge.set(int(status[key]))
    if status.get("role"):
        role.set(1, role=status["role"], reason=reason_label(status.get("reason", "")))
    for gauge, key in ((since, "role_since_ms"), (gap, "renew_max_gap_ms"), (fence, "last_fence_at_ms")):
        ms = files.number(status, key)
        if ms is not None and ms >= 0:
            gauge.set(ms / 1000)
    return out
