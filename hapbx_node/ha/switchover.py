"""hapbx-ha switchover [--to NODE] [--timeout SECONDS]: the planned hand-over of the lead (lease,
writes, VIP) to the synchronous standby, run on the node that leads (like `patronictl switchover`).

It refuses, with the reason, when the hand-over could lose or stall anything: this node does not
lead, maintenance is on, the standby is not streaming synchronously (or etcd still marks it stale:
a stale standby is never promoted, the cut would leave nobody writing). Then it stops this node's
keepalived (the unit drops the VIP; the leader daemon resigns: fast shutdown, everything streamed),
waits until the peer holds the lease and its PostgreSQL is the primary, starts keepalived again
(BACKUP, nopreempt: the VIP stays with the peer) and waits until this node streams from the peer.

Exit 0 done, 1 failed (this node's keepalived is started again in every case), 2 usage,
3 refused (nothing was touched)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Optional

from .. import layout
from .clock import mono_ms
from .daemon import Logger
from .drivers import Keepalived, Postgres, wait_until
from .settings import SettingsError, load
from .store import EtcdStore

EXIT_FAILED, EXIT_USAGE, EXIT_REFUSED = 1, 2, 3
#: the keepalived unit, stopped and started through systemctl (the HA env may name other commands)
STOP_CMD = "systemctl stop keepalived.service"
START_CMD = "systemctl start keepalived.service"


@dataclass(frozen=True)
class Facts:
    """What the checks look at, read once before anything is touched."""
    node: str
    peer: str
    to: Optional[str]
    witness: bool
    hold: bool                  # this node's leader daemon holds the lease (or authority)
    holder: str                 # who the daemon last read as the holder
    vrrp: str
    vip: bool
    postgres: str               # local role: primary | standby | down | unresponsive
    maintenance: bool
    peer_streaming: Optional[bool]   # streaming, caught up, replied lately (None: unread)
    peer_sync: Optional[bool]        # sync_state sync
    store_sync: Optional[str]        # etcd's sync key ("on", "relaxed:<node>", ...); None unread


def refusal(f: Facts) -> Optional[str]:
    """Why this switchover must not start, or None. Pure: tests/unit/test_ha_switchover.py."""
    if f.to is not None and f.to not in (f.node, f.peer):
        return f"--to {f.to}: not a node of this pair ({f.node}, {f.peer})"
    if f.to == f.node:
        return f"{f.node} is this node: run the switchover on the leader, naming the node to lead next"
    if not f.hold:
        leader = f.holder if f.holder not in ("", "?") else "the node that leads"
        return f"{f.node} does not lead: run `hapbx-ha switchover` on {leader}"
    if f.maintenance:
        return f"maintenance is on here: the leader daemon would not hand over (hapbx-ha maintenance off)"
    if not (f.vrrp == "MASTER" and f.vip and f.postgres == "primary"):
        return (f"{f.node} is not a healthy leader (keepalived {f.vrrp}, VIP {'present' if f.vip else 'absent'}, "
                f"postgres {f.postgres}): a failover is under way or needed, not a switchover")
    if f.peer_streaming is None or f.peer_sync is None:
        return "could not read pg_stat_replication here"
    if not f.peer_streaming:
        return f"{f.peer} is not streaming from {f.node} (or not caught up, or silent): it would lead on old data"
    if f.witness and not f.peer_sync:
        return f"{f.peer} is not a synchronous standby yet: commits acknowledged here could be missing there"
    if f.witness and f.store_sync != "on":
        return (f"etcd marks {f.peer} as not promotable (sync={f.store_sync or 'unreadable'}): it missed commits "
                "while it was away and is never promoted until it is synchronous again; wait, or fail over")
    return None


def _run(cmd: str) -> tuple[int, str]:
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    return p.returncode, (p.stderr or p.stdout).strip()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="hapbx-ha switchover", description=__doc__.split("\n\n")[0])
    ap.add_argument("--to", help="the node to lead next (the peer; the default)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds for each wait (60)")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EXIT_USAGE if e.code else 0
    try:
        cfg, env = load()
    except SettingsError as e:
        print(f"hapbx-ha switchover: {e}", file=sys.stderr)
        return EXIT_USAGE
    log = Logger(cfg.node, env, "switchover")
    pg, ka = Postgres(env), Keepalived(env)
    store = EtcdStore(env.get("ETCD_ENDPOINTS", ""), env.get("ETCD_PREFIX", "/hapbx"), env) if cfg.witness else None
    status = _daemon_status(cfg.run_dir)
    sync = pg.sync_state(cfg.peer, cfg.sync_reply_max_ms, 3.0)
    facts = Facts(node=cfg.node, peer=cfg.peer, to=args.to, witness=cfg.witness, hold=status.get("hold") == "1",
                  holder=status.get("holder", "?"), vrrp=ka.vrrp()[0], vip=ka.vip_present(), postgres=pg.role(),
                  maintenance=os.path.exists(f"{cfg.lib_dir}/maintenance"),
                  peer_streaming=sync[0] if sync else None, peer_sync=sync[1] if sync else None,
                  store_sync=store.get(store.key("sync"), 2000) if store else None)
    why = refusal(facts)
    if why:
        print(f"hapbx-ha switchover: refused: {why}", file=sys.stderr)
        return EXIT_REFUSED
    stop_cmd, start_cmd = env.get("KEEPALIVED_STOP_CMD", STOP_CMD), env.get("KEEPALIVED_START_CMD", START_CMD)
    log("WARN", f"switchover to {cfg.peer} requested by the operator")
    t0 = mono_ms()
    rc, err = _run(stop_cmd)
    if rc != 0:
        print(f"hapbx-ha switchover: {cfg.node}: stopping keepalived failed: {err}", file=sys.stderr)
        _run(start_cmd)
        return EXIT_FAILED
    moved = wait_until(lambda: (store is None or store.get(store.key("leader"), 1000) == cfg.peer)
                       and pg.peer_role() == "primary", int(args.timeout * 1000), 0.2)
    lead_s = (mono_ms() - t0) / 1000
    rc, err = _run(start_cmd)
    if rc != 0:
        print(f"hapbx-ha switchover: {cfg.node}: starting keepalived again failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    if not moved:
        print(f"hapbx-ha switchover: {cfg.peer} did not take the lead within {args.timeout:g} s; keepalived runs "
              f"here again (this node may lead again). `hapbx-ha status` on both nodes, `hapbx-ha log`.",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"{cfg.peer} leads (lease, PostgreSQL primary) {lead_s:.1f} s after keepalived stopped here")
    streams = wait_until(lambda: pg.role() == "standby" and pg.streaming(), int(args.timeout * 1000), 0.2)
    if not streams:
        print(f"hapbx-ha switchover: {cfg.node} is not streaming from {cfg.peer} after {args.timeout:g} s "
              "(the leader daemon rejoins it: hapbx-ha status, hapbx-ha log)", file=sys.stderr)
        return EXIT_FAILED
    took = (mono_ms() - t0) / 1000
    print(f"{cfg.node} streams from {cfg.peer} again {took:.1f} s after the start")
    log("INFO", f"switchover to {cfg.peer} done: lead moved in {lead_s:.1f} s, streaming again after {took:.1f} s")
    return 0


def _daemon_status(run_dir: str) -> dict[str, str]:
    try:
        with open(os.path.join(run_dir, os.path.basename(layout.HA_STATUS)), encoding="utf-8") as fh:
            return layout.parse_status(fh.read())
    except OSError:
        return {}

