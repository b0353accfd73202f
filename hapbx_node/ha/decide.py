"""The HA decisions of one node as a pure state machine.

    decide(state, observations, settings) -> Decision(state, actions, role, reason)

No I/O, no clock: time is `Obs.now` (monotonic ms). The daemon (daemon.py) observes through the
drivers, calls decide() once per cycle, carries out the actions in order and publishes the role
and the reason. Everything that decides who may write is here, and tested as a table of named
scenarios and by property tests that run two nodes against a simulated lease store
(tests/unit/test_ha_decide.py, test_ha_properties.py).

The lease (with a witness): the node that holds the leader key may write, and only until
`deadline` = start of its last successful renewal + TTL - margin; at that instant, renewed or not,
it stops writing (stop_writes "lease"), before the key can expire in the store and the peer take
it. Without a witness authority follows the VIP and the no-witness policy.

The beat (with a witness): the holder also writes a beat to the store every daemon.BEAT_MS; a node
whose keepalived claims the VIP while the peer leads gives it back when that beat changes after
its claim (the peer is alive: a cut link, a frozen keepalived) and keeps it when it does not (the
peer is dead: its lease will expire). See _beat and _master_while_peer_leads.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union

from .settings import Settings

# ---------------------------------------------------------------- named roles
LEADER = "leader"            # holds the lease, local PostgreSQL is the writer
PROMOTING = "promoting"      # holds the lease, promote job running or due
FENCED = "fenced"            # stopped its writes this cycle (lease lost or resigned)
FOLLOWER = "follower"        # the peer leads (or nobody yet); local servers follow
YIELDING = "yielding"        # follower holding the VIP while the peer leads: gives it up
REJOINING = "rejoining"      # follower whose PostgreSQL is being rejoined to the peer
CANDIDATE = "candidate"      # nobody leads and this node may take the lease
MAINTENANCE = "maintenance"  # operator paused automatic promote/rejoin/yield here
ROLES = (LEADER, PROMOTING, FENCED, FOLLOWER, YIELDING, REJOINING, CANDIDATE, MAINTENANCE)

VRRP_STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "UNKNOWN")


# ---------------------------------------------------------------- what the lease store said
@dataclass(frozen=True)
class Renewed:
    at: int            # monotonic ms when the keep-alive was sent
    ttl_s: int         # TTL the store reports after it


@dataclass(frozen=True)
class RenewFailed:
    at: int
    error: str


@dataclass(frozen=True)
class LeaseGone:
    error: str         # the store says the lease does not exist (expired, revoked)


@dataclass(frozen=True)
class Holder:
    name: Optional[str]   # "" nobody holds the key; None unreadable
    beat: Optional[str] = None   # the holder's last beat (beat_text) read with it; None not read


def beat_text(node: str, hung: bool, seq: int) -> str:
    """What a lease holder writes to the store's beat key after each renewal while its keepalived is
    MASTER: a peer that stops hearing its VRRP adverts and then sees the beat change knows the
    holder is alive and leading (a cut link, a frozen keepalived), not dead."""
    return f"{node} {'hung' if hung else 'ok'} {seq}"


def beat_parts(text: Optional[str]) -> tuple[str, bool]:
    """(node, keepalived hung) of a beat; ("", False) for none."""
    parts = (text or "").split()
    return (parts[0], len(parts) > 1 and parts[1] == "hung") if parts else ("", False)


@dataclass(frozen=True)
class Acquired:
    lease_id: str
    at: int            # monotonic ms when the grant was sent


@dataclass(frozen=True)
class NotAcquired:
    holder: Optional[str]
    error: str = ""


@dataclass(frozen=True)
class Adopted:
    lease_id: str
    at: int
    ttl_s: int


LeaseFact = Union[Renewed, RenewFailed, LeaseGone, Holder, Acquired, NotAcquired, Adopted, None]


def stale_mark(node: str) -> str:
    """The store's sync value that marks `node` stale: it missed commits and is never promoted on
    its data until it is synchronous again (or the operator accepts it)."""
    return f"relaxed:{node}"


@dataclass(frozen=True)
class SyncFact:
    """What the writer's PostgreSQL says about synchronous replication (one query)."""
    peer_streaming: bool   # streaming, caught up, replied within SYNC_REPLY_MAX
    peer_is_sync: bool     # sync_state sync/quorum
    current: str           # synchronous_standby_names now
    store_sync: Optional[str]   # the store's sync key ("on", "relaxed:<node>", ...); None unread


