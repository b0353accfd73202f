"""The recordings retention's one decision (hapbx_node/recordings/plan.py): which retention applies,
from when it counts, what happens without a CDR, at the boundary and with a clock ahead."""
from __future__ import annotations

import pytest

from hapbx_node.recordings.plan import DAY, Call, Recording, decide, plan, retention_value

NOW = 1_750_000_000.0
U1 = "7d0f6a36-5d5c-4c52-9b7e-0a3c1f1e2d01"
U2 = "7d0f6a36-5d5c-4c52-9b7e-0a3c1f1e2d02"


def rec(uuid: str | None = U1, path: str | None = None, mtime: float = NOW, size: int = 100) -> Recording:
    return Recording(path or f"/rec/pbx1/2025/06/15/{uuid or 'odd'}.wav", uuid, size, mtime)


def call(uuid: str = U1, ended_days_ago: float = 10, recorded: int | None = None, current: int | None = None,
         scope: str | None = None, mode: str | None = "always", path: str | None = "") -> Call:
    return Call(uuid, f"/rec/pbx1/2025/06/15/{uuid}.wav" if path == "" else path, NOW - ended_days_ago * DAY,
                recorded, current, scope, mode)


def one(r: Recording, calls: list[Call], global_days: int | None = 90, now: float = NOW):
    (v,) = plan([r], calls, global_days, now)
    return v


def test_the_retention_recorded_with_the_call_wins_over_a_policy_changed_since():
    # recorded 30 days; the extension's policy was raised to 365 afterwards: 31 days old goes
    v = one(rec(), [call(ended_days_ago=31, recorded=30, current=365, scope="extension")])
    assert v.delete and v.retention_days == 30 and "recorded with the call" in v.reason
    # and the other way round: recorded 365, the policy lowered to 7 since: 31 days old stays
    v = one(rec(), [call(ended_days_ago=31, recorded=365, current=7, scope="extension")])
    assert not v.delete and v.retention_days == 365


def test_without_a_recorded_retention_the_policy_that_applies_now_decides():
    v = one(rec(), [call(ended_days_ago=8, current=7, scope="queue")], global_days=90)
    assert v.delete and v.retention_days == 7 and "queue policy now" in v.reason
    v = one(rec(), [call(ended_days_ago=6, current=7, scope="queue")], global_days=1)
    assert not v.delete and v.retention_days == 7


def test_without_any_policy_for_the_parties_the_global_policy_decides():
    v = one(rec(), [call(ended_days_ago=91)], global_days=90)
    assert v.delete and v.retention_days == 90 and "global policy" in v.reason
    assert not one(rec(), [call(ended_days_ago=89)], global_days=90).delete


def test_nothing_known_at_all_keeps_the_file():
    v = one(rec(), [call(ended_days_ago=5000)], global_days=None)
    assert not v.delete and v.retention_days is None and "no retention known" in v.reason


def test_a_file_without_a_cdr_is_kept_unless_older_than_the_global_retention_by_its_mtime():
    young = one(rec(mtime=NOW - 89 * DAY), [], global_days=90)
    assert not young.delete and "no CDR" in young.reason
    old = one(rec(mtime=NOW - 91 * DAY), [], global_days=90)
    assert old.delete and "no CDR" in old.reason and old.retention_days == 90
    # no global policy: no CDR means kept, however old
    ancient = one(rec(mtime=NOW - 4000 * DAY), [], global_days=None)
    assert not ancient.delete and "no global policy" in ancient.reason


def test_a_file_without_a_cdr_is_never_judged_by_another_calls_policy():
    # a CDR of another call (another UUID, another path) is not this file's
    v = one(rec(uuid=U1, mtime=NOW - 10 * DAY), [call(uuid=U2, ended_days_ago=400, recorded=1)], global_days=90)
    assert not v.delete and "no CDR" in v.reason


