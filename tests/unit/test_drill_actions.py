"""The logic of the failover drills 8-12 (lab/drills.py) that needs no lab: which etcd member leads,
the flapping link's schedule, and how the report checks their targets (lab/drill_report.py)."""
from __future__ import annotations

import json

from lab import drill_report, drills

ADDRESSES = {"pbx1": "10.77.0.11", "pbx2": "10.77.0.12", "witness": "10.77.0.13"}
IDS = {"pbx1": 90402727572709931, "pbx2": 17422139004073288675, "witness": 11584272933877895921}


def _status(members, leader):
    """`etcdctl endpoint status -w json` as etcd 3.4 prints it (member ids above 2**63 included)."""
    return json.dumps([{"Endpoint": f"https://{ADDRESSES[m]}:2379",
                        "Status": {"header": {"cluster_id": 8869424577673782697, "member_id": IDS[m],
                                              "revision": 4, "raft_term": 2},
                                   "version": "3.4.23", "leader": IDS[leader], "raftIndex": 694}}
                       for m in members])


def test_etcd_leader_is_the_member_whose_id_all_name():
    assert drills.parse_etcd_status(_status(["pbx1", "pbx2", "witness"], "witness"), ADDRESSES) == (
        "witness", ["pbx1", "pbx2", "witness"])
    assert drills.parse_etcd_status(_status(["pbx1", "pbx2", "witness"], "pbx2"), ADDRESSES)[0] == "pbx2"


def test_etcd_leader_unknown_when_members_disagree_or_it_did_not_answer():
    rows = json.loads(_status(["pbx1", "pbx2"], "pbx1"))
    rows[1]["Status"]["leader"] = IDS["pbx2"]
    assert drills.parse_etcd_status(json.dumps(rows), ADDRESSES) == (None, ["pbx1", "pbx2"])
    # the leader's own endpoint did not answer (killed): its id maps to no answering member
    assert drills.parse_etcd_status(_status(["pbx1", "pbx2"], "witness"), ADDRESSES) == (None, ["pbx1", "pbx2"])


def test_etcd_status_nothing_or_garbage_is_no_leader():
    assert drills.parse_etcd_status("", ADDRESSES) == (None, [])
    assert drills.parse_etcd_status("Error: context deadline exceeded", ADDRESSES) == (None, [])


def test_etcd_status_command_keeps_credentials_out_of_argv():
    cmd = drills.etcd_status_command()
    assert "/etc/hapbx/ha.env" in cmd and "/etc/hapbx/ha-secrets.env" in cmd and "set -a" in cmd
    assert "--user" not in cmd and "--password" not in cmd and "endpoint status -w json" in cmd


def test_flap_seed_is_the_drill_and_run():
    assert drills.flap_seed("d11r1-1765090000") == 11001
    assert drills.flap_seed("d11r12-1765090000") == 11012


def test_flap_schedule_repeats_for_a_seed_and_stays_in_bounds():
    a = drills.flap_schedule(11001, 60.0)
    assert a == drills.flap_schedule(11001, 60.0)
    assert a != drills.flap_schedule(11002, 60.0)
    assert a[0] == 0.0 and a[-1] < 60.0
    gaps = [y - x for x, y in zip(a, a[1:])]
    assert all(2.0 <= g <= 3.0 for g in gaps)
    # 60 s at 2-3 s a toggle: 20 to 30 toggles, the last one less than 3 s before the end
    assert 20 <= len(a) <= 31 and 60.0 - a[-1] <= 3.0


def test_new_drills_follow_the_seven_in_order():
    assert sorted(drills.DRILLS) == list(range(1, 13))
    assert drills.DRILLS[8].targets == {drills.NOTHING, drills.NO_LOSS}
    assert drills.DRILLS[10].targets >= {drills.SIP_1S}
    assert drills.DRILLS[11].hold == 60.0 and drills.DRILLS[11].fault.duration == 60.0
    assert drills.DRILLS[12].targets >= {drills.BACK_ALONE}


def _run(**kw):
    r = {"sip_s": 0.0, "write_s": 0.0, "final_owner": "pbx1", "failed": "pbx1", "vip_moved_s": None,
         "two_vip_longest_s": 0.0, "heal_at_s": 10.0, "notes": [], "rejoin_after_heal_s": 0.0}
    r.update(kw)
    return r