@dataclass(frozen=True)
class Obs:
    """One cycle's observations. A None fact was not looked at this cycle (the daemon samples
    some every second only, see daemon.SAMPLE_EVERY); decide() then leaves what depends on it."""
    now: int
    vrrp: str = "UNKNOWN"
    vrrp_since: int = 0
    vip_present: bool = True
    heartbeat: int = 0             # monotonic ms of keepalived's last check-local run; 0 none
    maintenance: bool = False
    force_authority: bool = False  # operator's promote --force (no witness)
    pg_running: bool = False       # a postmaster of the data directory is alive
    pg_standby: bool = False       # standby.signal present
    pg_role: Optional[str] = None          # primary | standby | down | unresponsive
    pg_streaming: Optional[bool] = None    # local standby's WAL receiver streams
    redis_role: Optional[str] = None       # master | slave | down
    peer_pg_role: Optional[str] = None     # primary | standby | down | unreachable | error
    lease: LeaseFact = None
    promote_running: bool = False
    promote_exit: Optional[int] = None     # the promote job ended with this code since last cycle
    rejoin_running: bool = False
    rejoin_exit: Optional[int] = None
    sync: Optional[SyncFact] = None
    stale: Optional[bool] = None           # the store's sync key names this node: it missed commits
    peer_claim: Optional[str] = None       # the store's claim key as the last beat read it; None not read
    keepalived_alive: Optional[bool] = None   # keepalived's main process exists; None not checked


@dataclass(frozen=True)
class State:
    role: str = FOLLOWER
    hold: bool = False
    lease_id: str = "-"
    deadline: int = 0              # monotonic ms: stop writing at this instant
    last_renew: int = 0            # monotonic ms of the last successful renewal (or grant)
    max_renew_gap: int = 0         # longest gap between two successful renewals while holding
    last_fence: int = 0
    holder: str = "?"              # who holds the key, as last read ("" nobody, "?" unknown)
    vrrp: str = "UNKNOWN"          # effective VRRP state (MASTER without the VIP counts as BACKUP)
    hung: bool = False
    writer_ok: bool = False        # the promote job succeeded under this lease
    peer_lost_ok: bool = False     # promote may proceed with the peer unreachable (no witness)
    peer_leads: bool = False
    peer_leads_since: int = 0
    not_master_since: int = 0
    yield_vip: bool = False
    promote_fail_since: int = 0
    last_promote_try: int = -10**9
    last_rejoin: int = -10**9
    rejoin_backoff: int = 0
    not_streaming_since: int = 0
    nw_lost_since: int = 0
    nobody_leads_since: int = 0    # follower: nobody holds the lease and local PostgreSQL is down, since
    nw_peer_role: str = "?"
    sync_gone_since: int = 0
    sync_back_since: int = 0       # holder: the peer streams (caught up, replying) since
    stale: bool = False            # as last read: this node missed commits and may not lead
    claim_beat: Optional[str] = None   # the leading peer's beat when this node became VRRP master
    yield_since: int = 0
    peer_hung: bool = False        # the leading peer's last beat says its keepalived is hung
    peer_claim: str = ""           # holder: the peer's last VIP claim seen (announce the VIP on a new one)
    announce_left: int = 0         # holder: cycles left that announce the VIP (gratuitous ARP)


# ---------------------------------------------------------------- actions
@dataclass(frozen=True)
class StopWrites:
    mode: str          # writes.MODES: lease | resign | follower
    why: str
    lease_id: str = "-"
    deadline: int = 0  # resign: the fast stop must end before this


@dataclass(frozen=True)
class Acquire:
    pass


@dataclass(frozen=True)
class Adopt:
    pass


@dataclass(frozen=True)
class StartPromote:
    peer_lost_ok: bool = False


@dataclass(frozen=True)
class StartRejoin:
    why: str
    read_only: bool = False   # nobody writes: start local PostgreSQL as a standby, follow once one does


@dataclass(frozen=True)
class RedisDemote:
    pass


@dataclass(frozen=True)
class KillKeepalived:
    pass


@dataclass(frozen=True)
class MarkPlannedRestart:
    service: str       # check-local ignores this daemon's absence while it restarts in place


@dataclass(frozen=True)
class ClearPlannedRestart:
    service: str


@dataclass(frozen=True)
class Beat:
    hung: bool         # this holder's keepalived is hung (it keeps leading: the peer stays yielded)


@dataclass(frozen=True)
class Claim:
    """This node's keepalived claimed the VIP while the peer leads: said in the store, so the
    holder announces the VIP again (its own keepalived may be frozen and send nothing)."""


