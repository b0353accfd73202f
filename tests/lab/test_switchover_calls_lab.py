"""Calls up through a planned switchover keep working (issue 24), on the suite's lab.

30 calls are set up through the VIP (phone -> queue -> dispatcher -> a media stand-in), the
operator's switchover (`hapbx-ha switchover --to <peer>`) moves the lead, and each call's BYE then
goes through the VIP to the node that leads after it, which did not see the INVITE: an in-dialog
request of a dialog shared over DMQ. The same leg as `./hapbx bench switchover`
(bench/switchover_calls.one_leg), smaller. It guards the regression reports/switchover-calls.md
found: the peer's copy of a dialog lacked the answerer's address, and every such BYE was refused
403 Not Our Dialog (0 of 1,200 kept).
"""
from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile

from bench import sip, switchover_calls
from lab import drills
from lab.context import LabContext

CALLS, RATE, HOLD_SECONDS = 30, 10, 45


def test_calls_set_up_before_a_switchover_end_through_the_new_leader(lab):
    ctx = LabContext.from_cluster(lab.spec, lab.cluster, log=lambda _: None)
    owner = drills.wait_healthy(ctx, 120, "before the calls")
    domain = ctx.psql(owner, "SELECT value FROM pbx.settings WHERE key = 'sip.domain';").strip() or ctx.vip
    users = [(str(sip.USER_BASE + i), secrets.token_hex(8)) for i in range(CALLS)]
    tmp = tempfile.mkdtemp(prefix="hapbx-test-switch-")
    args = argparse.Namespace(calls=CALLS, rate=RATE, hold_seconds=HOLD_SECONDS, during="switchover")
    try:
        inf = sip.users_file(tmp, users)
        sip.provision_ours(ctx, owner, users, domain)
        run = switchover_calls.one_leg(ctx, "1", switchover_calls.switch_to_the_other, args, inf, domain,
                                       log=print)
        print(f"\nswitchover with calls up: {run}")
        assert run.up_before_switch == CALLS, run            # every call was up when the lead moved
        assert run.owners and run.owners[0] != owner, run     # the lead did move: BYEs reach the other node
        assert run.note == "", run                            # the switchover ran, within the calls' hold
        assert (run.ok, run.failed) == (CALLS, 0), run        # every BYE answered 200
    finally:
        try:
            drills.switch_to(ctx, lab.cluster.primary.name)   # later tests expect the configured roles
            sip.cleanup_ours(ctx, drills.wait_healthy(ctx, 120, "cleanup"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
