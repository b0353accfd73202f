"""`hapbx lab up|apply|status`: the real program applied to the local lab, and what `up` does after.

The lab's nodes, addresses and package lists come from the stack (one source:
`ClusterConfig.node_packages()` is what the image bakes and what Node installs; lab/context.py
reads the stack file). The program is applied by the live harness (harness/engine.py), which
runs it under Pulumi mocks and executes its remote commands over SSH.
"""
from __future__ import annotations

import os
import secrets
import sys
import time

from components.config import PROJECT, ClusterConfig
import harness
from harness import preview as plan
from lab import machinery
from lab.spec import LabSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def state_path(spec: LabSpec) -> str:
    # Inside the lab's state dir: `down` forgets the deployment together with the nodes.
    return os.path.join(spec.state_dir, "pulumi", "state.json")


def apply(raw: dict, spec: LabSpec, stack: str = "lab", force: bool = False, log=print,
          parallel: int | None = None) -> harness.ApplyResult:
    """Apply the stack as `pulumi up` would (``parallel``: the engine's default, 4 x CPUs)."""
    config = {f"{PROJECT}:{k}": v for k, v in raw.items()}
    return harness.apply(ROOT, PROJECT, stack, config, [], state_path(spec), force=force, log=log,
                         parallel=parallel)


def preview(raw: dict, spec: LabSpec, stack: str = "lab") -> plan.PreviewResult:
    """What `apply` would change, from the lab's state: nothing runs, nothing is written."""
    config = {f"{PROJECT}:{k}": v for k, v in raw.items()}
    return plan.preview(ROOT, PROJECT, stack, config, [], state_path(spec),
                        log=lambda line: print(line, file=sys.stderr))


def describe(cluster: ClusterConfig, spec: LabSpec, stack: str = "lab") -> str:
    st = machinery.status(spec)
    lines = [f"lab {spec.name}: bridge {spec.bridge} {spec.host_address}/{spec.prefixlen}, "
             f"{'isolated' if st.isolated else 'NOT isolated'}"]
    for n in st.nodes:
        state = f"running (pid {n.pid}), ssh {'answers' if n.ssh else 'does not answer'}" if n.running else "stopped"
        lines.append(f"  {n.name:<8} {n.address:<15} {state}")
    lines += [f"  VIP      {cluster.vip.address:<15} SIP udp/tcp {cluster.kamailio.sip_port}",
              f"  ssh:     ./hapbx lab ssh {cluster.nodes[0].name}",
              f"  stack:   Pulumi.{stack}.yaml (pulumi up -s {stack} works against the same nodes)"]
    if st.up:
        from . import monitor_view
        lines += monitor_view.lines(cluster)
    return "\n".join(lines)


#: lab-only user extensions `lab up` provisions for a softphone (passwords generated per lab)
SOFTPHONES = ("9001", "9002")


def softphones_path(spec: LabSpec) -> str:
    # In the lab's state dir (root only): `down` forgets them with the nodes.
    return os.path.join(spec.state_dir, "softphones.txt")


def softphone_passwords(spec: LabSpec) -> dict[str, str]:
    """The lab's softphone passwords, generated once (0600 file, root only)."""
    path = softphones_path(spec)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            have = dict(line.split(None, 1) for line in fh.read().splitlines() if line.strip())
        if set(have) >= set(SOFTPHONES):
            return {n: have[n].strip() for n in SOFTPHONES}
    words = {n: secrets.token_urlsafe(18) for n in SOFTPHONES}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("".join(f"{n} {pw}\n" for n, pw in words.items()))
    return words


def provision_softphones(spec: LabSpec, primary: str) -> None:
    """User extensions for a softphone, on the primary; the password goes on psql's stdin."""
    sql = ["\\set ON_ERROR_STOP 1", "SET log_statement = 'none';"]
    for number, password in softphone_passwords(spec).items():
        sql += [f"INSERT INTO pbx.extensions (number, type, display_name) VALUES ('{number}', 'user', "
                f"'Lab softphone {number}') ON CONFLICT (number) DO NOTHING;",
                f"SELECT pbx.set_sip_password('{number}', '{password}');"]
    out = machinery.run(spec, primary, "cd / && runuser -u postgres -- psql -X -q -A -t -d pbx",
                        input="\n".join(sql) + "\n", timeout=60)
    if out.returncode != 0:
        raise machinery.LabError(f"softphone extensions on {primary}", out.stderr.strip(), "see the PostgreSQL log")


def end_to_end(cluster: ClusterConfig, spec: LabSpec, seconds: float = 60) -> bool:
    """The end-to-end checks (lab/health.py), printed; then, when green, how to register a softphone."""
    from lab import health
    print(f"[lab {spec.name}] end-to-end checks:")
    result = health.wait_green(cluster, spec, seconds=seconds)
    for c in result:
        print(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<28} {c.detail}")
    if not all(c.ok for c in result):
        print(f"hapbx lab: the cluster is not healthy after {seconds:.0f} s (see FAIL above); "
              "`./hapbx lab apply` converges it again", file=sys.stderr)
        return False
    primary = next((n.name for n in cluster.nodes if health.status(spec, n.name).get("postgres") == "primary"),
                   cluster.primary.name)
    provision_softphones(spec, primary)
    vip, port = cluster.vip.address, cluster.kamailio.sip_port
    print(f"""
Register a softphone (on this host: the lab bridge {spec.host_address}/{spec.prefixlen} is the only way in):
  SIP server and domain   {vip}, port {port} (UDP or TCP)
  users                   {', '.join(SOFTPHONES)} (lab-only extensions; call one from the other)
  password                generated for this lab only, shown by: sudo cat {softphones_path(spec)}
  (another user: `./hapbx lab ssh {primary}` and the README's "Add an extension by SQL")""")
    return True


def preview_text(raw: dict, spec: LabSpec, stack: str = "lab") -> int:
    """`lab apply --preview`: print what apply would change."""
    try:
        print(preview(raw, spec, stack=stack).text)
    except OSError as err:  # the state is root's, 0600
        print(f"hapbx lab: preview: cannot read the state: {err}", file=sys.stderr)
        return 1
    return 0


def converge(raw: dict, cluster: ClusterConfig, spec: LabSpec, stack: str = "lab", *, build: bool = False,
             no_apply: bool = False, force: bool = False) -> int:
    """`lab up` (build: the nodes first, then the end-to-end checks) and `lab apply`."""
    if build:
        machinery.up(spec)
        if no_apply:
            print(describe(cluster, spec, stack))
            return 0
    started = time.monotonic()
    result = apply(raw, spec, stack=stack, force=force)
    print(f"[lab {spec.name}] apply: {len(result.created)} created, {len(result.updated)} updated, "
          f"{len(result.replaced)} replaced, {len(result.deleted)} deleted, {len(result.unchanged)} unchanged "
          f"... {time.monotonic() - started:.1f}s")
    print(describe(cluster, spec, stack))
    if build:
        return 0 if end_to_end(cluster, spec) else 1
    return 0