@dataclass(frozen=True)
class Announce:
    """A gratuitous ARP for the VIP from this node (the holder, which has it)."""


#: cycles a holder announces the VIP after a peer's claim (the peer gives it back within one)
ANNOUNCE_CYCLES = 4


@dataclass(frozen=True)
class SyncOn:
    names: str


@dataclass(frozen=True)
class SyncRelax:
    peer: str          # marks the peer stale in the store first, then relaxes


@dataclass(frozen=True)
class MarkSyncOn:
    pass


@dataclass(frozen=True)
class ConsumeForce:
    pass


@dataclass(frozen=True)
class Log:
    level: str         # INFO | WARN | ERROR | FENCE
    text: str
    key: str = ""      # a repeated condition: logged at most every 5 s under this key


Action = Union[StopWrites, Beat, Claim, Announce, Acquire, Adopt, StartPromote, StartRejoin, RedisDemote, KillKeepalived,
               MarkPlannedRestart, ClearPlannedRestart, SyncOn, SyncRelax, MarkSyncOn, ConsumeForce, Log]


@dataclass(frozen=True)
class Decision:
    state: State
    actions: tuple
    role: str
    reason: str
    again: bool = False    # run the next cycle at once (a lease action's outcome is due)


# ---------------------------------------------------------------- helpers (pure)
def vrrp_view(o: Obs, s: Settings) -> tuple[str, bool]:
    """keepalived's state as it counts here, and whether keepalived is hung. MASTER without the
    VIP on the interface counts as BACKUP; MASTER whose check-local heartbeat is older than
    HUNG_AFTER (and has been MASTER that long) is hung."""
    state = o.vrrp if o.vrrp in VRRP_STATES else "UNKNOWN"
    hung = False
    if state == "MASTER":
        if s.check_vip and not o.vip_present:
            state = "BACKUP"
        elif s.heartbeat and o.heartbeat and o.now - o.heartbeat > s.hung_ms and o.now - o.vrrp_since > s.hung_ms:
            hung = True
    return state, hung


def pg_writable(o: Obs) -> bool:
    """A running server without standby.signal: a primary, or one that may come up as primary."""
    return o.pg_running and not o.pg_standby


def eligible(o: Obs, vrrp: str, hung: bool, stale: bool = False) -> bool:
    """May this node take the lease? The VRRP master may; so may the incumbent (the running
    primary) unless keepalived gave up here. Never a node that missed commits (stale): its
    promote would be refused, and holding the lease it would keep the peer from leading."""
    if hung or stale or o.rejoin_running or o.maintenance:
        return False
    if vrrp == "MASTER":
        return True
    return vrrp not in ("FAULT", "STOP") and pg_writable(o)


class _Cycle:
    """One decision: accumulates the state changes, the actions and the reason."""

    def __init__(self, s: State, o: Obs, cfg: Settings):
        self.s, self.o, self.cfg = s, o, cfg
        self.actions: list = []
        self.reason = ""
        self.again = False

    def set(self, **changes):
        self.s = replace(self.s, **changes)

    def do(self, *actions):
        self.actions.extend(actions)

    def log(self, level: str, text: str, key: str = ""):
        self.actions.append(Log(level, text, key))

    def because(self, text: str):
        if not self.reason:
            self.reason = text

    # -------------------------------------------------------- stopping writes
    def fence(self, why: str):
        """Lease lost or its deadline passed: writes stop now, then the key goes."""
        s = self.s
        self.do(StopWrites("lease", why, s.lease_id))
        self._drop_hung_vip()
        self.set(hold=False, writer_ok=False, lease_id="-", peer_lost_ok=False, last_fence=self.o.now)
        self.because(f"fenced: {why}")

    def resign(self, why: str):
        """Orderly hand-over while the lease still runs (fast stop within what is left of it)."""
        s = self.s
        self.do(StopWrites("resign", why, s.lease_id, s.deadline))
        self._drop_hung_vip()
        self.set(hold=False, writer_ok=False, lease_id="-", holder="?", peer_lost_ok=False)
        self.because(f"resigned: {why}")

    def _drop_hung_vip(self):
        """A hung keepalived cannot release the VIP this node gives up: killed, its unit drops it."""
        if self.s.hung:
            self.do(KillKeepalived())
            self.log("ERROR", f"keepalived is hung (no heartbeat for over {self.cfg.hung_ms}ms) and this node gives "
                              "up the lead: killing it (systemd restarts it and drops the VIP)")


