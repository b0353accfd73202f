"""The leader daemon (hapbx-leader.service): observe -> decide -> act -> publish, every
RENEW_INTERVAL, or at once when keepalived's notify writes to the wake FIFO; never sleeping past
the fence deadline.

    leader run       the daemon
    leader stopped   the unit's ExecStopPost: a daemon that died holding the lease fences the
                     local writes at once (stop_writes "stopped")

SIGHUP re-executes it (new code or settings) with the lease kept; SIGTERM resigns.
"""
from __future__ import annotations

import os
import select
import signal
import sys
import syslog
import time
from dataclasses import replace

from .. import layout
from . import decide as d
from .clock import mono_ms, wall_ms
from .drivers import Job, Keepalived, OwnerServices, Postgres, Redis
from .settings import Settings, SettingsError, load
from .store import EtcdStore
from .writes import stop_writes

#: cycle period while this node's keepalived claimed the VIP and the peer leads: the peer's next
#: beat decides whether it gives the VIP back (decide._master_while_peer_leads)
CLAIM_CYCLE_MS = 100
#: the holder beats at least this often (renewing every RENEW_INTERVAL): a peer that claimed the VIP
#: waits one beat at most to give it back (lab drill 4: two owners 0.6 s with a beat every 0.5 s)
BEAT_MS = 250
#: facts not read every cycle: how often (ms), and in which states they matter at all
SAMPLE_EVERY = {
    "pg_role": 1000,        # the writer's server still a primary?
    "redis_role": 1000,     # a follower's Redis still a master?
    "pg_streaming": 1000,   # a follower's standby still streaming?
    "peer_pg_role": 1000,   # yielding: does the leading peer answer again? stale: is the peer there to lead?
                            # no witness: is it a primary?
    "sync": 500,            # the writer's synchronous replication (a cut standby blocks every commit)
    "holder": 1000,         # who leads, for a node that may not take the lease anyway
    "stale": 1000,          # does the store mark this node stale (it missed commits)?
}


class Logger:
    def __init__(self, node: str, env: dict[str, str], name: str = "leader"):
        self.prefix = f"{node} {name}[{os.getpid()}]"
        self.t0 = mono_ms()
        self.file = env.get("HA_LOG_FILE") or ""
        self.syslog = env.get("HA_SYSLOG") == "1" and not env.get("JOURNAL_STREAM")
        self.last: dict[str, int] = {}
        if self.syslog:
            syslog.openlog("hapbx-ha", 0, syslog.LOG_DAEMON)

    def __call__(self, level: str, text: str, key: str = ""):
        now = mono_ms()
        if key:
            if now - self.last.get(key, -10**9) < 5000:
                return
            self.last[key] = now
        w = time.time()
        line = f"{self.prefix} {level:<5} +{now - self.t0}ms {text}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(w)) + f".{int(w * 1000) % 1000:03d}"
        print(f"{stamp} {line}", file=sys.stderr, flush=True)
        if self.file:
            try:
                with open(self.file, "a", encoding="utf-8") as fh:
                    fh.write(f"{stamp} {line}\n")
            except OSError:
                pass
        if self.syslog:
            prio = {"ERROR": syslog.LOG_ERR, "FENCE": syslog.LOG_ERR, "WARN": syslog.LOG_WARNING}.get(level,
                                                                                                    syslog.LOG_INFO)
            syslog.syslog(prio, line)


def write_atomic(path: str, text: str):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_if_changed(path: str, value: str):
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read().strip() == value:
                return
    except OSError:
        pass
    write_atomic(path, f"{value}\n")


