"""The retention decision, pure: recordings + the facts of their calls + now -> keep or delete, why.

A file is matched to its call by the CDR's recording_path, else by the call UUID its name carries
(<uuid>.wav: a copy in the repository has another path, the same name). Its retention:
  1. the days recorded with the call (hapbx_recording_retention_days, set by hapbx_recording.lua
     from the policy that decided the call's recording): a policy changed later changes nothing;
  2. else (a call from before that variable) the policy that applies to its parties now;
  3. else the global policy.
Its age counts from the call's end. A file with no CDR at all (the CDR lost or still queued) is
kept unless older than the global policy's retention counted from its mtime. Nothing known at all:
kept. A file is deleted only when strictly older than its retention (at the boundary it stays).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

DAY = 86400
#: pbx.recording_policies.retention_days' range (004_policies.sql)
MIN_DAYS, MAX_DAYS = 1, 3650


@dataclass(frozen=True)
class Recording:
    path: str
    uuid: str | None        # from the file name; None when the name is no call UUID
    size: int
    mtime: float


@dataclass(frozen=True)
class Call:
    uuid: str
    recording_path: str | None
    end_time: float                 # epoch seconds
    recorded_days: int | None       # retention recorded with the call (CDR raw variables)
    current_days: int | None        # pbx.recording_policy_for(the call's parties), now
    current_scope: str | None = None
    mode: str | None = None         # hapbx_recording_mode at call time (for the log)


@dataclass(frozen=True)
class Verdict:
    path: str
    delete: bool
    reason: str
    uuid: str | None = None
    retention_days: int | None = None
    age_days: float = 0.0
    size: int = 0


def retention_value(value: object) -> int | None:
    """A retention as the CDR carries it (a string, maybe percent-encoded digits) -> days, or
    None when it is missing or no valid retention (the next source then decides)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        days = value
    elif isinstance(value, str) and value.strip().isdigit():
        days = int(value.strip())
    else:
        return None
    return days if MIN_DAYS <= days <= MAX_DAYS else None


def _index(calls: Iterable[Call]) -> tuple[dict[str, Call], dict[str, Call]]:
    by_path: dict[str, Call] = {}
    by_uuid: dict[str, Call] = {}
    for c in calls:
        if c.recording_path:
            by_path[c.recording_path] = c
        by_uuid[c.uuid.lower()] = c
    return by_path, by_uuid


def _retention(call: Call, global_days: int | None) -> tuple[int | None, str]:
    if call.recorded_days is not None:
        return call.recorded_days, "recorded with the call"
    if call.current_days is not None:
        return call.current_days, f"the {call.current_scope or 'matching'} policy now (none recorded with the call)"
    if global_days is not None:
        return global_days, "the global policy (none recorded with the call, no policy for its parties now)"
    return None, "no retention known (none recorded with the call, no policy now, no global policy)"


def decide(rec: Recording, call: Call | None, global_days: int | None, now: float) -> Verdict:
    """One file's verdict (see the module docstring)."""
    if call is None:
        age = (now - rec.mtime) / DAY
        base = dict(path=rec.path, uuid=rec.uuid, retention_days=global_days, age_days=age, size=rec.size)
        if global_days is None:
            return Verdict(delete=False, reason="no CDR and no global policy: kept", **base)
        if now - rec.mtime > global_days * DAY:
            return Verdict(delete=True, reason=f"no CDR; {age:.1f} days old by its mtime, beyond the global "
                           f"policy's {global_days} days", **base)
        return Verdict(delete=False, reason=f"no CDR; kept unless older than the global policy's {global_days} "
                       f"days by its mtime ({age:.1f} days)", **base)
    days, source = _retention(call, global_days)
    age = (now - call.end_time) / DAY
    base = dict(path=rec.path, uuid=call.uuid, retention_days=days, age_days=age, size=rec.size)
    mode = f", mode {call.mode}" if call.mode else ""
    if days is None:
        return Verdict(delete=False, reason=f"{source}: kept", **base)
    if age < 0:
        return Verdict(delete=False, reason=f"the call ends after now (a clock ahead?): kept; {days} days, "
                       f"{source}{mode}", **base)
    if now - call.end_time > days * DAY:
        return Verdict(delete=True, reason=f"{age:.1f} days since the call ended, beyond {days} days "
                       f"({source}{mode})", **base)
    return Verdict(delete=False, reason=f"{age:.1f} of {days} days since the call ended ({source}{mode})", **base)


def plan(files: Iterable[Recording], calls: Iterable[Call], global_days: int | None, now: float) -> list[Verdict]:
    """Every file's verdict, by path: matched to its call by recording_path, else by UUID."""
    by_path, by_uuid = _index(calls)
    out = []
    for rec in files:
        call = by_path.get(rec.path) or (by_uuid.get(rec.uuid.lower()) if rec.uuid else None)
        out.append(decide(rec, call, global_days, now))
    return sorted(out, key=lambda v: v.path)