def _jobs(c: _Cycle):
    o = c.o
    if o.promote_exit is not None:
        if o.promote_exit == 0:
            c.set(writer_ok=True, promote_fail_since=0)
            c.do(ClearPlannedRestart("postgres"))
            c.log("INFO", "promote job done: this node is the writer")
        else:
            c.set(promote_fail_since=c.s.promote_fail_since or o.now)
            c.log("WARN", f"promote job failed (exit {o.promote_exit})")
    if o.rejoin_exit is not None:
        if o.rejoin_exit == 0:
            c.set(rejoin_backoff=0, not_streaming_since=0)
        else:
            c.set(rejoin_backoff=c.cfg.rejoin_backoff_ms)
            c.log("WARN", f"rejoin job failed (exit {o.rejoin_exit}); next try in {c.cfg.rejoin_backoff_ms}ms")


def _lease_witness(c: _Cycle):
    s, o, cfg = c.s, c.o, c.cfg
    fact = o.lease
    if s.hold:
        if isinstance(fact, Renewed) and fact.ttl_s > 0:
            gap = fact.at - s.last_renew
            c.set(deadline=fact.at + fact.ttl_s * 1000 - cfg.margin_ms, last_renew=fact.at, holder=cfg.node,
                  max_renew_gap=max(s.max_renew_gap, gap))
        elif isinstance(fact, LeaseGone):
            c.fence(f"lease {s.lease_id} is gone in the store ({fact.error})")
            return
        elif isinstance(fact, RenewFailed):
            c.log("WARN", f"renewal failed: {fact.error}; fence in {s.deadline - o.now}ms", key="renew")
        # renewed or not: the deadline is the clock's, checked every cycle
        if o.now >= c.s.deadline:
            c.fence(f"lease deadline passed without a renewal (last ok {o.now - c.s.last_renew}ms ago)")
        return
    if isinstance(fact, (Acquired, Adopted)):
        ttl = cfg.ttl_ms if isinstance(fact, Acquired) else fact.ttl_s * 1000
        c.set(hold=True, lease_id=fact.lease_id, deadline=fact.at + ttl - cfg.margin_ms, last_renew=fact.at,
              holder=cfg.node, max_renew_gap=0, not_master_since=0)
        if isinstance(fact, Acquired):
            c.log("INFO", f"acquired the leader lease {fact.lease_id} (vrrp {s.vrrp})")
        else:
            c.log("INFO", f"adopted this node's leader lease {fact.lease_id}")
        if o.now >= c.s.deadline:
            c.fence("lease deadline passed before it could be used")
        return
    if isinstance(fact, NotAcquired):
        if fact.error:
            c.log("WARN", f"lease not acquired: {fact.error}", key="acquire")
        holder = fact.holder if fact.holder is not None else "?"
    elif isinstance(fact, Holder):
        holder = fact.name if fact.name is not None else "?"
    else:
        holder = s.holder
    c.set(holder=holder)
    if isinstance(fact, Holder):
        if holder == cfg.node:
            c.do(Adopt())          # the key names us but this process does not know the lease (restart)
            c.again = True
        elif holder == "" and eligible(o, s.vrrp, s.hung, s.stale):
            c.do(Acquire())
            c.again = True
            c.because("nobody leads: taking the lease")


def _lease_no_witness(c: _Cycle):
    s, o, cfg = c.s, c.o, c.cfg
    if s.hold:
        c.set(deadline=o.now + 3_600_000, peer_leads=False)
        return
    peer = o.peer_pg_role
    if o.force_authority:
        c.log("WARN", "authority forced by the operator (promote --force): the peer is taken to be down")
        c.do(ConsumeForce())
        c.set(hold=True, peer_lost_ok=True)
    elif eligible(o, s.vrrp, s.hung):
        if pg_writable(o):
            c.set(hold=True)
            c.log("INFO", "authority: this node runs the primary (no witness)")
        elif peer is not None:
            c.set(nw_peer_role=peer)
            if peer in ("standby", "down"):
                c.set(hold=True)
                c.log("INFO", f"authority: VIP owner and the peer's postgres is {peer} (no witness)")
            elif peer == "primary":
                c.log("WARN", "VIP owner, but the peer's postgres is a writable primary: not promoting", key="nw-primary")
            else:
                since = s.nw_lost_since or o.now
                c.set(nw_lost_since=since)
                if cfg.no_witness_policy == "promote-after-timeout" and o.now - since > cfg.nw_timeout_ms:
                    c.log("WARN", f"authority: peer {peer} for over {cfg.nw_timeout_ms}ms: promoting "
                                  "(promote-after-timeout; divergence possible)")
                    c.set(hold=True, peer_lost_ok=True)
                else:
                    c.log("WARN", f"VIP owner, peer postgres {peer}: manual promotion required "
                                  f"(policy {cfg.no_witness_policy or 'manual-promotion'})", key="nw-lost")
    if peer is not None and peer not in ("unreachable", "error"):
        c.set(nw_lost_since=0)
    if c.s.hold:
        c.set(deadline=o.now + 3_600_000, nw_lost_since=0)
    elif peer is not None and c.s.vrrp != "MASTER":
        c.set(nw_peer_role=peer)
    c.set(peer_leads=c.s.nw_peer_role == "primary")


