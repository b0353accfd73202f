"""The lease store behind one interface. `EtcdStore` speaks to etcd through etcdctl (v3 API):
credentials come from ETCDCTL_USER/ETCDCTL_PASSWORD in the environment, never argv; every call is
bounded as a whole (lease keep-alive --once ignores --command-timeout). Another store (Consul,
ZooKeeper) would implement `Store` and nothing else changes."""
from __future__ import annotations

import re
import subprocess
from abc import ABC, abstractmethod
from typing import Optional

from .clock import mono_ms
from .decide import Acquired, Adopted, Holder, LeaseGone, NotAcquired, RenewFailed, Renewed


class Store(ABC):
    """Keys: `leader` (the lease holder's name, attached to its lease), `beat` (the holder's
    decide.beat_text after each renewal), `claim` (a follower's VIP claim), `primary` (the last node promoted), `sync` ("on" |
    "relaxed:<node>" | "accepted-by-operator")."""

    @abstractmethod
    def renew(self, lease_id: str, timeout_ms: int) -> Renewed | RenewFailed | LeaseGone: ...

    @abstractmethod
    def holder(self, timeout_ms: int) -> Holder:
        """Who holds the leader key, and the beat, in one read."""

    @abstractmethod
    def beat(self, node: str, text: str, timeout_ms: int) -> Optional[str]:
        """The beat written if `node` holds the leader key; returns the claim key's value read in the
        same transaction ("" none), None if not written."""

    @abstractmethod
    def claim(self, node: str, text: str, timeout_ms: int) -> bool:
        """This node's keepalived claimed the VIP while the peer leads (decide.Claim)."""

    @abstractmethod
    def acquire(self, node: str, ttl_s: int, timeout_ms: int) -> Acquired | NotAcquired: ...

    @abstractmethod
    def adopt(self, timeout_ms: int) -> Adopted | NotAcquired: ...

    @abstractmethod
    def revoke(self, lease_id: str, timeout_ms: int) -> bool: ...

    @abstractmethod
    def get(self, key: str, timeout_ms: int) -> Optional[str]: ...

    @abstractmethod
    def put_if_leader(self, node: str, key: str, value: str, timeout_ms: int) -> bool: ...


_TTL = re.compile(r"TTL\((\d+)\)")
_LEASE_FIELD = re.compile(r'"Lease" : (\d+)')


def _oneline(text: str) -> str:
    return " ".join(text.split())[:300]


#: what etcd answers for a lease that is gone: an answer, not a member that failed to give one
_DEFINITE = ("not found", "expired", "TTL(0)")


