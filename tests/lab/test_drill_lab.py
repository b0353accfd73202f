"""One short failover drill on the suite's lab (the rest: `./hapbx lab drill`, reports/failover.md).

Drill 1 (keepalived stopped on the VIP owner), one run, with everything the full drills measure:
100 ms samplers on both nodes, a writer through the VIP, SIP OPTIONS/REGISTER probes, a phone
registered before the fault called during it, and the old owner back as a streaming standby.
Asserts what the drill must show whatever the host's load: SIP and writes back through the peer
while the fault holds (the outage the fault caused, read as reports/failover.md reads it; its
figures and stalls are printed), no two primaries, nothing lost, the phone reached, the old owner
back as a standby. Timing targets are `./hapbx lab drill`'s (reports/failover.md), not asserted
here. Then fails back (whatever the outcome) so later tests see the configured roles.
Every host's command lines are sampled meanwhile (tests/lab/argv_scan.py): the HA scripts' promote,
rejoin and fencing calls (psql, pg_rewind, redis-cli, etcdctl) put no credential on one.
"""
from __future__ import annotations

from lab import drills
from lab.context import LabContext
from tests.lab import argv_scan


def test_drill_1_keepalived_stopped_on_the_vip_owner(lab):
    ctx = LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None)
    secrets = argv_scan.generated_secrets(lab)
    try:
        drills.setup(ctx)
        with argv_scan.sampling(lab) as seen:
            rd = drills.run_one(ctx, 1, 1)
        a = drills.analyse(rd)
        print("\ndrill 1: " + ", ".join(f"{k} {a[k]}" for k in (
            "sip_fault_s", "sip_stalls", "sip_s", "register_s", "write_fault_s", "write_stalls", "write_s",
            "two_vip_longest_s", "two_primary_samples", "acked", "acked_lost", "phone_called", "rejoin_node",
            "rejoin_after_heal_s", "notes")))
        assert a["acked"] > 100, a                       # the writer did write through the VIP
        # the outage the fault caused (fault_outage, as reports/failover.md reads it) ended while the
        # fault still held: the peer took over, not the heal. How fast is the drill command's figure
        # (targets 1 s and 3 s on a quiet host), not this test's: under the whole suite's load the same
        # failover took 2.45 s and 2.83 s in two CI runs, 0.15 s alone.
        hold = drills.DRILLS[1].hold
        assert a["sip_fault_s"] < hold, a                 # SIP on the VIP answered by the peer
        assert a["write_fault_s"] < hold, a               # writes accepted by the promoted peer
        assert a["two_primary_samples"] == 0, a           # never two writable primaries
        assert a["two_vip_longest_s"] <= 1.0, a           # two VIP owners never longer than 1 s
        assert a["acked_lost"] == 0, a                    # no acknowledged row lost
        assert a["phone_called"], a                       # a phone registered before still receives a call
        assert a["rejoin_after_heal_s"] is not None and rd.rejoin_node == rd.failed, a   # back as streaming standby
        # the HA core's calls ran while sampled: the lease (etcdctl), the promote and rejoin (psql, pg_rewind)
        argv_scan.assert_no_secret(seen, secrets, programs=("etcdctl", "psql"))
    finally:
        try:
            drills.switch_to(ctx, lab.cluster.primary.name)   # later tests expect the configured roles
        finally:
            drills.cleanup(ctx)