def _leader_duties(c: _Cycle):
    s, o, cfg = c.s, c.o, c.cfg
    if s.hung and not cfg.witness:
        c.resign("keepalived hung")
        return
    if s.hung:
        # the frozen keepalived still holds the VIP and this node still leads: the peer, hearing no
        # adverts, yields as soon as it sees this node's beat (below) change, so nothing is
        # interrupted; killing keepalived here would drop the VIP for its restart (lab drill 7)
        c.log("ERROR", f"keepalived is hung (no heartbeat for over {cfg.hung_ms}ms): keeping the lease and the "
                       "VIP it still holds; the beat tells the peer to stay yielded", key="hung")
    if s.vrrp in ("FAULT", "STOP"):
        c.resign(f"keepalived is {s.vrrp}")
        return
    if s.vrrp in ("MASTER", "UNKNOWN"):   # UNKNOWN: keepalived not started since boot (first deploy)
        c.set(not_master_since=0)
    else:
        since = s.not_master_since or o.now
        c.set(not_master_since=since)
        if o.now - since > cfg.grace_ms:
            c.resign(f"keepalived {s.vrrp} for over {cfg.grace_ms}ms (the peer holds the VIP)")
            return
    c.set(yield_vip=False)
    if o.maintenance:
        c.because("maintenance: holding the lease, no automatic changes")
        return
    if c.s.writer_ok and (not o.pg_running or o.pg_role == "down"):
        # the holder's server died (crash, OOM kill; "down": killed, its pid file not yet gone):
        # restart it in place through the promote job, faster than a failover; marked planned so
        # check-local keeps the VIP meanwhile (PG_CRASH_GRACE at most) -- unmarked, it failed twice
        # during crash recovery in the 60-minute soak and the leader resigned (80 s to healthy)
        c.log("WARN", "leader: local postgres is gone: restarting it in place (lease held)")
        c.do(MarkPlannedRestart("postgres"))
        c.set(writer_ok=False)
    if c.s.writer_ok and o.pg_role is not None and o.pg_role not in ("primary", "unresponsive"):
        c.log("WARN", f"leader: local postgres is {o.pg_role}: promoting again")
        c.set(writer_ok=False)
    if not c.s.writer_ok and c.s.stale and not o.promote_running:
        # the lease came before the stale mark was read: the promote would be refused until the
        # peer gave up its writes for good; the peer has the data, so it leads
        c.resign(f"this node missed commits (the store marks it stale): {cfg.peer} must lead")
        return
    if not c.s.writer_ok and not o.promote_running and o.now - c.s.last_promote_try > 1000:
        if c.s.promote_fail_since and o.now - c.s.promote_fail_since > cfg.promote_giveup_ms:
            c.resign(f"could not promote for {cfg.promote_giveup_ms}ms")
            c.set(promote_fail_since=0)
            return
        c.set(last_promote_try=o.now)
        c.do(StartPromote(peer_lost_ok=c.s.peer_lost_ok))
    if cfg.witness and c.s.writer_ok and cfg.sync_names and o.sync is not None:
        _sync(c, o.sync)