class Daemon:
    def __init__(self, cfg: Settings, env: dict[str, str]):
        self.cfg, self.env = cfg, env
        self.log = Logger(cfg.node, env)
        self.pg, self.redis = Postgres(env), Redis(env)
        self.keepalived, self.owners = Keepalived(env), OwnerServices(env)
        self.promote, self.rejoin = Job(cfg.bin_dir, "promote", env), Job(cfg.bin_dir, "rejoin", env)
        self.store = EtcdStore(env.get("ETCD_ENDPOINTS", ""), env.get("ETCD_PREFIX", "/hapbx"), env) if cfg.witness else None
        self.run_dir, self.lib_dir = cfg.run_dir, cfg.lib_dir
        self.state = d.State()
        self.pending_lease: d.LeaseFact = None
        self.beats = mono_ms()      # beat sequence: rises across restarts of the daemon
        self.peer_claim: str | None = None   # the claim key as the last beat read it
        self.last_renew_try = -10**9
        self.sampled: dict[str, int] = {}
        self.stop_requested = False
        self.reload_requested = False
        self.reason = ""
        self.role_since_ms = wall_ms()      # wall clock: when the current role began (the exporter's)

    # ------------------------------------------------------------ observe
    def _due(self, fact: str, now: int) -> bool:
        if now - self.sampled.get(fact, -10**9) >= SAMPLE_EVERY[fact]:
            self.sampled[fact] = now
            return True
        return False

    def budget_ms(self) -> int:
        """What a holder's calls may take: they must end well before the next renewal is needed."""
        s = self.state
        if not (s.hold and self.cfg.witness):
            return 5000
        return min(1000, s.deadline - mono_ms() - 2 * self.cfg.renew_ms)

    def observe(self) -> d.Obs:
        cfg, s = self.cfg, self.state
        now = mono_ms()
        promote_exit, rejoin_exit = self.promote.reap(), self.rejoin.reap()
        vrrp, since = self.keepalived.vrrp()
        o = d.Obs(now=now, vrrp=vrrp, vrrp_since=since,
                  vip_present=self.keepalived.vip_present() if (vrrp == "MASTER" and cfg.check_vip) else True,
                  heartbeat=self.keepalived.heartbeat() if cfg.heartbeat else 0,
                  maintenance=os.path.exists(f"{self.lib_dir}/maintenance"),
                  force_authority=(not cfg.witness) and os.path.exists(f"{self.run_dir}/force-authority"),
                  pg_running=self.pg.running(), pg_standby=self.pg.standby_configured(),
                  promote_running=self.promote.running, promote_exit=promote_exit,
                  rejoin_running=self.rejoin.running, rejoin_exit=rejoin_exit, peer_claim=self.peer_claim,
                  keepalived_alive=self.keepalived.alive() if s.hold else None)
        view, hung = d.vrrp_view(o, cfg)
        # the lease: the holder renews (its observation of whether it still leads); the others
        # read who leads, or take a lease action's outcome
        if cfg.witness:
            if s.hold:
                left = s.deadline - mono_ms()
                if left > 0 and now - self.last_renew_try >= cfg.renew_ms - BEAT_MS // 2:
                    self.last_renew_try = now
                    o = replace(o, lease=self.store.renew(s.lease_id, min(left, cfg.etcd_timeout_ms)))
                    if isinstance(o.lease, d.RenewFailed):
                        self.last_renew_try = -10**9     # again next cycle, from the store's next member
            elif self.pending_lease is not None:
                o, self.pending_lease = replace(o, lease=self.pending_lease), None
            elif d.eligible(o, view, hung, s.stale) or view == "MASTER" or s.yield_vip or self._due("holder", now):
                o = replace(o, lease=self.store.holder(cfg.etcd_timeout_ms))
        now = mono_ms()
        o = replace(o, now=now)
        budget = self.budget_ms()
        t = max(budget, 100) / 1000
        if cfg.witness and cfg.sync_names and not (s.hold and s.writer_ok) and budget > 100 and self._due("stale", now):
            value = self.store.get(self.store.key("sync"), min(budget, cfg.etcd_timeout_ms))
            if value is not None:
                o = replace(o, stale=value == d.stale_mark(cfg.node))
        if s.hold:
            if budget > 100 and s.writer_ok and self._due("pg_role", now):
                o = replace(o, pg_role=self.pg.role(t))
            if (cfg.witness and cfg.sync_names and s.writer_ok and self.budget_ms() > 100 and self._due("sync", now)):
                facts = self.pg.sync_state(cfg.peer, cfg.sync_reply_max_ms, max(self.budget_ms(), 100) / 1000)
                if facts is not None:
                    store_sync = None
                    if self.budget_ms() > 100:
                        store_sync = self.store.get(self.store.key("sync"), self.budget_ms())
                    o = replace(o, sync=d.SyncFact(facts[0], facts[1], facts[2], store_sync))
        else:
            if self._due("redis_role", now):
                o = replace(o, redis_role=self.redis.role())
            if o.pg_running and o.pg_standby and s.peer_leads and self._due("pg_streaming", now):
                o = replace(o, pg_streaming=self.pg.streaming())
            if cfg.witness:
                if (s.yield_vip and s.peer_leads or s.stale and not s.peer_leads) and self._due("peer_pg_role", now):
                    o = replace(o, peer_pg_role=self.pg.peer_role())
            elif (d.eligible(o, view, hung) and not d.pg_writable(o)) or (view != "MASTER" and self._due("peer_pg_role", now)):
                o = replace(o, peer_pg_role=self.pg.peer_role())
        return replace(o, now=mono_ms())

    # ------------------------------------------------------------ act
    def act(self, actions: tuple):
        cfg = self.cfg
        for a in actions:
            if isinstance(a, d.Log):
                self.log(a.level, a.text, a.key)
            elif isinstance(a, d.StopWrites):
                took = stop_writes(a.mode, a.why, pg=self.pg, redis=self.redis, store=self.store, owners=self.owners,
                                   promote=self.promote, log=self.log, lease_id=a.lease_id, deadline=a.deadline,
                                   fast_stop_ms=cfg.fast_stop_ms)
                self.publish()      # nobody may read "hold=1" after the writes stopped
                del took
            elif isinstance(a, d.Acquire):
                self.pending_lease = self.store.acquire(cfg.node, max(1, cfg.ttl_ms // 1000), cfg.etcd_timeout_ms)
            elif isinstance(a, d.Adopt):
                self.pending_lease = self.store.adopt(cfg.etcd_timeout_ms)
            elif isinstance(a, d.StartPromote):
                pid = self.promote.start({"HA_PEER_LOST_OK": "1"} if a.peer_lost_ok else {})
                self.log("INFO", f"started promote (pid {pid})")
            elif isinstance(a, d.StartRejoin):
                pid = self.rejoin.start(None, "--read-only") if a.read_only else self.rejoin.start()
                self.log("INFO", f"started rejoin (pid {pid})")
            elif isinstance(a, d.RedisDemote):
                self.redis.demote(self.log)
            elif isinstance(a, d.KillKeepalived):
                self.keepalived.kill(self.log)
            elif isinstance(a, d.MarkPlannedRestart):
                write_atomic(self._planned(a.service), f"{wall_ms() // 1000}\n")
            elif isinstance(a, d.ClearPlannedRestart):
                try:
                    os.unlink(self._planned(a.service))
                except FileNotFoundError:
                    pass
            elif isinstance(a, d.ConsumeForce):
                try:
                    os.unlink(f"{self.run_dir}/force-authority")
                except FileNotFoundError:
                    pass
            elif self.budget_ms() <= 100:
                continue      # the holder's remaining duties wait for the next cycle: the renewal first
            elif isinstance(a, d.Announce):
                self.keepalived.announce(self.log)
            elif isinstance(a, d.Claim):
                self.store.claim(cfg.node, f"{cfg.node} {mono_ms()}", cfg.etcd_timeout_ms)
            elif isinstance(a, d.Beat):
                self.beats += 1
                self.peer_claim = self.store.beat(cfg.node, d.beat_text(cfg.node, a.hung, self.beats),
                                                  self.budget_ms())
            elif isinstance(a, d.SyncOn):
                if self.pg.set_sync_names(a.names, self.budget_ms() / 1000):
                    self.log("INFO", f"sync: {cfg.peer} streams: synchronous replication on ({a.names})")
            elif isinstance(a, d.MarkSyncOn):
                if self.store.put_if_leader(cfg.node, self.store.key("sync"), "on", self.budget_ms()):
                    self.log("INFO", f"sync: {cfg.peer} is synchronous: it may be promoted again")
            elif isinstance(a, d.SyncRelax):
                if (self.store.put_if_leader(cfg.node, self.store.key("sync"), d.stale_mark(a.peer), self.budget_ms())
                        and self.budget_ms() > 100 and self.pg.set_sync_names("", self.budget_ms() / 1000)):
                    self.log("WARN", f"sync: {a.peer} does not stream (or not for {cfg.sync_relax_ms}ms): marked stale, "
                                     "commits go without it")

    def _planned(self, service: str) -> str:
        return os.path.join(self.run_dir, os.path.basename(layout.planned_restart_marker(service)))

    # ------------------------------------------------------------ publish
    def publish(self):
        s, now = self.state, mono_ms()
        write_atomic(os.path.join(self.run_dir, layout.AUTHORITY_FILE),
                     f"{int(s.hold)} {s.deadline if s.hold else 0} {s.lease_id}\n")
        write_if_changed(f"{self.run_dir}/leader", str(int(s.hold)))
        write_if_changed(f"{self.run_dir}/yield", str(int(s.yield_vip)))
        wall = wall_ms()
        write_atomic(f"{self.run_dir}/status", layout.format_status({
            "node": self.cfg.node, "role": s.role, "reason": self.reason, "hold": int(s.hold), "holder": s.holder,
            "vrrp": s.vrrp, "hung": int(s.hung), "yield": int(s.yield_vip), "stale": int(s.stale), "writer": int(s.writer_ok),
            "deadline_in_ms": s.deadline - now if s.hold else 0,
            "last_renew_ms_ago": now - s.last_renew if s.last_renew else -1,
            "last_renew_at_ms": wall - (now - s.last_renew) if s.last_renew else 0,
            "renew_max_gap_ms": s.max_renew_gap,
            "last_fence_at_ms": wall - (now - s.last_fence) if s.last_fence else 0,
            "witness": int(self.cfg.witness), "moved_aside": moved_aside(self.lib_dir),
            "role_since_ms": self.role_since_ms}))

    # ------------------------------------------------------------ loop
    def cycle(self) -> d.Decision:
        o = self.observe()
        dec = d.decide(self.state, o, self.cfg)
        if dec.role != self.state.role:
            self.log("INFO", f"role {self.state.role} -> {dec.role}: {dec.reason}")
            self.role_since_ms = wall_ms()
        self.state, self.reason = dec.state, dec.reason
        self.act(dec.actions)
        self.publish()
        return dec

    def run(self, wake_fd: int):
        while not self.stop_requested and not self.reload_requested:
            t0 = mono_ms()
            dec = self.cycle()
            if dec.again:
                continue
            now = mono_ms()
            wait = self.cfg.renew_ms - (now - t0)
            if self.cfg.witness and self.state.peer_leads and self.state.vrrp == "MASTER" and not self.state.yield_vip:
                wait = min(wait, CLAIM_CYCLE_MS)    # the VIP claimed while the peer leads: is it alive?
            if self.state.hold and self.cfg.witness:
                wait = min(wait, BEAT_MS - (now - t0), self.state.deadline - now)
            wait = max(wait, 10)
            try:
                ready, _, _ = select.select([wake_fd], [], [], wait / 1000)
            except InterruptedError:
                continue
            if ready:
                try:
                    while os.read(wake_fd, 4096):
                        pass
                except BlockingIOError:
                    pass

    def shutdown(self):
        self.log("INFO", "leader daemon: stopping")
        if self.state.hold:
            stop_writes("resign", "leader daemon stopping", pg=self.pg, redis=self.redis, store=self.store,
                        owners=self.owners, promote=self.promote, log=self.log, lease_id=self.state.lease_id,
                        deadline=self.state.deadline, fast_stop_ms=self.cfg.fast_stop_ms)
            if self.state.role != d.FENCED:
                self.role_since_ms = wall_ms()
            self.state = replace(self.state, hold=False, writer_ok=False, lease_id="-", role=d.FENCED)
            self.reason = "daemon stopped"
            self.publish()
        self.rejoin.kill()


def moved_aside(lib_dir: str) -> str:
    """Data directories rejoin moved aside instead of deleting them (jobs.Rejoin.basebackup)."""
    try:
        with open(os.path.join(lib_dir, layout.MOVED_ASIDE_LIST), encoding="utf-8") as fh:
            return ",".join(line.split()[0] for line in fh if line.strip())
    except OSError:
        return ""


def read_authority(run_dir: str) -> tuple[bool, int]:
    """(holds the lease, fence deadline in boot-clock ms) as the daemon last published it."""
    try:
        with open(os.path.join(run_dir, layout.AUTHORITY_FILE), encoding="ascii") as fh:
            hold, deadline, *_ = fh.read().split()
        return hold == "1", int(deadline)
    except (OSError, ValueError):
        return False, 0


def stopped(cfg: Settings, env: dict[str, str]) -> int:
    log = Logger(cfg.node, env)
    run = cfg.run_dir
    if read_authority(run)[0]:
        stop_writes("stopped", "leader daemon stopped while holding the lease", pg=Postgres(env), redis=Redis(env),
                    log=log)
        write_atomic(os.path.join(run, layout.AUTHORITY_FILE), "0 0 -\n")
    write_if_changed(f"{run}/leader", "0")
    return 0


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else "run"
    if mode not in ("run", "stopped"):
        print("usage: leader [run|stopped]", file=sys.stderr)
        return 2
    try:
        cfg, env = load()
    except SettingsError as e:
        print(f"hapbx-ha leader: {e}", file=sys.stderr)
        return 2
    os.makedirs(cfg.run_dir, exist_ok=True)
    os.makedirs(cfg.lib_dir, exist_ok=True)
    if mode == "stopped":
        return stopped(cfg, env)
    daemon = Daemon(cfg, env)

    def on_term(*_):
        daemon.stop_requested = True

    def on_hup(*_):
        daemon.reload_requested = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(signal.SIGHUP, on_hup)
    fifo = f"{cfg.run_dir}/wake"
    if not _is_fifo(fifo):
        try:
            os.unlink(fifo)
        except FileNotFoundError:
            pass
        os.mkfifo(fifo, 0o600)
    wake_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    resume = os.environ.pop("HAPBX_RESUME", "")
    resume_role = os.environ.pop("HAPBX_RESUME_ROLE", "").split()
    if resume:
        hold, lease_id, deadline, last_renew, writer_ok = resume.split()
        daemon.state = d.resume(hold == "1", lease_id, int(deadline), int(last_renew), writer_ok == "1")
        if len(resume_role) == 2 and resume_role[0] == daemon.state.role and resume_role[1].isdigit():
            daemon.role_since_ms = int(resume_role[1])      # the same role goes on: since the same time
        daemon.log("INFO", f"leader daemon: resumed (hold={hold} lease={lease_id})")
    else:
        daemon.log("INFO", f"leader daemon: start (witness={int(cfg.witness)} ttl={cfg.ttl_ms}ms "
                           f"renew={cfg.renew_ms}ms margin={cfg.margin_ms}ms)")
    daemon.run(wake_fd)
    if daemon.reload_requested and not daemon.stop_requested:
        s = daemon.state
        daemon.log("INFO", "leader daemon: reloading (re-exec, lease kept)")
        os.environ["HAPBX_RESUME"] = f"{int(s.hold)} {s.lease_id} {s.deadline} {s.last_renew} {int(s.writer_ok)}"
        os.environ["HAPBX_RESUME_ROLE"] = f"{s.role} {daemon.role_since_ms}"
        os.execv(sys.executable, [sys.executable, os.path.join(cfg.bin_dir, "leader"), "run"])
    daemon.shutdown()
    return 0


def _is_fifo(path: str) -> bool:
    import stat
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:
        return False
