"""What ps shows every local user: each process's command line sampled on every host of the lab
(every 20 ms) while something runs, then checked for the lab's generated credentials (the
pulumi-random passwords in its state: database roles, Redis users, etcd root and node, CDR
senders, the admin token). Used around an apply (test_secrets_lab) and a failover drill
(test_drill_lab)."""
from __future__ import annotations

import json
from contextlib import contextmanager

from harness.secrets import string_leaves
from lab import deploy

SAMPLER = "/run/hapbx-argv-scan"


def generated_secrets(lab) -> list[str]:
    with open(deploy.state_path(lab.spec)) as fh:
        resources = json.load(fh)["resources"].values()
    return sorted({leaf for r in resources if r["name"].startswith("secret-")
                   for key, value in r.get("outputs", {}).items() if key == "result"
                   for leaf in string_leaves(value) if len(leaf) >= 16})


def hosts(lab) -> list[str]:
    return [n.name for n in lab.cluster.nodes] + ([lab.cluster.witness.name] if lab.cluster.witness else [])


@contextmanager
def sampling(lab):
    """Sample every host's command lines for the body of the ``with``; yields the samples (by host,
    the distinct lines), filled in when the body ends."""
    seen: dict[str, list[str]] = {}
    for host in hosts(lab):
        lab.sh(host, f"rm -f {SAMPLER}.log; nohup bash -c 'while :; do ps -eo args=; sleep 0.02; done' "
                     f">{SAMPLER}.log 2>/dev/null & echo $! >{SAMPLER}.pid")
    try:
        yield seen
    finally:
        for host in hosts(lab):
            lab.sh(host, f"kill $(cat {SAMPLER}.pid) 2>/dev/null; rm -f {SAMPLER}.pid", check=False)
        for host in hosts(lab):
            seen[host] = lab.sh(host, f"sort -u {SAMPLER}.log; rm -f {SAMPLER}.log", timeout=120).splitlines()


def assert_no_secret(seen: dict[str, list[str]], secrets: list[str], programs: tuple[str, ...] = ()) -> None:
    """No sampled line holds a secret; and each of ``programs`` was seen running on some host (the
    samples covered what they were meant to)."""
    assert len(secrets) >= 10, "the lab's generated credentials were not found in its state"
    # the witness runs little (etcd, chrony, sshd): a few distinct lines there, many on the nodes
    assert sum(len(lines) for lines in seen.values()) > 50, "the sampler saw almost nothing"
    for host, lines in seen.items():
        assert any("ps -eo args=" in line for line in lines), (host, "the sampler did not run")
        # only the program's name is shown: the rest of such a line is what must not be printed
        leaked = sorted({line.split()[0] for line in lines for s in secrets if s in line})
        assert not leaked, (host, "command lines holding a generated secret, by program", leaked)
    everything = "\n".join(line for lines in seen.values() for line in lines)
    missing = [p for p in programs if p not in everything]
    assert not missing, ("never seen running during the scan", missing)
