"""Node: the OS baseline of one host (PBX node, witness or media node)."""
from __future__ import annotations

import hashlib
import shlex
from dataclasses import dataclass, field
from typing import Mapping

import pulumi

from . import remote as rc
from .config import ClusterConfig, MediaNodeSettings, NodeSettings, WitnessSettings
from .render import MaskedSecrets, RenderContext, RenderedFile, baseline, masked_secrets
from .ssh import Endpoint


@dataclass
class NodeArgs:
    cluster: ClusterConfig
    host: NodeSettings | WitnessSettings | MediaNodeSettings
    endpoint: Endpoint
    private_key: pulumi.Input[str] | None
    secrets: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)


def real_contents(cluster: ClusterConfig, host, secrets: Mapping[str, pulumi.Output[str]], render,
                  files: list[RenderedFile]) -> list[tuple[RenderedFile, pulumi.Input[str]]]:
    """Pair each masked file with its real content; only files holding secrets wait on them."""
    if not any(f.secrets for f in files):
        return [(f, f.content) for f in files]
    names = sorted({s for f in files for s in f.secrets})
    real = pulumi.Output.all(*[secrets[n] for n in names]).apply(
        lambda vals: {f.path: f.content for f in render(RenderContext(
            cluster, host, MaskedSecrets({**masked_secrets(), **dict(zip(names, vals))})))})
    return [(f, real.apply(lambda by_path, p=f.path: by_path[p]) if f.secrets else f.content) for f in files]


def release_check_script(codename: str) -> str:
    """Refuse a host of another Debian release before anything is written to it: the package
    list, the repositories and the versions are the configured release's (components/releases.py)."""
    return f"""
running=$(. /etc/os-release && echo "${{VERSION_CODENAME:-unknown}}")
if [ "$running" != {shlex.quote(codename)} ]; then
  echo "this host runs Debian $running but os.release is {codename}: set os.release to $running" \
       "(or install {codename}) and run again" >&2
  exit 1
fi
echo "Debian $running"
"""


def packages_script(packages: list[str]) -> str:
    wanted = " ".join(shlex.quote(p) for p in packages)
    return f"""
missing=()
for p in {wanted}; do
  dpkg-query -W -f='${{db:Status-Status}}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${{#missing[@]}} -eq 0 ]; then echo unchanged; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "${{missing[@]}}"
echo "installed ${{missing[*]}}"
"""


def repo_key_script(name: str, url: str) -> str:
    dest = f"/etc/apt/keyrings/{name}.asc"
    return f"""
install -d -m 0755 /etc/apt/keyrings
tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
curl -fsSL --retry 3 {shlex.quote(url)} -o "$tmp"
if cmp -s "$tmp" {dest}; then echo unchanged; else install -m 0644 "$tmp" {dest}; echo changed; fi
"""


class Node(pulumi.ComponentResource):
    """Hostname, /etc/hosts, repositories and packages, sysctl, limits, chrony,
    nftables, journald and the live-recordings tmpfs of one host."""

    def __init__(self, name: str, args: NodeArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("hapbx:index:Node", name, None, opts)
        cluster, host = args.cluster, args.host
        self.connection = rc.connection(args.endpoint, args.private_key)
        ctx = RenderContext(cluster, host, masked_secrets())
        files = baseline.files(ctx)
        # before the packages: apt sources, and sshd's limits for the burst of connections that follows
        early_files = [f for f in files if f.path.startswith("/etc/apt/") or f.path == baseline.SSHD_DROP_IN]
        other_files = [f for f in files if f not in early_files]
        child = pulumi.ResourceOptions(parent=self)

        codename = cluster.release.codename
        release_check = rc.step(f"{name}-release", name, self.connection, "check the Debian release",
                                release_check_script(codename), child, triggers=[codename])
        checked = pulumi.ResourceOptions(parent=self, depends_on=[release_check])
        keys = [rc.step(f"{name}-repo-key-{r.name}", name, self.connection, f"fetch key of {r.name}",
                        repo_key_script(r.name, r.key_url), checked, triggers=[r.key_url])
                for r in cluster.packages.repositories]
        sources = rc.deploy_files(name, name, self.connection,
                                  real_contents(cluster, host, args.secrets, baseline.files, early_files),
                                  self, depends_on=[release_check, *keys])
        packages = (cluster.witness_packages() if isinstance(host, WitnessSettings) else
                    cluster.media_node_packages() if isinstance(host, MediaNodeSettings) else cluster.node_packages())
        self.packages = rc.step(
            f"{name}-packages", name, self.connection, "install packages",
            packages_script(packages),
            pulumi.ResourceOptions(parent=self, depends_on=[release_check, *keys, *sources]),
            triggers=[hashlib.sha256(" ".join(packages).encode()).hexdigest()])
        self.files = rc.deploy_files(name, name, self.connection,
                                     real_contents(cluster, host, args.secrets, baseline.files, other_files),
                                     self, depends_on=[self.packages])
        #: later components depend on this: the baseline is in place
        self.ready: list[pulumi.Resource] = [self.packages, *self.files]
        self.address = host.address
        self.register_outputs({
            "address": host.address,
            "packages": packages,
            "files": [f.path for f in files],
        })
