"""The HA decisions as a table of named scenarios: one cycle of decide() from a state and what
the node observed, to the role, the actions and the state it leaves. Pure: no daemon, no clock.
The same decisions run against real daemons in tests/daemons/test_failover_*.py."""
from __future__ import annotations

from dataclasses import replace

import pytest

from hapbx_node.ha import decide as d
from hapbx_node.ha.settings import Settings

NOW = 1_000_000

BASE = Settings(node="pbx1", peer="pbx2", bin_dir="/x", run_dir="/x", lib_dir="/x", witness=True, check_vip=True,
                heartbeat=True, ttl_ms=3000, renew_ms=500, margin_ms=500, etcd_timeout_ms=800, hung_ms=3000,
                yield_ms=9000, grace_ms=12300, promote_giveup_ms=30000, rejoin_mode="auto", rejoin_backoff_ms=30000,
                sync_relax_ms=10000, stream_lost_ms=15000, sync_reply_max_ms=3000, no_witness_policy="",
                nw_timeout_ms=30000, fast_stop_ms=5000, sync_names='"pbx2"')
NO_WITNESS = replace(BASE, witness=False, sync_names="", no_witness_policy="manual-promotion")

#: a holder whose promote succeeded, renewing fine
LEADING = d.State(role=d.LEADER, hold=True, lease_id="abc", deadline=NOW + 2000, last_renew=NOW - 500,
                  holder="pbx1", vrrp="MASTER", writer_ok=True)
PRIMARY = dict(pg_running=True, pg_standby=False)
STANDBY = dict(pg_running=True, pg_standby=True)
FRESH_HB = dict(heartbeat=NOW - 100, vrrp_since=NOW - 60_000)


def obs(**kw) -> d.Obs:
    return d.Obs(now=NOW, **kw)


def kinds(actions) -> list[str]:
    """The actions that change something (Log and the holder's Beat left out: test_beat_* below)."""
    return [type(a).__name__ for a in actions if not isinstance(a, (d.Log, d.Beat))]