def _beat(c: _Cycle):
    """Still the holder after its duties, within its lease, keepalived not FAULT/STOP: the beat that
    tells a peer which claimed the VIP (it heard no adverts) that this node is alive and leads, so
    the VIP belongs here: a cut link, a frozen keepalived, or this node's keepalived back as BACKUP
    after a restart while the peer took the VIP (nopreempt: it would stay there, writes through the
    VIP failing, until the grace ran out: lab drill 7, keepalived's VRRP process respawned). A FAULT
    or stopped keepalived resigns instead (_leader_duties). A new claim of
    the VIP by the peer (read with the last beat) makes it announce the VIP for a few cycles: the
    clients that followed the peer's gratuitous ARP come back when the peer gives it up, even if
    this node's keepalived is frozen (no refresh of its own)."""
    s, o = c.s, c.o
    if not (c.cfg.witness and s.hold and s.vrrp not in ("FAULT", "STOP")):
        return
    # a killed keepalived stays MASTER in the state file until its unit's ExecStopPost says STOP: no
    # beat meanwhile, or the peer that took the VIP would give it back to nobody (lab drill 6)
    if o.now < s.deadline and o.keepalived_alive is not False:
        c.do(Beat(s.hung))
    if s.vrrp != "MASTER":
        return
    if o.peer_claim is not None and o.peer_claim != s.peer_claim:
        by_peer = beat_parts(o.peer_claim)[0] == c.cfg.peer     # not this node's own claim of old
        c.set(peer_claim=o.peer_claim, announce_left=ANNOUNCE_CYCLES if by_peer else 0)
        if by_peer:
            c.log("INFO", f"{c.cfg.peer} claimed the VIP ({o.peer_claim}): announcing it from here")
    if c.s.announce_left > 0:
        c.do(Announce())
        c.set(announce_left=c.s.announce_left - 1)


def _sync(c: _Cycle, f: SyncFact):
    """Only the lease holder switches synchronous replication: on while the peer streams and is
    caught up; relaxed when it has been gone SYNC_RELAX_AFTER, after first marking it stale in
    the store so it never promotes itself on old data."""
    s, o, cfg = c.s, c.o, c.cfg
    if f.peer_streaming:
        back = s.sync_back_since or o.now
        c.set(sync_gone_since=0, sync_back_since=back)
        # not only when empty: a value copied with the data directory can name another node (at
        # once); relaxed, only once the peer has streamed sync_back_ms: on a flapping link each cut
        # would block every commit again until the next relax
        if f.current != cfg.sync_names and (f.current or o.now - back >= cfg.sync_back_ms):
            c.do(SyncOn(cfg.sync_names))
        elif f.store_sync is not None and f.store_sync != "on" and f.peer_is_sync:
            c.do(MarkSyncOn())
        return
    since = s.sync_gone_since or o.now
    c.set(sync_gone_since=since, sync_back_since=0)
    # a value that does not name the peer (copied with the data directory) blocks every commit: at once
    if f.current and (f.current != cfg.sync_names or o.now - since > cfg.sync_relax_ms):
        c.do(SyncRelax(cfg.peer))
    elif not f.current and f.store_sync is not None and f.store_sync != stale_mark(cfg.peer):
        # commits already go without the peer (a primary promoted while it was away): it misses
        # them, so it must never be promoted on its data until it is synchronous again
        c.do(SyncRelax(cfg.peer))


def _follower_duties(c: _Cycle):
    s, o, cfg = c.s, c.o, c.cfg
    # no lease, no writes: whatever the reason, a local primary is fenced (once: the lease fence
    # of this very cycle already stopped it)
    stopped = any(isinstance(a, StopWrites) for a in c.actions)
    if (pg_writable(o) or s.writer_ok) and not stopped:
        c.do(StopWrites("follower", "local postgres runs as a primary without the lease"
                        if pg_writable(o) else "not the lease holder"))
        c.set(writer_ok=False)
    if o.redis_role == "master":
        c.do(RedisDemote())
    # the VIP belongs with the leader: a MASTER that cannot lead yields it. A stale node yields
    # while nobody leads as well, if the peer is there to take it: the peer has the commits it
    # missed. With the peer unreachable it keeps the VIP (SIP served from its read-only data)
    # until the operator decides (hapbx-ha accept-stale).
    if s.stale and not s.peer_leads:
        if o.peer_pg_role in ("primary", "standby", "down", "error") and s.vrrp == "MASTER" and not s.yield_vip:
            c.set(yield_vip=True)
            c.log("WARN", f"yield: this node missed commits (the store marks it stale) and nobody leads: going "
                          f"FAULT so {cfg.peer} (postgres {o.peer_pg_role}) can lead, until this node is "
                          "synchronous again or the operator runs hapbx-ha accept-stale")
        elif o.peer_pg_role == "unreachable" and s.yield_vip:
            c.set(yield_vip=False)
            c.log("WARN", f"yield: {cfg.peer} is unreachable: this stale node keeps the VIP (no writes; "
                          "operator: hapbx-ha accept-stale)")
    elif s.peer_leads and s.vrrp == "MASTER":
        _master_while_peer_leads(c)
    elif not s.peer_leads:
        c.set(peer_leads_since=0, claim_beat=None)
        if s.yield_vip:
            c.set(yield_vip=False)
            c.log("INFO", f"yield: {cfg.peer} no longer leads: VIP may come back")
    elif s.yield_vip and o.peer_pg_role == "primary" and (
            not cfg.witness or not s.peer_hung and o.now - s.yield_since > cfg.hung_ms + cfg.renew_ms):
        # the link is back once the leading peer answers: keepalived hears its adverts again. With a
        # witness, not while the peer's beat says its keepalived is hung (no adverts: this node would
        # claim the VIP again), nor before the peer could have noticed that (HUNG_AFTER)
        c.set(yield_vip=False, peer_leads_since=0, claim_beat=None)
        c.log("INFO", f"yield: {cfg.peer} answers again: VIP follows VRRP")
    elif not s.yield_vip and s.peer_leads_since:
        c.set(peer_leads_since=0, claim_beat=None)     # VRRP master no more: the next claim starts afresh
    _maybe_rejoin(c)
    _maybe_start_read_only(c)


