"""The role-changing jobs: promote, demote, rejoin (run by the leader daemon or an operator),
and `status`. Each takes the role lock, so they never overlap; each is idempotent.

    promote [--force]      this node becomes the writer (PostgreSQL primary, Redis master, the
                           writer-only units). Exit 0 done, 1 failed, 3 refused (the peer is a
                           writable primary / unknown without a witness), 4 refused (this node's
                           data may be stale), 5 refused (no leader lease).
    demote [--fence] [--force]
                           stop being the writer (stop_writes "demote", or "demote-fence"), then
                           Redis follows the peer. Exit 5 on the lease holder without --force.
    rejoin [--basebackup]  PostgreSQL becomes a streaming standby of the peer: pg_rewind, or a
                           fresh pg_basebackup with the old data directory moved aside (never
                           deleted); the divergent WAL range is logged first. Exit 0 streaming,
                           1 failed, 3 the peer is not a primary, 5 this node holds the lease.
    status                 this node's HA state as key=value lines.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import subprocess
import sys
import time

from .clock import mono_ms
from .. import layout
from .daemon import Logger, moved_aside, read_authority
from .decide import stale_mark
from .drivers import Keepalived, OwnerServices, Postgres, Redis, wait_until
from .settings import SettingsError, load
from .store import EtcdStore
from .writes import stop_writes

EXIT_FAILED, EXIT_PEER, EXIT_STALE, EXIT_NO_LEASE = 1, 3, 4, 5


class Job:
    def __init__(self, name: str):
        self.cfg, self.env = load()
        self.log = Logger(self.cfg.node, self.env, name)
        self.pg, self.redis, self.owners = Postgres(self.env), Redis(self.env), OwnerServices(self.env)
        self.store = (EtcdStore(self.env.get("ETCD_ENDPOINTS", ""), self.env.get("ETCD_PREFIX", "/hapbx"), self.env)
                      if self.cfg.witness else None)
        self.timeout_ms = 2000
        self._lock = None
        for d in (self.cfg.run_dir, self.cfg.lib_dir):
            os.makedirs(d, exist_ok=True)

    def lock(self, wait_s: float) -> bool:
        """Serialise with every other job (and notify's VRRP writes take their own lock). The fd
        is close-on-exec: a server started from here never inherits it."""
        self._lock = open(f"{self.cfg.run_dir}/role.lock", "a")
        end = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= end:
                    self.log("WARN", f"lock role still held by another run after {wait_s:g} s")
                    return False
                time.sleep(0.05)

    def timed(self, what: str, fn, *args) -> bool:
        t0 = mono_ms()
        ok = fn(*args)
        took = mono_ms() - t0
        if ok:
            self.log("INFO", f"{what}: ok ({took}ms)")
        else:
            self.log("ERROR", f"{what}: failed ({took}ms)")
        return bool(ok)

    def authority(self) -> tuple[bool, int]:
        return read_authority(self.cfg.run_dir)

    def authority_valid(self, margin_ms: int) -> bool:
        hold, deadline = self.authority()
        return hold and mono_ms() + margin_ms < deadline

    def key(self, name: str) -> str:
        return self.store.key(name)


# ---------------------------------------------------------------- promote
def promote(argv: list[str]) -> int:
    force = argv[:1] == ["--force"]
    j = Job("promote")
    cfg, env, log, pg = j.cfg, j.env, j.log, j.pg
    if not j.lock(float(env.get("ROLE_LOCK_WAIT") or 10)):
        return EXIT_FAILED
    margin = int(env.get("PROMOTE_MARGIN_MS") or 100)

    def may_write() -> bool:
        if force:
            return True
        return j.authority_valid(margin) if cfg.witness else j.authority()[0]

    if not may_write():
        log("WARN", "promote: this node does not hold the leader lease: not promoting")
        return EXIT_NO_LEASE
    log("INFO", f"promote: start (witness={int(cfg.witness)} force={int(force)})")
    role = pg.role()
    log("INFO", f"promote: local postgres is {role}")
    # 1. Never two writable primaries. With a witness the lease already guarantees it: the check
    # only refuses a peer that answers as a writable primary, and a dead or cut-off peer costs at
    # most 0.3 s here (lab power-off drill: writes back after 6.0-6.6 s with libpq's 2 s, 4.9-5.5 s
    # with 0.8 s)
    peer = pg.peer_role(float(env.get("PEER_CHECK_WITNESS_S") or 0.3) if cfg.witness else 5)
    where = f"{env['PG_PEER_HOST']}:{env['PG_PEER_PORT']}"
    if peer == "primary":
        if role == "primary":
            log("ERROR", "promote: BOTH nodes are writable primaries; the peer must fence itself (it has no lease)")
        else:
            log("ERROR", f"promote: peer postgres {where} is a writable primary: refusing")
            return EXIT_PEER
    elif peer in ("standby", "down"):
        log("INFO", f"promote: peer postgres is {peer}")
    else:
        if not cfg.witness and not force and env.get("HA_PEER_LOST_OK") != "1":
            log("ERROR", f"promote: peer postgres {peer} and no witness: not promoting (policy "
                         f"{cfg.no_witness_policy or 'manual-promotion'}; operator: promote --force)")
            return EXIT_PEER
        log("WARN", f"promote: peer postgres {peer} ({pg.peer_error}); the lease decides")
    # 2. Is this node's data the latest?
    if not force and role != "primary":
        if cfg.witness:
            if j.store.get(j.key("sync"), j.timeout_ms) == stale_mark(cfg.node):
                log("ERROR", "promote: synchronous replication was relaxed while this standby was away: its data "
                             "may be stale (operator: promote --force)")
                return EXIT_STALE
            if role == "down" and not pg.standby_configured():
                last = j.store.get(j.key("primary"), j.timeout_ms)
                if last is None:
                    log("ERROR", f"promote: cannot read {j.key('primary')}")
                    return EXIT_FAILED
                if last and last != cfg.node:
                    log("ERROR", f"promote: the last primary was {last}: this node must rejoin, not restart as primary")
                    return EXIT_STALE
        elif role == "down" and os.path.exists(pg.fenced_mark) and not pg.standby_configured():
            log("ERROR", "promote: this node's postgres was fenced and no witness knows who wrote since "
                         "(operator: promote --force)")
            return EXIT_STALE
    # 3. Record who may be primary, while the lease is ours (a restarted ex-primary checks it).
    if cfg.witness and not j.store.put_if_leader(cfg.node, j.key("primary"), cfg.node, j.timeout_ms):
        if not force:
            log("ERROR", f"promote: could not record {j.key('primary')} under the lease: not promoting")
            return EXIT_NO_LEASE
        log("WARN", f"promote: could not record {j.key('primary')} (forced)")

    promote_s = cfg.promote_giveup_ms / 1000
    rc_box = {}

    def pg_promote() -> bool:
        if not may_write():
            log("ERROR", "promote: lease lost before pg_promote")
            rc_box["rc"] = EXIT_NO_LEASE
            return False
        return pg.sql(f"select pg_promote(true, {int(promote_s)})", promote_s + 5) == "t"

    promoted = False
    if role == "primary":
        log("INFO", "promote: postgres already primary")
    elif role == "standby":
        if not j.timed("postgres: pg_promote", pg_promote):
            return rc_box.get("rc", EXIT_FAILED)
        promoted = True
    else:
        if role == "down":
            if not pg.standby_configured():
                pg.clear_fenced()
            if not j.timed("postgres: start", pg.start, log):
                return EXIT_FAILED
        if not j.timed("postgres: ready", pg.wait_ready, cfg.promote_giveup_ms):
            return EXIT_FAILED
        if pg.role() == "standby":
            if not j.timed("postgres: pg_promote", pg_promote):
                return rc_box.get("rc", EXIT_FAILED)
            promoted = True
    role = pg.role()
    if role != "primary":
        log("ERROR", f"promote: postgres is {role} after promotion")
        return EXIT_FAILED
    pg.clear_fenced()

    # 3b. No commit may wait for a standby that cannot be there: postgresql.auto.conf travels with
    # pg_basebackup and pg_rewind, so a promoted server can carry synchronous_standby_names naming a
    # node that will not stream from it. The peer is no synchronous copy of this new primary until it
    # streams again: marked stale under the lease, commits go alone; the daemon switches sync back on.
    def relax_sync() -> bool:
        cur = pg.sql("show synchronous_standby_names")
        if cur is None:
            return False
        streaming = pg.sql(f"select count(*) from pg_stat_replication where application_name = '{cfg.peer}' "
                           "and state = 'streaming'")
        if streaming is None:
            return False
        if int(streaming) > 0:
            return True
        # the peer does not stream from this new primary: whatever it commits, the peer misses
        # (with synchronous_standby_names empty as much as after relaxing it)
        if cfg.witness and not j.store.put_if_leader(cfg.node, j.key("sync"), stale_mark(cfg.peer), j.timeout_ms):
            log("WARN", f"promote: could not mark {cfg.peer} stale: synchronous replication left as it is ({cur})")
            return False
        if not cur:
            return True
        if pg.set_sync_names("", 5):
            log("INFO", f"promote: synchronous replication relaxed (was {cur}; {cfg.peer} does not stream from "
                        "this node yet)")
            return True
        return False

    j.timed("postgres: synchronous replication until the peer streams", relax_sync)
    # the new timeline reaches pg_control only with the end-of-recovery checkpoint; until then
    # pg_rewind on the old primary would see "same timeline, no rewind required"
    if promoted and not j.timed("postgres: checkpoint (new timeline in pg_control)",
                                lambda: pg.sql("checkpoint", 60) is not None):
        log("WARN", "promote: checkpoint failed; rejoin waits for the timeline itself")
    # 4. The peer rejoins through its own slot (named after it).
    slot = env.get("PG_PEER_SLOT", "")
    if slot and pg.sql(f"select pg_create_physical_replication_slot('{slot}', true) where not exists "
                       f"(select 1 from pg_replication_slots where slot_name = '{slot}')") is None:
        log("WARN", f"promote: could not create slot {slot}")
    # 5. Redis master, then the units that run on the writer only.
    if not j.timed("redis: master", j.redis.promote, log):
        return EXIT_FAILED
    j.owners.start(log)
    log("INFO", "promote: done, this node is the writer")
    return 0


# ---------------------------------------------------------------- demote
def demote(argv: list[str]) -> int:
    unknown = [a for a in argv if a not in ("--fence", "--force")]
    if unknown:
        print("usage: demote [--fence] [--force]", file=sys.stderr)
        return 2
    fence, force = "--fence" in argv, "--force" in argv
    j = Job("demote")
    log = j.log
    if not force and j.authority_valid(0):
        log("WARN", "demote: this node holds the leader lease; stop keepalived to hand over, or use --force")
        return EXIT_NO_LEASE
    if not j.lock(float(j.env.get("ROLE_LOCK_WAIT") or 10)):
        return EXIT_FAILED
    log("INFO", f"demote: start (fence={int(fence)})")
    rc = 0
    if j.pg.running() and not j.pg.standby_configured():
        stop_writes("demote-fence" if fence else "demote", "demote", pg=j.pg, redis=j.redis, owners=j.owners,
                    log=log, fast_stop_ms=j.cfg.fast_stop_ms)
        rc = 0 if not j.pg.running() else 1
    else:
        j.owners.stop(log, background=False)
        log("INFO", "demote: postgres is not a running primary")
    if not j.timed("redis: demote", j.redis.demote, log):
        rc = 1
    log("INFO", f"demote: done (exit {rc})")
    return rc


# ---------------------------------------------------------------- rejoin
def rejoin(argv: list[str]) -> int:
    basebackup = argv[:1] == ["--basebackup"]
    j = Job("rejoin")
    cfg, env, log, pg = j.cfg, j.env, j.log, j.pg
    if not j.lock(float(env.get("REJOIN_LOCK_WAIT") or 30)):
        return EXIT_FAILED
    if j.authority_valid(0):
        log("WARN", "rejoin: this node holds the leader lease: it is the primary, nothing to rejoin")
        return EXIT_NO_LEASE
    peer = pg.peer_role()
    if peer != "primary" and "--read-only" in argv:
        return start_read_only(j, peer)
    if peer != "primary":
        log("ERROR", f"rejoin: peer postgres is {peer}, not a writable primary: nothing to follow "
                     f"({pg.peer_error})")
        return EXIT_PEER
    role = pg.role()
    if not basebackup and role == "standby":
        for _ in range(10):
            if pg.streaming():
                log("INFO", "rejoin: already streaming from the peer")
                j.redis.demote(log)
                return 0
            time.sleep(0.5)
        log("WARN", "rejoin: standby is not streaming: rewinding")
    log("INFO", f"rejoin: start (local postgres {role}, basebackup={int(basebackup)})")
    try:
        return _rejoin(j, basebackup)
    except PeerGone as gone:
        log("WARN", f"rejoin: the peer stopped being a writable primary (postgres {gone}) while this node waited "
                    "to stream from it: stopping here, local postgres stays a read-only standby; the next leader "
                    "is followed by the next rejoin")
        return EXIT_PEER


#: a rejoin waiting to stream checks this often that the peer is still a writable primary
PEER_CHECK_MS = 2000


class PeerGone(Exception):
    """The peer is no longer a writable primary (str: its role as seen)."""


def _rejoin(j: Job, basebackup: bool) -> int:
    log, env = j.log, j.env
    t0 = mono_ms()
    rj = Rejoin(j)
    if not j.timed("postgres: stop local", rj.stop_local):
        return EXIT_FAILED
    if not j.timed(f"peer: slot {env['PG_SLOT']}", rj.ensure_slot):
        log("WARN", f"rejoin: could not ensure slot {env['PG_SLOT']} on the peer")
    done = False
    if not basebackup:
        local_tli, fork = rj.log_divergence()
        if j.timed("postgres: pg_rewind", rj.rewind) and rj.rewind_believable(local_tli, fork) and rj.follow():
            done = True
        else:
            log("WARN", "rejoin: pg_rewind path failed: falling back to pg_basebackup")
            rj.stop_local()
    if not done:
        if not j.timed("postgres: pg_basebackup", rj.basebackup):
            return EXIT_FAILED
        if not rj.follow():
            return EXIT_FAILED
    j.timed("redis: follow the peer", j.redis.demote, log)
    log("INFO", f"rejoin: done in {mono_ms() - t0}ms, streaming from {env['PG_PEER_HOST']}:{env['PG_PEER_PORT']}")
    return 0


def remove_dir(path: str) -> None:
    """A directory and what it holds; a mount point is emptied and stays."""
    if not os.path.ismount(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.unlink(full)


def move_dir(src: str, dst: str) -> None:
    """Rename; across file systems (a data directory that is a mount point, or one in an overlayfs
    lower layer, as on the lab's nodes) copy with owners, modes and times, then remove, as mv does."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EBUSY):    # EBUSY: src is a mount point
            raise
        subprocess.run(["cp", "-a", "--", src, dst], check=True)
        remove_dir(src)


class Rejoin:
    def __init__(self, job: Job):
        self.j, self.env, self.pg, self.log, self.cfg = job, job.env, job.pg, job.log, job.cfg
        #: data directories moved aside: "<dir> <epoch seconds>" per line (status lists them)
        self.moved_list = os.path.join(self.cfg.lib_dir, layout.MOVED_ASIDE_LIST)
        self.rewind_output = ""              # what pg_rewind printed

    def stop_local(self) -> bool:
        if not self.pg.running():
            return True
        if self.pg.standby_configured():
            return self.pg.stop_fast(self.cfg.fast_stop_ms)
        return self.pg.fence()

    def ensure_slot(self) -> bool:
        slot = self.env["PG_SLOT"]
        rc, _, _ = self.pg.peer_sql(f"select pg_create_physical_replication_slot('{slot}', true) where not exists "
                                    f"(select 1 from pg_replication_slots where slot_name = '{slot}')")
        return rc == 0

    def source_timeline_settled(self) -> bool:
        """The source's pg_control must show its current timeline (written by the checkpoint after
        promotion), or pg_rewind wrongly finds "no rewind required"."""
        rc, out, err = self.pg.peer_sql("select c.timeline_id = ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), "
                                        "1, 8))::bit(32)::int from pg_control_checkpoint() c")
        if rc != 0:
            self.log("WARN", f"rejoin: cannot compare the peer's timelines ({' '.join(err.split())}); going on")
            return True
        return out == "t"

    def rewind(self) -> bool:
        if not self.j.timed("peer: timeline in pg_control", wait_until, self.source_timeline_settled,
                            int(self.env.get("PG_TIMELINE_WAIT") or 60) * 1000, 0.2):
            return False
        argv = [f"{self.pg.bin}/pg_rewind", f"--target-pgdata={self.pg.data}", f"--source-server={self.pg.peer}"]
        if self.env.get("PG_CONFIG_FILE"):
            argv.append(f"--config-file={self.env['PG_CONFIG_FILE']}")
        rc, out, err = self.pg.as_pg(argv, float(self.env.get("PG_REWIND_TIMEOUT") or 600))
        self.rewind_output = (out + "\n" + err).strip()
        self.log("INFO", "pg_rewind: " + " | ".join(self.rewind_output.splitlines()))
        return rc == 0

    def rewind_believable(self, local_tli: str, fork: str) -> bool:
        """pg_rewind answered "no rewind required" while this node has WAL of its own timeline at or
        after the point where the peer's timeline forked off (the 60-minute soak: a data directory
        whose crash recovery had been interrupted): streaming would then fail until PG_STREAM_TIMEOUT
        (~60 s) and only a second rejoin rewinds. pg_waldump finding a record there settles it: the
        rejoin goes to pg_basebackup at once (the data directory moved aside, nothing lost)."""
        if "no rewind required" not in self.rewind_output or not fork or not local_tli.isdigit():
            return True
        waldump = f"{self.pg.bin}/pg_waldump"
        if not os.path.exists(waldump):
            return True
        rc, out, _ = self.pg.as_pg([waldump, f"--path={self.pg.data}/pg_wal", f"--timeline={local_tli}",
                                    f"--start={fork}", "--limit=1"], 30)
        if rc != 0 or not out.strip():
            return True                # no record of ours after the fork (or none readable): believed
        self.log("WARN", f"rejoin: pg_rewind found no rewind required, but this node's timeline {local_tli} "
                         f"has WAL after the fork at {fork} ({' '.join(out.split())[:200]}): not believed")
        return False

    def log_divergence(self) -> tuple[str, str]:
        """The WAL this node wrote that the peer does not have: from where the peer's timeline forked
        off (its history, over a replication connection) to the end of the local WAL. Logged before
        anything rewinds or moves it, so an operator can look for those transactions in the old copy.
        Returns (this node's timeline, the fork LSN), "" where unknown."""
        rc, ctl, _ = self.pg.as_pg([f"{self.pg.bin}/pg_controldata", self.pg.data], 10)
        if rc != 0:
            return "", ""
        fields = dict(line.split(":", 1) for line in ctl.splitlines() if ":" in line)
        local_tli = fields.get("Latest checkpoint's TimeLineID", "?").strip()
        local_end = fields.get("Latest checkpoint location", "?").strip()
        try:
            segments = sorted(f for f in os.listdir(f"{self.pg.data}/pg_wal") if len(f) == 24)
        except OSError:
            segments = []
        rc, peer_tli, _ = self.pg.peer_sql("select timeline_id from pg_control_checkpoint()")
        fork = "unknown"
        if rc == 0 and peer_tli.isdigit() and int(peer_tli) > 1:
            rc, hist, _ = self.pg.peer_sql(f"TIMELINE_HISTORY {peer_tli}", replication=True)
            for line in hist.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == local_tli:
                    fork = parts[1]
        self.log("WARN", f"rejoin: divergent WAL on this node: from {fork} (where peer timeline {peer_tli or '?'} "
                         f"forked off local timeline {local_tli}) to the local end (last checkpoint {local_end}, "
                         f"last segment {segments[-1] if segments else 'none'})")
        return local_tli, fork if fork != "unknown" else ""

    def _read_moved(self) -> list[tuple[str, int]]:
        try:
            with open(self.moved_list, encoding="utf-8") as fh:
                return [(p[0], int(p[1])) for p in (line.split() for line in fh) if len(p) == 2]
        except OSError:
            return []

    def _write_moved(self, entries):
        tmp = f"{self.moved_list}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(f"{d} {t}\n" for d, t in entries)
        os.replace(tmp, self.moved_list)

    def prune_moved_aside(self):
        days = int(self.env["MOVED_ASIDE_RETENTION_DAYS"])
        if days <= 0:
            return
        now, keep = int(time.time()), []
        for d, at in self._read_moved():
            if now - at > days * 86400:
                self.log("INFO", f"rejoin: removing {d} (moved aside {(now - at) // 86400} days ago; retention {days} days)")
                shutil.rmtree(d, ignore_errors=True)
            else:
                keep.append((d, at))
        self._write_moved(keep)

    def basebackup(self) -> bool:
        """A fresh copy from the peer; the old data directory is moved aside (timestamped), never deleted."""
        data = self.pg.data
        old = f"{data}.moved-{time.strftime('%Y%m%dT%H%M%S')}"
        self.prune_moved_aside()
        moved = False
        if os.path.isdir(data):
            move_dir(data, old)
            moved = True
            self._write_moved(self._read_moved() + [(old, int(time.time()))])
            self.log("WARN", f"rejoin: old data directory moved aside to {old} (hapbx-ha status lists it; "
                             "hapbx-ha discard-moved-aside removes it)")
        rc, out, err = self.pg.as_pg([f"{self.pg.bin}/pg_basebackup", "-D", data, "-h", self.env["PG_PEER_HOST"],
                                      "-p", self.env["PG_PEER_PORT"], "-U", self.env["PG_REPL_USER"], "-X", "stream",
                                      "-S", self.env["PG_SLOT"], "-c", "fast", "-w",
                                      *(["-d", self.pg.peer_ssl] if self.pg.peer_ssl else [])],
                                     float(self.env.get("PG_BASEBACKUP_TIMEOUT") or 3600))
        if rc != 0:
            self.log("ERROR", "pg_basebackup: " + " | ".join((out + "\n" + err).strip().splitlines()))
            # the partial copy goes; the old data comes back where it was
            if os.path.isdir(data):
                remove_dir(data)
            if moved:
                if os.path.ismount(data):
                    subprocess.run(["cp", "-a", "--", f"{old}/.", data], check=True)
                    shutil.rmtree(old)
                else:
                    move_dir(old, data)
                self._write_moved([e for e in self._read_moved() if e[0] != old])
            return False
        os.chmod(data, 0o700)
        return True

    def configure_standby(self) -> bool:
        data, user = self.pg.data, self.pg.os_user
        signal_file = f"{data}/standby.signal"
        with open(signal_file, "a"):
            pass
        if os.geteuid() == 0:
            shutil.chown(signal_file, user=user, group=user)
        self.pg.clear_fenced()
        # primary_conninfo and the slot normally come from postgresql.conf (the same on both nodes)
        if self.env.get("PG_WRITE_CONNINFO") != "1":
            return True
        conninfo = (f"host={self.env['PG_PEER_HOST']} port={self.env['PG_PEER_PORT']} user={self.env['PG_REPL_USER']} "
                    f"application_name={self.cfg.node}")
        if self.env.get("PG_PASSFILE"):
            conninfo += f" passfile={self.env['PG_PASSFILE']}"
        auto = f"{data}/postgresql.auto.conf"
        lines = []
        if os.path.exists(auto):
            with open(auto, encoding="utf-8") as fh:
                lines = [ln for ln in fh if not ln.lstrip().startswith(("primary_conninfo", "primary_slot_name"))]
        lines += [f"primary_conninfo = '{conninfo}'\n", f"primary_slot_name = '{self.env['PG_SLOT']}'\n"]
        tmp = f"{auto}.hapbx"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        os.chmod(tmp, 0o600)
        if os.geteuid() == 0:
            shutil.chown(tmp, user=user, group=user)
        os.replace(tmp, auto)
        return True

    def start_standby(self) -> bool:
        j = self.j
        return (j.timed("postgres: configure standby", self.configure_standby)
                and j.timed("postgres: start", self.pg.start, self.log))

    def follow(self) -> bool:
        return self.start_standby() and self.j.timed("postgres: streaming", self.wait_streaming,
                                                      int(self.env.get("PG_STREAM_TIMEOUT") or 60) * 1000)

    def wait_streaming(self, limit_ms: int) -> bool:
        """Streaming within limit_ms; PeerGone as soon as the peer is no longer a writable primary
        (it resigned meanwhile): waiting on would end in a basebackup from a server that is not one."""
        end = mono_ms() + limit_ms
        while mono_ms() < end:
            if self.pg.wait_streaming(min(PEER_CHECK_MS, max(end - mono_ms(), 0))):
                return True
            peer = self.pg.peer_role(2)
            if peer != "primary":
                raise PeerGone(peer)
        return False


def start_read_only(j: Job, peer: str) -> int:
    """`rejoin --read-only` while nobody writes (decide._maybe_start_read_only): local PostgreSQL
    started as a standby of the peer, read-only, so local readers work; it streams once the peer is
    a primary, and is rejoined (rewound) as usual if it cannot. Nothing is rewound or copied here:
    this node may hold the newest data, and stays promotable."""
    log = j.log
    if j.pg.running():
        log("INFO", "rejoin --read-only: local postgres runs already")
        return 0
    log("WARN", f"rejoin --read-only: nobody writes (peer postgres {peer}): starting local postgres as a "
                "read-only standby")
    return 0 if Rejoin(j).start_standby() else EXIT_FAILED


# ---------------------------------------------------------------- status
def status(argv: list[str]) -> int:
    cfg, env = load()
    run = cfg.run_dir
    out = []
    for fname, prefix, missing in (("status", "daemon_", "daemon=not-running"),
                                   ("reach.status", "reach_", "reach=not-running")):
        try:
            with open(f"{run}/{fname}", encoding="utf-8") as fh:
                out += [prefix + line.rstrip("\n") for line in fh if line.strip()]
        except OSError:
            out.append(missing)
    ka, pg, redis = Keepalived(env), Postgres(env), Redis(env)
    out.append(f"vrrp_state={ka.vrrp()[0]}")
    out.append(f"vip={'present' if ka.vip_present() else 'absent'}")
    role = pg.role()
    out.append(f"postgres={role}")
    if role == "standby":
        out.append(f"postgres_streaming={'yes' if pg.streaming() else 'no'}")
    if os.path.exists(pg.fenced_mark):
        out.append("postgres_fenced=yes")
    moved = moved_aside(cfg.lib_dir)
    if moved:
        out.append(f"postgres_moved_aside={moved}")
    out.append(f"redis={redis.role()}")
    if cfg.witness:
        store = EtcdStore(env.get("ETCD_ENDPOINTS", ""), env.get("ETCD_PREFIX", "/hapbx"), env)
        leader = store.get(store.key("leader"), 1000)
        out.append(f"etcd_leader={'unreachable' if leader is None else leader or 'none'}")
        for key, name in (("primary", "etcd_last_primary"), ("sync", "etcd_sync")):
            value = store.get(store.key(key), 1000)
            if value is not None:
                out.append(f"{name}={value or 'none'}")
    print("\n".join(out))
    return 0


JOBS = {"promote": promote, "demote": demote, "rejoin": rejoin, "status": status}


def main(name: str, argv: list[str]) -> int:
    try:
        return JOBS[name](argv)
    except SettingsError as e:
        print(f"hapbx-ha {name}: {e}", file=sys.stderr)
        return 2