# name: (settings, state, observations, role, actions expected (in order, Log left out), state fields)
SCENARIOS = {
    # ---- taking the lease
    "nobody leads: the VRRP master takes the lease":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Holder("")),
         d.CANDIDATE, ["Acquire"], {"hold": False}),
    "nobody leads: the running primary takes it before keepalived ever ran (first deploy)":
        (BASE, d.State(), obs(vrrp="UNKNOWN", **PRIMARY, lease=d.Holder("")),
         d.CANDIDATE, ["Acquire"], {}),
    "nobody leads: a standby in BACKUP waits":
        (BASE, d.State(), obs(vrrp="BACKUP", **STANDBY, lease=d.Holder("")),
         d.FOLLOWER, [], {"hold": False}),
    "nobody leads: a MASTER without the VIP on its interface counts as BACKUP":
        (BASE, d.State(), obs(vrrp="MASTER", vip_present=False, **STANDBY, lease=d.Holder("")),
         d.FOLLOWER, [], {"vrrp": "BACKUP"}),
    "nobody leads: a hung keepalived's node may not take it":
        (BASE, d.State(), obs(vrrp="MASTER", heartbeat=NOW - 5000, vrrp_since=NOW - 60_000, **STANDBY,
                              lease=d.Holder("")),
         d.FOLLOWER, [], {"hung": True}),
    "nobody leads: no lease while the rejoin job runs":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, pg_running=False, rejoin_running=True, lease=d.Holder("")),
         d.REJOINING, [], {}),
    "the key names this node but the daemon restarted: adopt the lease":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Holder("pbx1")),
         d.FOLLOWER, ["Adopt"], {}),
    "lease granted: hold it and promote":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Acquired("abc", at=NOW - 20)),
         d.PROMOTING, ["StartPromote"], {"hold": True, "deadline": NOW - 20 + 3000 - 500, "lease_id": "abc"}),
    "lease adopted with the TTL the store reports":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Adopted("abc", at=NOW, ttl_s=2)),
         d.PROMOTING, ["StartPromote"], {"deadline": NOW + 2000 - 500}),
    "lease lost to the peer in the race":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.NotAcquired("pbx2")),
         d.FOLLOWER, ["Claim"], {"holder": "pbx2", "peer_leads": True}),
    # ---- holding it
    "renewed: the deadline moves to the renewal's start + TTL - margin":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW - 30, ttl_s=3)),
         d.LEADER, [], {"deadline": NOW - 30 + 2500, "last_renew": NOW - 30, "max_renew_gap": 470}),
    "renewal failed with time left: keep writing":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.RenewFailed(at=NOW - 800, error="timeout")),
         d.LEADER, [], {"hold": True, "deadline": NOW + 2000}),
    "renewal failed and the deadline passed: fence":
        (BASE, replace(LEADING, deadline=NOW - 1), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY,
                                                       lease=d.RenewFailed(at=NOW - 800, error="timeout")),
         d.FENCED, ["StopWrites"], {"hold": False, "writer_ok": False, "lease_id": "-", "last_fence": NOW}),
    "deadline reached before a renewal could be tried: fence on the clock":
        (BASE, replace(LEADING, deadline=NOW), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=None),
         d.FENCED, ["StopWrites"], {"hold": False}),
    "the store says the lease is gone: fence at once, time left or not":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.LeaseGone("lease not found")),
         d.FENCED, ["StopWrites"], {"hold": False}),
    "holder's keepalived FAULT: resign":
        (BASE, LEADING, obs(vrrp="FAULT", **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3)),
         d.FENCED, ["StopWrites"], {"hold": False, "holder": "?"}),
    "holder's keepalived hung: keeps the lease and the VIP the frozen keepalived holds (the peer yields)":
        (BASE, LEADING, obs(vrrp="MASTER", heartbeat=NOW - 4000, vrrp_since=NOW - 60_000, **PRIMARY,
                            lease=d.Renewed(at=NOW, ttl_s=3)),
         d.LEADER, [], {"hold": True, "hung": True}),
    "hung holder resigning (promote failing past PROMOTE_TIMEOUT): keepalived killed so the VIP goes too":
        (BASE, replace(LEADING, writer_ok=False, promote_fail_since=NOW - 31_000, last_promote_try=NOW - 2000),
         obs(vrrp="MASTER", heartbeat=NOW - 4000, vrrp_since=NOW - 60_000, **STANDBY, lease=d.Renewed(at=NOW, ttl_s=3)),
         d.FENCED, ["StopWrites", "KillKeepalived"], {"hold": False}),
    "hung holder losing the lease: fenced, keepalived killed so the VIP goes too":
        (BASE, LEADING, obs(vrrp="MASTER", heartbeat=NOW - 4000, vrrp_since=NOW - 60_000, **PRIMARY,
                            lease=d.LeaseGone("lease not found")),
         d.FENCED, ["StopWrites", "KillKeepalived"], {"hold": False}),
    "no witness: holder's keepalived hung: resign and kill it":
        (NO_WITNESS, replace(LEADING, deadline=NOW + 3_600_000), obs(vrrp="MASTER", heartbeat=NOW - 4000,
                                                                      vrrp_since=NOW - 60_000, **PRIMARY),
         d.FENCED, ["StopWrites", "KillKeepalived"], {"hold": False}),
    "holder BACKUP within the grace: keeps the lease":
        (BASE, replace(LEADING, not_master_since=NOW - 1000), obs(vrrp="BACKUP", **PRIMARY,
                                                                 lease=d.Renewed(at=NOW, ttl_s=3)),
         d.LEADER, [], {"hold": True}),
    "holder BACKUP past the grace (the peer holds the VIP): resign":
        (BASE, replace(LEADING, not_master_since=NOW - 12_301), obs(vrrp="BACKUP", **PRIMARY,
                                                                   lease=d.Renewed(at=NOW, ttl_s=3)),
         d.FENCED, ["StopWrites"], {"hold": False}),
    "writer's postgres crashed: restart it in place under the lease":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, pg_running=False, lease=d.Renewed(at=NOW, ttl_s=3)),
         d.PROMOTING, ["MarkPlannedRestart", "StartPromote"], {"writer_ok": False, "hold": True}),
    "writer's postgres down while its postmaster.pid lingers: restart in place, marked planned for check-local":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, pg_role="down", lease=d.Renewed(at=NOW, ttl_s=3)),
         d.PROMOTING, ["MarkPlannedRestart", "StartPromote"], {"writer_ok": False}),
    "writer's postgres found in recovery: promote again":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **STANDBY, pg_role="standby", lease=d.Renewed(at=NOW, ttl_s=3)),
         d.PROMOTING, ["StartPromote"], {"writer_ok": False}),
    "promote keeps failing past PROMOTE_TIMEOUT: resign":
        (BASE, replace(LEADING, writer_ok=False, promote_fail_since=NOW - 30_001),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Renewed(at=NOW, ttl_s=3)),
         d.FENCED, ["StopWrites"], {"hold": False, "promote_fail_since": 0}),
    "promote job done: the writer":
        (BASE, replace(LEADING, writer_ok=False), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, promote_exit=0,
                                                      lease=d.Renewed(at=NOW, ttl_s=3)),
         d.LEADER, ["ClearPlannedRestart"], {"writer_ok": True}),
    "maintenance: the holder keeps the lease and changes nothing":
        (BASE, replace(LEADING, writer_ok=False), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, maintenance=True,
                                                      lease=d.Renewed(at=NOW, ttl_s=3)),
         d.PROMOTING, [], {"hold": True}),
    # ---- synchronous replication (the holder only)
    "sync: the peer streams and the setting is empty: on once it has streamed sync_back_ms":
        (BASE, replace(LEADING, sync_back_since=NOW - BASE.sync_back_ms),
         obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
             sync=d.SyncFact(True, False, "", None)),
         d.LEADER, ["SyncOn"], {"sync_gone_since": 0}),
    "sync: the peer streams again after a relax: not on yet (a flapping link would block commits again)":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            sync=d.SyncFact(True, False, "", None)),
         d.LEADER, [], {"sync_gone_since": 0, "sync_back_since": NOW}),
    "sync: the peer gone again before sync_back_ms: the count starts over":
        (BASE, replace(LEADING, sync_back_since=NOW - 3000),
         obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
             sync=d.SyncFact(False, False, "", d.stale_mark("pbx2"))),
         d.LEADER, [], {"sync_back_since": 0}),
    "sync: the peer is synchronous again: the store may mark it promotable":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            sync=d.SyncFact(True, True, '"pbx2"', "relaxed:pbx2")),
         d.LEADER, ["MarkSyncOn"], {}),
    "sync: the peer just went: wait SYNC_RELAX_AFTER":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            sync=d.SyncFact(False, False, '"pbx2"', None)),
         d.LEADER, [], {"sync_gone_since": NOW}),
    "sync: the peer gone past SYNC_RELAX_AFTER: mark it stale, relax":
        (BASE, replace(LEADING, sync_gone_since=NOW - 10_001), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY,
                                                                  lease=d.Renewed(at=NOW, ttl_s=3),
                                                                  sync=d.SyncFact(False, False, '"pbx2"', None)),
         d.LEADER, ["SyncRelax"], {}),
    "sync: the peer is gone and commits go alone already: it is marked stale at once":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            sync=d.SyncFact(False, False, "", "on")),
         d.LEADER, ["SyncRelax"], {}),
    "sync: the peer gone, commits alone, already marked stale: nothing more":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            sync=d.SyncFact(False, False, "", "relaxed:pbx2")),
         d.LEADER, [], {}),
    "sync: a setting naming another node blocks every commit: relax at once":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            sync=d.SyncFact(False, False, '"old"', None)),
         d.LEADER, ["SyncRelax"], {}),
    # ---- following
    "follower: a local primary without the lease is fenced":
        (BASE, d.State(holder="pbx2", peer_leads=True), obs(vrrp="BACKUP", **PRIMARY, lease=d.Holder("pbx2")),
         d.FOLLOWER, ["StopWrites"], {"writer_ok": False}),
    "follower: a local Redis master follows the peer":
        (BASE, d.State(holder="pbx2", peer_leads=True), obs(vrrp="BACKUP", **STANDBY, redis_role="master",
                                                            lease=d.Holder("pbx2")),
         d.FOLLOWER, ["RedisDemote"], {}),
    "follower holding the VIP while the peer leads: yield after YIELD_AFTER":
        (BASE, d.State(holder="pbx2", peer_leads=True, peer_leads_since=NOW - 9001),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Holder("pbx2")),
         d.YIELDING, [], {"yield_vip": True}),
    "follower holding the VIP while the peer leads: not yet":
        (BASE, d.State(holder="pbx2", peer_leads=True, peer_leads_since=NOW - 8000),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Holder("pbx2")),
         d.FOLLOWER, [], {"yield_vip": False}),
    "VIP claimed while the peer leads (adverts stopped): the peer's beat is recorded":
        (BASE, d.State(holder="pbx2", peer_leads=True),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Holder("pbx2", "pbx2 ok 41")),
         d.FOLLOWER, ["Claim"], {"yield_vip": False, "claim_beat": "pbx2 ok 41", "peer_leads_since": NOW}),
    "holder: the peer claimed the VIP (read with the last beat): announce it from here for a few cycles":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            peer_claim="pbx2 5000"),
         d.LEADER, ["Announce"], {"peer_claim": "pbx2 5000", "announce_left": d.ANNOUNCE_CYCLES - 1}),
    "holder: its own claim from when it followed: no announcement":
        (BASE, LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=d.Renewed(at=NOW, ttl_s=3),
                            peer_claim="pbx1 4000"),
         d.LEADER, [], {"peer_claim": "pbx1 4000", "announce_left": 0}),
    "holder: a claim already seen: no announcement":
        (BASE, replace(LEADING, peer_claim="pbx2 5000"), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY,
                                                            lease=d.Renewed(at=NOW, ttl_s=3), peer_claim="pbx2 5000"),
         d.LEADER, [], {"announce_left": 0}),
    "VIP claimed, the peer's beat unchanged (it died; its lease runs out): keep the VIP":
        (BASE, d.State(holder="pbx2", peer_leads=True, peer_leads_since=NOW - 2500, claim_beat="pbx2 ok 41"),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Holder("pbx2", "pbx2 ok 41")),
         d.FOLLOWER, [], {"yield_vip": False}),
    "VIP claimed, the peer beat again (cut link, frozen keepalived): yield at once":
        (BASE, d.State(holder="pbx2", peer_leads=True, peer_leads_since=NOW - 300, claim_beat="pbx2 ok 41"),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Holder("pbx2", "pbx2 ok 42")),
         d.YIELDING, [], {"yield_vip": True, "yield_since": NOW}),
    "VIP claimed, the beat is another node's (a stale value): no yield on it":
        (BASE, d.State(holder="pbx2", peer_leads=True, peer_leads_since=NOW - 300, claim_beat="pbx2 ok 41"),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, lease=d.Holder("pbx2", "pbx1 ok 7")),
         d.FOLLOWER, [], {"yield_vip": False}),
    "VRRP master no more without yielding (adverts heard again): the next claim starts afresh":
        (BASE, d.State(holder="pbx2", peer_leads=True, peer_leads_since=NOW - 300, claim_beat="pbx2 ok 41"),
         obs(vrrp="BACKUP", **STANDBY, lease=d.Holder("pbx2", "pbx2 ok 43")),
         d.FOLLOWER, [], {"peer_leads_since": 0, "claim_beat": None}),
    "yielding: the leading peer answers again: the VIP follows VRRP":
        (BASE, d.State(holder="pbx2", peer_leads=True, yield_vip=True, peer_leads_since=NOW - 20_000,
                       yield_since=NOW - 20_000),
         obs(vrrp="FAULT", **STANDBY, lease=d.Holder("pbx2", "pbx2 ok 90"), peer_pg_role="primary"),
         d.FOLLOWER, [], {"yield_vip": False, "peer_leads_since": 0}),
    "no witness: yielding, the leading peer answers again: the VIP follows VRRP at once (no beat to wait for)":
        (NO_WITNESS, d.State(nw_peer_role="primary", peer_leads=True, yield_vip=True, yield_since=NOW - 500),
         obs(vrrp="FAULT", **STANDBY, peer_pg_role="primary"),
         d.FOLLOWER, [], {"yield_vip": False}),
    "yielding: the peer answers but its beat says its keepalived is hung (no adverts): stay yielded":
        (BASE, d.State(holder="pbx2", peer_leads=True, yield_vip=True, peer_leads_since=NOW - 20_000,
                       yield_since=NOW - 20_000),
         obs(vrrp="FAULT", **STANDBY, lease=d.Holder("pbx2", "pbx2 hung 90"), peer_pg_role="primary"),
         d.YIELDING, [], {"yield_vip": True, "peer_hung": True}),
    "yielding: the peer answers, but before it could have noticed a hung keepalived: stay yielded":
        (BASE, d.State(holder="pbx2", peer_leads=True, yield_vip=True, peer_leads_since=NOW - 1000,
                       yield_since=NOW - 1000),
         obs(vrrp="FAULT", **STANDBY, lease=d.Holder("pbx2", "pbx2 ok 90"), peer_pg_role="primary"),
         d.YIELDING, [], {"yield_vip": True}),
    "yielding: nobody leads any more: the VIP may come back":
        (BASE, d.State(holder="pbx2", peer_leads=True, yield_vip=True),
         obs(vrrp="FAULT", **STANDBY, lease=d.Holder("")),
         d.FOLLOWER, [], {"yield_vip": False, "peer_leads": False}),
    # ---- a node that missed commits (the store's sync key: relaxed:<this node>)
    "stale: the VRRP master does not take the free lease; it gives the VIP to the peer":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, stale=True, peer_pg_role="down",
                              lease=d.Holder("")),
         d.YIELDING, [], {"hold": False, "stale": True, "yield_vip": True}),
    "stale, the peer unreachable: keeps the VIP (SIP from read-only data), does not take the lease":
        (BASE, d.State(), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, stale=True, peer_pg_role="unreachable",
                              lease=d.Holder("")),
         d.FOLLOWER, [], {"hold": False, "yield_vip": False}),
    "stale and yielding, the peer becomes unreachable: the VIP comes back":
        (BASE, d.State(stale=True, yield_vip=True), obs(vrrp="FAULT", **STANDBY, peer_pg_role="unreachable",
                                                        lease=d.Holder("")),
         d.FOLLOWER, [], {"yield_vip": False}),
    "stale: stays yielding (FAULT) while nobody leads":
        (BASE, d.State(stale=True, yield_vip=True), obs(vrrp="FAULT", **STANDBY, lease=d.Holder("")),
         d.YIELDING, [], {"yield_vip": True}),
    "stale no more (synchronous again, or accepted by the operator): the VIP may come back":
        (BASE, d.State(stale=True, yield_vip=True), obs(vrrp="FAULT", **STANDBY, stale=False, lease=d.Holder("")),
         d.FOLLOWER, [], {"yield_vip": False, "stale": False}),
    "stale: the lease came before the mark was read: resign at once, no promote":
        (BASE, replace(LEADING, writer_ok=False), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, stale=True,
                                                      lease=d.Renewed(at=NOW, ttl_s=3)),
         d.FENCED, ["StopWrites"], {"hold": False, "writer_ok": False}),
    "stale and the peer leads: an ordinary follower (the VIP follows VRRP)":
        (BASE, d.State(holder="pbx2", peer_leads=True, stale=True), obs(vrrp="BACKUP", **STANDBY,
                                                                       lease=d.Holder("pbx2")),
         d.FOLLOWER, [], {"yield_vip": False}),
    "store unreachable: who leads stays as last known":
        (BASE, d.State(holder="pbx2", peer_leads=True), obs(vrrp="BACKUP", **STANDBY, lease=d.Holder(None)),
         d.FOLLOWER, [], {"holder": "?", "peer_leads": True}),
    "follower whose postgres is down while the peer leads: rejoin":
        (BASE, d.State(holder="pbx2", peer_leads=True), obs(vrrp="BACKUP", pg_running=False, lease=d.Holder("pbx2")),
         d.REJOINING, ["StartRejoin"], {"last_rejoin": NOW}),
    "rejoin failed recently: wait the backoff":
        (BASE, d.State(holder="pbx2", peer_leads=True, last_rejoin=NOW - 1000, rejoin_backoff=30_000),
         obs(vrrp="BACKUP", pg_running=False, lease=d.Holder("pbx2")),
         d.FOLLOWER, [], {}),
    "standby not streaming past STREAM_LOST_AFTER: rejoin":
        (BASE, d.State(holder="pbx2", peer_leads=True, not_streaming_since=NOW - 15_001),
         obs(vrrp="BACKUP", **STANDBY, pg_streaming=False, lease=d.Holder("pbx2")),
         d.REJOINING, ["StartRejoin"], {}),
    "rejoin manual: never automatic":
        (replace(BASE, rejoin_mode="manual"), d.State(holder="pbx2", peer_leads=True),
         obs(vrrp="BACKUP", pg_running=False, lease=d.Holder("pbx2")),
         d.FOLLOWER, [], {}),
    "maintenance: no rejoin":
        (BASE, d.State(holder="pbx2", peer_leads=True), obs(vrrp="BACKUP", pg_running=False, maintenance=True,
                                                            lease=d.Holder("pbx2")),
         d.MAINTENANCE, [], {}),
    # ---- nobody leads and local PostgreSQL is down (Kamailio down on both nodes at once: both FAULT)
    "nobody leads, local postgres down: wait READ_ONLY_AFTER_TTLS lease TTLs":
        (BASE, d.State(holder="", nobody_leads_since=NOW - 8999),
         obs(vrrp="FAULT", pg_running=False, lease=d.Holder("")),
         d.FOLLOWER, [], {"nobody_leads_since": NOW - 8999}),
    "nobody leads, local postgres down past READ_ONLY_AFTER_TTLS lease TTLs: start it read-only":
        (BASE, d.State(holder="", nobody_leads_since=NOW - 9000),
         obs(vrrp="FAULT", pg_running=False, lease=d.Holder("")),
         d.REJOINING, ["StartRejoin"], {"last_rejoin": NOW, "nobody_leads_since": 0}),
    "nobody leads, local postgres down: the wait starts now":
        (BASE, d.State(holder=""), obs(vrrp="FAULT", pg_running=False, lease=d.Holder("")),
         d.FOLLOWER, [], {"nobody_leads_since": NOW}),
    "who leads unknown (store unreachable): postgres stays down":
        (BASE, d.State(holder="", nobody_leads_since=NOW - 60_000),
         obs(vrrp="FAULT", pg_running=False, lease=d.Holder(None)),
         d.FOLLOWER, [], {"nobody_leads_since": 0}),
    "nobody leads, local postgres running: nothing to start":
        (BASE, d.State(holder="", nobody_leads_since=NOW - 60_000),
         obs(vrrp="FAULT", **STANDBY, lease=d.Holder("")),
         d.FOLLOWER, [], {"nobody_leads_since": 0}),
    "nobody leads, postgres down, maintenance: left to the operator":
        (BASE, d.State(holder="", nobody_leads_since=NOW - 60_000),
         obs(vrrp="FAULT", pg_running=False, maintenance=True, lease=d.Holder("")),
         d.MAINTENANCE, [], {"nobody_leads_since": 0}),
    # ---- without a witness
    "no witness: the VIP owner whose peer is a standby takes authority":
        (NO_WITNESS, d.State(), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, peer_pg_role="standby"),
         d.PROMOTING, ["StartPromote"], {"hold": True}),
    "no witness: the VIP owner whose peer is a writable primary does not promote":
        (NO_WITNESS, d.State(), obs(vrrp="MASTER", **FRESH_HB, **STANDBY, peer_pg_role="primary"),
         d.FOLLOWER, [], {"hold": False, "peer_leads": True}),
    "no witness: peer unreachable, manual promotion: wait for the operator":
        (NO_WITNESS, d.State(nw_lost_since=NOW - 60_000), obs(vrrp="MASTER", **FRESH_HB, **STANDBY,
                                                              peer_pg_role="unreachable"),
         d.FOLLOWER, [], {"hold": False}),
    "no witness: peer unreachable past the timeout, promote-after-timeout: promote":
        (replace(NO_WITNESS, no_witness_policy="promote-after-timeout"), d.State(nw_lost_since=NOW - 30_001),
         obs(vrrp="MASTER", **FRESH_HB, **STANDBY, peer_pg_role="unreachable"),
         d.PROMOTING, ["StartPromote"], {"hold": True, "peer_lost_ok": True}),
    "no witness: the operator's promote --force":
        (NO_WITNESS, d.State(), obs(vrrp="BACKUP", **STANDBY, force_authority=True),
         d.PROMOTING, ["ConsumeForce", "StartPromote"], {"hold": True, "peer_lost_ok": True}),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name):
    cfg, state, o, role, actions, fields = SCENARIOS[name]
    dec = d.decide(state, o, cfg)
    assert dec.role == role, dec.reason
    assert kinds(dec.actions) == actions, dec.actions
    for key, value in fields.items():
        assert getattr(dec.state, key) == value, key
    assert dec.reason                      # every cycle says why
    assert dec.state.role == dec.role


