"""hapbx-ha switchover's checks (hapbx_node/ha/switchover.refusal): a planned hand-over starts only
from a healthy leader to a synchronous, promotable standby; every other case is refused with the
reason, before anything is touched. The hand-over itself runs on the lab (lab/drills.switch_to
calls it; tests/lab/test_cdr_lab.py switches over and back)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from hapbx_node.ha.switchover import Facts, refusal

HEALTHY = Facts(node="pbx1", peer="pbx2", to=None, witness=True, hold=True, holder="pbx1", vrrp="MASTER", vip=True,
                postgres="primary", maintenance=False, peer_streaming=True, peer_sync=True, store_sync="on")


def test_a_healthy_leader_with_a_synchronous_standby_may_switch_over():
    assert refusal(HEALTHY) is None
    assert refusal(replace(HEALTHY, to="pbx2")) is None
    # without a witness there is no sync key and no synchronous replication to wait for
    assert refusal(replace(HEALTHY, witness=False, peer_sync=False, store_sync=None)) is None


@pytest.mark.parametrize("change, reason", [
    (dict(to="pbx9"), "not a node of this pair"),
    (dict(to="pbx1"), "run the switchover on the leader"),
    (dict(hold=False, holder="pbx2"), "run `hapbx-ha switchover` on pbx2"),
    (dict(hold=False, holder="?"), "on the node that leads"),
    (dict(maintenance=True), "maintenance is on"),
    (dict(vrrp="BACKUP"), "not a healthy leader"),
    (dict(vip=False), "VIP absent"),
    (dict(postgres="down"), "postgres down"),
    (dict(peer_streaming=None, peer_sync=None), "could not read pg_stat_replication"),
    (dict(peer_streaming=False), "pbx2 is not streaming"),
    (dict(peer_sync=False), "not a synchronous standby"),
    (dict(store_sync="relaxed:pbx2"), "sync=relaxed:pbx2"),
    (dict(store_sync=None), "sync=unreadable"),
])
def test_refused_with_the_reason(change, reason):
    why = refusal(replace(HEALTHY, **change))
    assert why and reason in why, why