#: nobody held the lease this many lease TTLs with local PostgreSQL down: start it read-only
READ_ONLY_AFTER_TTLS = 3


def _maybe_start_read_only(c: _Cycle):
    """Nobody leads (as read from the store) and local PostgreSQL is down: after READ_ONLY_AFTER_TTLS
    lease TTLs (an ordinary failover elects a leader well within that), it starts read-only as a
    standby of the peer, so this node's readers come up (Kamailio loads its dispatcher set and
    subscribers from it at start), keepalived's check passes and a node becomes eligible again.
    Without it, Kamailio down on both nodes at once (restarted together, a crash) left both nodes
    FAULT with both PostgreSQL servers stopped by their resignation: nobody could lead, ever."""
    s, o, cfg = c.s, c.o, c.cfg
    waiting = (cfg.witness and cfg.rejoin_mode == "auto" and not o.maintenance and s.holder == ""
               and not s.peer_leads and not o.pg_running and not o.rejoin_running
               and not any(isinstance(a, StartRejoin) for a in c.actions))
    if not waiting:
        if s.nobody_leads_since:
            c.set(nobody_leads_since=0)
        return
    since = s.nobody_leads_since or o.now
    c.set(nobody_leads_since=since)
    if o.now - since < READ_ONLY_AFTER_TTLS * cfg.ttl_ms or o.now - s.last_rejoin <= s.rejoin_backoff:
        return
    c.log("WARN", f"nobody has led for {o.now - since}ms and local postgres is down: starting it read-only "
                  f"(a standby of {cfg.peer}) so this node's services can start and a leader can be elected")
    c.set(last_rejoin=o.now, nobody_leads_since=0)
    c.do(StartRejoin("nobody leads and local postgres is down", read_only=True))


def _master_while_peer_leads(c: _Cycle):
    """This node's keepalived claimed the VIP (it stopped hearing adverts) while the peer holds the
    lease: the peer died (its lease will expire: keep the VIP, SIP goes on from here) or the link
    between the nodes is cut / the peer's keepalived is frozen (the peer still renews: give the VIP
    back at once, two owners split the clients). The peer's beat changing after the claim tells
    them apart within one beat (daemon.BEAT_MS); YIELD_AFTER is the bound when no beat can be read."""
    s, o, cfg = c.s, c.o, c.cfg
    first = not s.peer_leads_since
    since = s.peer_leads_since or o.now
    c.set(peer_leads_since=since)
    beat = o.lease.beat if isinstance(o.lease, Holder) else None
    if s.yield_vip:
        return
    if first and cfg.witness:
        c.do(Claim())
    if first or s.claim_beat is None:
        c.set(claim_beat=beat)
    elif beat is not None and beat != s.claim_beat and beat_parts(beat)[0] == cfg.peer:
        c.set(yield_vip=True, yield_since=o.now)
        c.log("WARN", f"yield: {cfg.peer} renewed its lease {o.now - since}ms after this node stopped hearing its "
                      "VRRP adverts (the link between the nodes is cut or its keepalived is frozen): going FAULT")
        return
    if o.now - since > cfg.yield_ms:
        c.set(yield_vip=True, yield_since=o.now)
        c.log("WARN", f"yield: VIP owner while {cfg.peer} leads for over {cfg.yield_ms}ms: going FAULT "
                      "until that changes")