@pytest.mark.parametrize("name", ["writer's postgres crashed: restart it in place under the lease",
                                  "writer's postgres down while its postmaster.pid lingers: restart in place, marked planned for check-local"])
def test_a_crashed_writer_says_the_same_thing_whether_its_pid_file_lingers(name):
    """Operators (and the rig's test 13) grep one line for a restart in place, whichever way the
    server was found dead."""
    cfg, state, o, *_ = SCENARIOS[name]
    logs = [a.text for a in d.decide(state, o, cfg).actions if isinstance(a, d.Log)]
    assert any("restarting it in place" in t for t in logs), logs


def test_stop_writes_modes_say_what_each_fence_does():
    from hapbx_node.ha import writes
    assert set(writes.MODES) == {"lease", "resign", "follower", "stopped", "demote", "demote-fence"}
    # the urgent fence waits for nothing: immediate stop, the lease released in the background
    assert writes.MODES["lease"].postgres == "immediate" and writes.MODES["lease"].release == "background"
    assert writes.MODES["resign"].postgres == "fast" and writes.MODES["resign"].release == "wait"
    # every StopWrites decide() emits names a mode of the table
    modes = {a.mode for *_, (cfg, s, o, *_rest) in [(n, v) for n, v in SCENARIOS.items()]
             for a in d.decide(s, o, cfg).actions if isinstance(a, d.StopWrites)}
    assert modes and modes <= set(writes.MODES)


