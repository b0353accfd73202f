"""The CDR pipeline's state, from the CDR worker's stats file (layout.CDR_STATS, format_stats).

The worker runs on the writer only and its runtime directory goes when it stops: no file here,
no hapbx_cdr_* series from this node (the writer's exporter gives them)."""
from __future__ import annotations

import time

from .. import layout
from . import files
from .exposition import Gauge


def gauges(path: str) -> list[Gauge]:
    age = Gauge("hapbx_cdr_stats_age_seconds", "Age of the CDR worker's stats (rewritten every second while it "
                "runs: a growing age means the worker is hung).")
    depth = Gauge("hapbx_cdr_queue_depth", "CDRs in Redis not yet in PostgreSQL (the queue and the worker's batch "
                  "in flight).")
    dead = Gauge("hapbx_cdr_dead_letters", "CDRs in the dead-letter list (refused for their data; "
                 "hapbx-cdr-deadletters list).")
    review = Gauge("hapbx_cdr_review", "Conflicting CDRs awaiting review in cdr.conflicts (a different record was "
                   "stored first under the same call UUID).")
    oldest = Gauge("hapbx_cdr_oldest_queued_age_seconds", "Age of the oldest CDR waiting in Redis (0: none).")
    last = Gauge("hapbx_cdr_last_ingest_timestamp_seconds", "Wall time the worker last stored a batch "
                 "(0: none since it started).")
    out = [age, depth, dead, review, oldest, last]
    found = files.read(path)
    if found is None:
        return out
    text, seconds = found
    age.set(round(seconds, 3))
    stats = layout.parse_status(text)
    queue, processing = files.number(stats, "queue"), files.number(stats, "processing")
    if queue is not None and processing is not None:
        depth.set(int(queue + processing))
    for gauge, key in ((dead, "dead"), (review, "review")):
        value = files.number(stats, key)
        if value is not None:
            gauge.set(int(value))
    at = files.number(stats, "oldest_queued_at")
    if at is not None:
        oldest.set(round(max(0.0, time.time() - at), 3) if at > 0 else 0)
    at = files.number(stats, "last_ingest_at")
    if at is not None:
        last.set(at)
    return out