def test_age_counts_from_the_calls_end_not_from_the_files_mtime():
    # the file was touched yesterday (a copy, a restore), the call ended 40 days ago: 30 days recorded
    v = one(rec(mtime=NOW - DAY), [call(ended_days_ago=40, recorded=30)])
    assert v.delete and 39.9 < v.age_days < 40.1
    # the other way: an old mtime (rsync -t from the peer) but a recent call
    assert not one(rec(mtime=NOW - 400 * DAY), [call(ended_days_ago=2, recorded=30)]).delete


def test_on_demand_calls_follow_the_retention_recorded_with_them():
    v = one(rec(), [call(ended_days_ago=15, recorded=14, mode="on-demand", current=365, scope="extension")])
    assert v.delete and "on-demand" in v.reason
    assert not one(rec(), [call(ended_days_ago=13, recorded=14, mode="on-demand")]).delete


def test_a_never_policy_still_expires_a_recording_made_before_it_by_its_retention():
    # recorded under 'always' for 60 days, the policy is 'never' with 10 days now: the 60 days hold
    assert not one(rec(), [call(ended_days_ago=30, recorded=60, current=10, scope="extension")]).delete
    # nothing recorded with the call: the 'never' policy's own retention decides
    v = one(rec(), [call(ended_days_ago=11, current=10, scope="extension", mode=None)])
    assert v.delete and v.retention_days == 10


def test_the_boundary_keeps_the_file_one_second_later_it_goes():
    c = call(ended_days_ago=0, recorded=30)
    exactly = NOW + 30 * DAY
    assert not decide(rec(), c, 90, exactly).delete
    assert decide(rec(), c, 90, exactly + 1).delete
    nocdr = rec(mtime=NOW)
    assert not decide(nocdr, None, 30, exactly).delete and decide(nocdr, None, 30, exactly + 1).delete


def test_a_call_that_ends_in_the_future_is_kept():
    v = one(rec(), [call(ended_days_ago=-2, recorded=1)])
    assert not v.delete and "clock ahead" in v.reason and v.age_days < 0


def test_a_file_in_the_repository_is_matched_by_the_uuid_in_its_name():
    copy = rec(path=f"/repo/recordings/pbx1/2025/06/15/{U1}.wav")
    v = one(copy, [call(ended_days_ago=31, recorded=30)])
    assert v.delete and v.uuid == U1
    # a CDR with no recording path (the variable was lost) is found by UUID too, whatever the case
    assert one(rec(uuid=U1.upper(), path=f"/rec/pbx1/x/{U1.upper()}.wav"),
               [call(ended_days_ago=31, recorded=30, path=None)]).delete


def test_a_file_named_otherwise_is_matched_by_its_path():
    odd = rec(uuid=None, path="/rec/pbx1/2025/06/15/renamed.wav", mtime=NOW)
    c = Call(U1, "/rec/pbx1/2025/06/15/renamed.wav", NOW - 31 * DAY, 30, None)
    assert one(odd, [c]).delete


def test_the_plan_covers_every_file_sorted_with_sizes():
    files = [rec(uuid=U2, size=7), rec(uuid=U1, size=5)]
    out = plan(files, [call(U1, ended_days_ago=100, recorded=30), call(U2, ended_days_ago=1, recorded=30)], 90, NOW)
    assert [(v.uuid, v.delete, v.size) for v in out] == [(U1, True, 5), (U2, False, 7)]


@pytest.mark.parametrize("value,days", [("30", 30), (" 7 ", 7), (45, 45), ("0", None), ("3651", None), ("", None),
                                        (None, None), ("abc", None), ("-5", None), (True, None), ("1e3", None),
                                        ("3650", 3650), ("1", 1)])
def test_a_recorded_retention_is_only_a_valid_number_of_days(value, days):
    assert retention_value(value) == days


def test_an_invalid_recorded_value_falls_back_to_the_policy_now():
    c = call(ended_days_ago=8, recorded=retention_value("banana"), current=7, scope="extension")
    assert one(rec(), [c]).delete