def test_decide_reads_no_clock_but_the_observation():
    """The same observations give the same decision whenever it runs: time is Obs.now (the boot
    clock), so a wall-clock step cannot move a deadline."""
    cfg, state, o, *_ = SCENARIOS["renewal failed with time left: keep writing"]
    assert d.decide(state, o, cfg) == d.decide(state, o, cfg)
    assert "wall" not in " ".join(f.name for f in d.Obs.__dataclass_fields__.values())


def test_settings_refuse_a_missing_key_instead_of_a_default():
    from hapbx_node.ha.settings import KEYS, SettingsError
    env = {k: "1" for k in KEYS}
    env.update(REJOIN_MODE="auto", LEASE_TTL="2", FENCE_MARGIN="0.5", HAPBX_NODE="pbx1", HAPBX_PEER="pbx2")
    Settings.from_env(env)
    for key in ("STREAM_LOST_AFTER", "SYNC_REPLY_MAX", "LEASE_TTL"):
        broken = {k: v for k, v in env.items() if k != key}
        with pytest.raises(SettingsError, match=key):
            Settings.from_env(broken)
    with pytest.raises(SettingsError, match="FENCE_MARGIN"):
        Settings.from_env({**env, "FENCE_MARGIN": "2"})


def test_beat_only_from_a_renewing_holder_whose_keepalived_is_master():
    """The beat is what makes a peer that claimed the VIP give it back: a holder within its lease
    whose keepalived is neither FAULT nor stopped beats (those resign), and a hung keepalived is said
    in it."""
    renewed = d.Renewed(at=NOW, ttl_s=3)
    beats = lambda s, o: [a for a in d.decide(s, o, BASE).actions if isinstance(a, d.Beat)]  # noqa: E731
    assert beats(LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=renewed)) == [d.Beat(hung=False)]
    assert beats(LEADING, obs(vrrp="MASTER", heartbeat=NOW - 4000, vrrp_since=NOW - 60_000, **PRIMARY,
                              lease=renewed)) == [d.Beat(hung=True)]
    # between renewals (the holder beats every BEAT_MS, renews every RENEW_INTERVAL) and after a failed
    # one it still beats while its lease runs: the store's transaction writes it only for the key's holder
    assert beats(LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY)) == [d.Beat(hung=False)]
    assert beats(LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY,
                              lease=d.RenewFailed(at=NOW, error="x"))) == [d.Beat(hung=False)]
    assert beats(replace(LEADING, deadline=NOW - 1), obs(vrrp="MASTER", **FRESH_HB, **PRIMARY)) == []
    # keepalived killed: no beat until its unit says STOP (the peer keeps the VIP it took)
    assert beats(LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=renewed, keepalived_alive=False)) == []
    assert beats(LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY, lease=renewed, keepalived_alive=True)) \
        == [d.Beat(hung=False)]
    # keepalived back as BACKUP (restarted) while the peer took the VIP: the beat makes the peer give it back
    assert beats(LEADING, obs(vrrp="BACKUP", **PRIMARY, lease=renewed)) == [d.Beat(hung=False)]
    assert beats(LEADING, obs(vrrp="FAULT", **PRIMARY, lease=renewed)) == []
    no_witness = [a for a in d.decide(LEADING, obs(vrrp="MASTER", **FRESH_HB, **PRIMARY), NO_WITNESS).actions
                  if isinstance(a, d.Beat)]
    assert no_witness == []
    assert d.beat_parts(d.beat_text("pbx2", True, 5)) == ("pbx2", True)
    assert d.beat_parts(d.beat_text("pbx2", False, 5)) == ("pbx2", False)
    assert d.beat_parts("") == ("", False) and d.beat_parts(None) == ("", False)


def test_the_read_only_start_asks_the_rejoin_job_for_it():
    """The action carries read_only, which the daemon turns into `rejoin --read-only`."""
    cfg, state, o, *_ = SCENARIOS["nobody leads, local postgres down past READ_ONLY_AFTER_TTLS lease TTLs: start it read-only"]
    (start,) = [a for a in d.decide(state, o, cfg).actions if isinstance(a, d.StartRejoin)]
    assert start.read_only
    cfg, state, o, *_ = SCENARIOS["follower whose postgres is down while the peer leads: rejoin"]
    (start,) = [a for a in d.decide(state, o, cfg).actions if isinstance(a, d.StartRejoin)]
    assert not start.read_only