def test_nothing_interrupted_fails_on_any_stall_or_vip_move():
    assert drill_report._untouched(_run())
    assert not drill_report._untouched(_run(sip_s=0.4))
    assert not drill_report._untouched(_run(write_s=0.6))
    assert not drill_report._untouched(_run(final_owner="pbx2"))
    assert not drill_report._untouched(_run(vip_moved_s=1.2))
    assert not drill_report._untouched(_run(two_vip_longest_s=0.2))


def test_healthy_after_reads_the_unflap_note():
    r = _run(notes=["flapping seed 11001: 25 toggles", f"{drills.HEALTHY_NOTE} 4.2 s"])
    assert drill_report._healthy_after(r) == 4.2
    assert drill_report._healthy_after(_run(notes=["not healthy 60 s after the last restore: x"])) is None


def test_back_after_power_on_counts_from_the_heal():
    assert drill_report._after_power_on(_run(sip_s=31.5), "sip_s") == 21.5
    assert drill_report._after_power_on(_run(write_s=float("inf")), "write_s") is None
    assert drill_report._max_after_power_on([_run(sip_s=12.0), _run(sip_s=float("inf"))], "sip_s") == float("inf")
    assert drill_report._max_after_power_on([_run(sip_s=12.0), _run(sip_s=15.0)], "sip_s") == 5.0


def test_healthy_10s_met_with_a_rejoin_of_zero_and_not_without_the_note():
    ok = [_run(notes=[f"{drills.HEALTHY_NOTE} 2.5 s"], rejoin_after_heal_s=0.0)]
    missing = [_run(notes=["not healthy 60 s after the last restore: x"], rejoin_after_heal_s=0.0)]
    for rows in (ok, missing):
        rows[0].update(two_primary_samples=0, acked_lost=0, phone_called=True, sip_fault_s=0.0, write_fault_s=0.0)
    assert f"| {drills.HEALTHY_10S} | 11 | met" in "\n".join(drill_report._targets_table({11: ok}))
    assert f"| {drills.HEALTHY_10S} | 11 | **NOT met**" in "\n".join(drill_report._targets_table({11: missing}))


def test_targets_table_lists_the_new_targets():
    runs = {8: [_run()], 11: [_run(notes=[f"{drills.HEALTHY_NOTE} 12.5 s"], rejoin_after_heal_s=3.0)],
            12: [_run(sip_s=40.0, write_s=45.0)]}
    for rows in runs.values():
        for r in rows:
            r.update(two_primary_samples=0, acked_lost=0, phone_called=True, sip_fault_s=0.0, write_fault_s=0.0)
    text = "\n".join(drill_report._targets_table(runs))
    assert f"| {drills.NOTHING} | 8 | met" in text
    assert f"| {drills.HEALTHY_10S} | 11 | **NOT met**" in text
    assert (f"| {drills.BACK_ALONE} | 12 | met: SIP answers max 30.0s, writes accepted max 35.0s "
            "after power-on |") in text


def test_the_fault_outage_is_the_longest_interruption_before_heal_plus_5_s():
    # OPTIONS every 0.1 s from t0 = 100: down 0.0-0.8 s (the failover), one slow answer at 2.0-2.45 s,
    # and a refusal at heal + 6 s (rejoin) that is not the fault's
    recs = []
    for i in range(100):
        sent = 100.0 + i * 0.1
        ok = not i < 8 and i != 80
        done = sent + (0.45 if i == 20 else 0.01)
        recs.append((sent, done, ok))
    end, stalls = drills.fault_outage(recs, 100.0, 100.0 + 2.0, 0.35)   # heal at +2 s
    assert abs(end - 0.81) < 1e-6                                 # the failover's outage, not the stall after it
    assert [(round(s, 2), round(e, 2)) for s, e in stalls] == [(1.91, 2.45)]
    run_end, _ = drills.interruption_end(recs, 100.0, 0.35)
    assert abs(run_end - 8.11) < 1e-6                             # the whole-run reading sees the rejoin's refusal