def _maybe_rejoin(c: _Cycle):
    s, o, cfg = c.s, c.o, c.cfg
    if cfg.rejoin_mode != "auto" or o.maintenance or not s.peer_leads or o.rejoin_running:
        return
    if o.now - s.last_rejoin <= s.rejoin_backoff:
        return
    need = ""
    if not o.pg_running:
        need = "local postgres is down"
    elif o.pg_standby and o.pg_streaming is not None:
        if o.pg_streaming:
            c.set(not_streaming_since=0)
        else:
            since = s.not_streaming_since or o.now
            c.set(not_streaming_since=since)
            if o.now - since > cfg.stream_lost_ms:
                need = f"standby not streaming for over {cfg.stream_lost_ms}ms"
    if need:
        c.log("INFO", f"rejoin: {need}, {cfg.peer} leads")
        c.set(last_rejoin=o.now)
        c.do(StartRejoin(need))


def _role(c: _Cycle) -> str:
    s, o = c.s, c.o
    if any(isinstance(a, StopWrites) and a.mode in ("lease", "resign") for a in c.actions):
        return FENCED
    if s.hold:
        return LEADER if s.writer_ok else PROMOTING
    if o.maintenance:
        return MAINTENANCE
    if o.rejoin_running or any(isinstance(a, StartRejoin) for a in c.actions):
        return REJOINING
    if s.yield_vip:
        return YIELDING
    if s.peer_leads:
        return FOLLOWER
    if eligible(o, s.vrrp, s.hung, s.stale) and (c.cfg.witness and s.holder == ""):
        return CANDIDATE
    return FOLLOWER


def _default_reason(c: _Cycle, role: str) -> str:
    s, o, cfg = c.s, c.o, c.cfg
    if role == LEADER:
        if cfg.witness:
            return f"holds the lease (fence in {max(0, s.deadline - o.now)}ms); postgres is the writer"
        return "holds authority (no witness); postgres is the writer"
    if role == PROMOTING:
        return "holds the lease; promote job " + ("running" if o.promote_running else "due")
    if role == MAINTENANCE:
        return "maintenance: no automatic promote, rejoin or yield"
    if role == REJOINING:
        return f"postgres rejoining {cfg.peer}"
    if role == YIELDING:
        if s.stale and not s.peer_leads:
            return f"this node missed commits (stale): giving up the VIP so {cfg.peer} can lead (VRRP {s.vrrp})"
        return f"{cfg.peer} leads: giving up the VIP (VRRP {s.vrrp})"
    if role == CANDIDATE:
        return "nobody leads: may take the lease"
    if s.peer_leads:
        return f"{cfg.peer} leads"
    if cfg.witness and s.holder == "?":
        return "leader key unreadable (store unreachable)"
    if cfg.witness and s.holder == "" and s.stale:
        return f"nobody leads; this node missed commits (stale): waiting for {cfg.peer} to lead"
    if cfg.witness and s.holder == "":
        return f"nobody leads; not eligible (VRRP {s.vrrp}{', keepalived hung' if s.hung else ''})"
    return "waiting: not the VRRP master" if not cfg.witness else f"{s.holder} leads"


def decide(s: State, o: Obs, cfg: Settings) -> Decision:
    c = _Cycle(s, o, cfg)
    vrrp, hung = vrrp_view(o, cfg)
    c.set(vrrp=vrrp, hung=hung)
    if o.stale is not None:
        c.set(stale=o.stale)
    if isinstance(o.lease, Holder) and o.lease.beat is not None:
        node, hung_beat = beat_parts(o.lease.beat)
        c.set(peer_hung=node == cfg.peer and hung_beat)
    _jobs(c)
    if cfg.witness:
        _lease_witness(c)
        if c.s.holder == cfg.peer:
            c.set(peer_leads=True)
        elif c.s.holder != "?":
            c.set(peer_leads=False)
    else:
        _lease_no_witness(c)
    if not c.again:
        if c.s.hold:
            _leader_duties(c)
            _beat(c)
        else:
            _follower_duties(c)
    role = _role(c)
    c.set(role=role)
    return Decision(c.s, tuple(c.actions), role, c.reason or _default_reason(c, role), c.again)


def resume(hold: bool, lease_id: str, deadline: int, last_renew: int, writer_ok: bool) -> State:
    """The state a re-executed daemon (SIGHUP: new code or settings) starts from: the lease kept."""
    return State(hold=hold, lease_id=lease_id, deadline=deadline, last_renew=last_renew, writer_ok=writer_ok,
                 role=(LEADER if writer_ok else PROMOTING) if hold else FOLLOWER)