class EtcdStore(Store):
    """One member at a time, the same one while it answers, the next after a call it failed (sticky
    failover). etcdctl given every member sends each call to any of them, and a member cut from the
    raft leader holds a renewal until the call times out: the holder fenced itself with a quorum
    alive (lab drill 11, a flapping link with the raft leader on the other PBX node)."""

    def __init__(self, endpoints: str, prefix: str, env: dict[str, str]):
        self.members = [e for e in endpoints.split(",") if e] or [endpoints]
        self.current = 0
        self.prefix = prefix
        self.env = {**env, "ETCDCTL_API": "3"}

    @property
    def endpoint(self) -> str:
        return self.members[self.current]

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def _ctl(self, limit_ms: int, *args: str, stdin: str | None = None) -> tuple[int, str]:
        limit_ms = max(limit_ms, 50)
        # timeout(1) bounds etcdctl even when this process dies mid-call (SIGKILL, a crash): a
        # subprocess timeout dies with us, and `lease keep-alive --once` against a member that
        # never answered ran on for hours, orphaned. Ours is only the backstop, 1 s later
        # (killing timeout(1) itself would orphan etcdctl).
        argv = ["timeout", "-k", "0.5", f"{limit_ms / 1000:.3f}",
                "etcdctl", f"--endpoints={self.endpoint}", f"--dial-timeout={limit_ms * 3 // 4}ms",
                f"--command-timeout={limit_ms}ms", *args]
        try:
            p = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env,
                               timeout=limit_ms / 1000 + 1.0)
            rc, out = p.returncode, (p.stdout + p.stderr).strip()
            if rc in (124, 137):        # timeout(1): TERM at the limit, KILL 0.5 s later
                out = f"no answer within {limit_ms}ms" + (f": {out}" if out else "")
        except subprocess.TimeoutExpired:
            rc, out = 124, f"no answer within {limit_ms}ms"
        except OSError as e:
            return 127, str(e)
        if rc != 0 and not any(word in out for word in _DEFINITE):
            out = f"{self.endpoint}: {out}"
            self.current = (self.current + 1) % len(self.members)
        return rc, out

    def renew(self, lease_id, timeout_ms):
        t0 = mono_ms()
        rc, out = self._ctl(timeout_ms, "lease", "keep-alive", "--once", lease_id)
        m = _TTL.search(out)
        if rc == 0 and m and int(m.group(1)) > 0:
            return Renewed(at=t0, ttl_s=int(m.group(1)))
        if "not found" in out or "expired" in out or "TTL(0)" in out:
            return LeaseGone(_oneline(out))
        return RenewFailed(at=t0, error=f"exit {rc}, {mono_ms() - t0}ms: {_oneline(out)}")

    def get(self, key, timeout_ms):
        rc, out = self._ctl(timeout_ms, "get", key, "--print-value-only")
        if rc != 0:
            return None
        return out.split("\n", 1)[0] if out else ""

    def holder(self, timeout_ms):
        rc, out = self._ctl(timeout_ms, "get", "--prefix", self.key(""))
        if rc != 0:
            return Holder(None)
        lines = out.split("\n") if out else []
        values = dict(zip(lines[0::2], lines[1::2]))
        return Holder(values.get(self.key("leader"), ""), values.get(self.key("beat"), ""))

    def beat(self, node, text, timeout_ms):
        leader, claim = self.key("leader"), self.key("claim")
        txn = f'value("{leader}") = "{node}"\n\nput {self.key("beat")} "{text}"\nget {claim}\n\n\n'
        rc, out = self._ctl(timeout_ms, "txn", stdin=txn)
        lines = out.split("\n")
        if rc != 0 or lines[0] != "SUCCESS":
            return None
        return lines[lines.index(claim) + 1] if claim in lines[:-1] else ""

    def claim(self, node, text, timeout_ms):
        rc, _ = self._ctl(timeout_ms, "put", self.key("claim"), text)
        return rc == 0

    def acquire(self, node, ttl_s, timeout_ms):
        t0 = mono_ms()
        rc, out = self._ctl(timeout_ms, "lease", "grant", str(ttl_s))
        if rc != 0 or not out.startswith("lease "):
            return NotAcquired(None, f"lease grant failed: {_oneline(out)}")
        lease_id = out.split()[1]
        key = self.key("leader")
        txn = f'create("{key}") = "0"\n\nput {key} {node} --lease={lease_id}\n\nget {key}\n\n'
        rc, out = self._ctl(timeout_ms, "txn", stdin=txn)
        lines = out.split("\n")
        # txn exits 0 on SUCCESS and FAILURE alike: the first line decides
        if rc == 0 and lines[0] == "SUCCESS":
            return Acquired(lease_id=lease_id, at=t0)
        subprocess.Popen(["etcdctl", f"--endpoints={self.endpoint}", "--command-timeout=300ms", "lease",
                          "revoke", lease_id], env=self.env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        if rc == 0 and lines[0] == "FAILURE":
            return NotAcquired(lines[3] if len(lines) > 3 else None)
        return NotAcquired(None, f"acquire txn failed: {_oneline(out)}")

    def adopt(self, timeout_ms):
        t0 = mono_ms()
        rc, out = self._ctl(timeout_ms, "get", self.key("leader"), "-w", "fields")
        m = _LEASE_FIELD.search(out)
        if rc != 0 or not m or m.group(1) == "0":
            return NotAcquired(None, "no lease on the leader key")
        lease_id = f"{int(m.group(1)):x}"
        renewed = self.renew(lease_id, timeout_ms)
        if isinstance(renewed, Renewed):
            return Adopted(lease_id=lease_id, at=t0, ttl_s=renewed.ttl_s)
        return NotAcquired(None, f"could not adopt lease {lease_id}")

    def revoke(self, lease_id, timeout_ms):
        rc, _ = self._ctl(timeout_ms, "lease", "revoke", lease_id)
        return rc == 0

    def put_if_leader(self, node, key, value, timeout_ms):
        leader = self.key("leader")
        txn = f'value("{leader}") = "{node}"\n\nput {key} {value}\n\n\n'
        rc, out = self._ctl(timeout_ms, "txn", stdin=txn)
        return rc == 0 and out.split("\n", 1)[0] == "SUCCESS"
