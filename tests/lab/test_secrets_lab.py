"""No secret on any command line on the nodes (issue 21): every process's argv is sampled on each
node (every 20 ms) while an apply runs every command again; no sample holds a generated credential
(the pulumi-random passwords in the lab's state: database roles, Redis users, etcd root and node,
CDR senders, the admin token). What ps shows, every local user sees."""
from __future__ import annotations

import json

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


def test_no_generated_secret_on_any_command_line_during_an_apply(lab):
    secrets = generated_secrets(lab)
    assert len(secrets) >= 10, "the lab's generated credentials were not found in its state"
    for host in hosts(lab):
        lab.sh(host, f"rm -f {SAMPLER}.log; nohup bash -c 'while :; do ps -eo args=; sleep 0.02; done' "
                     f">{SAMPLER}.log 2>/dev/null & echo $! >{SAMPLER}.pid")
    try:
        result = lab.apply(force=True)
        assert result.replaced, "the forced apply ran nothing"
    finally:
        for host in hosts(lab):
            lab.sh(host, f"kill $(cat {SAMPLER}.pid) 2>/dev/null; rm -f {SAMPLER}.pid", check=False)
    for host in hosts(lab):
        seen = lab.sh(host, f"sort -u {SAMPLER}.log; rm -f {SAMPLER}.log", timeout=120)
        lines = seen.splitlines()
        assert len(lines) > 50, (host, "the sampler saw almost nothing")
        # only the program's name is shown: the rest of such a line is what must not be printed
        leaked = sorted({line.split()[0] for line in lines for s in secrets if s in line})
        assert not leaked, (host, "command lines holding a generated secret, by program", leaked)
