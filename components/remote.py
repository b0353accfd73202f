"""One reusable remote-file mechanism on pulumi-command.

Every file goes: stdin -> staged temp copy -> checksum check -> the daemon's own
validator -> ``install`` with owner/mode only if it differs -> a "pending" marker
for its service. A per-service handler then reloads/restarts only if a marker
is pending (like an Ansible handler), so re-running every command changes
nothing and restarts nothing. Content travels on stdin, never in the command
line; files holding secrets turn command logging off.
"""
from __future__ import annotations

import base64
import hashlib
import re
import shlex
from dataclasses import dataclass
from typing import Callable, Sequence

import pulumi
from pulumi_command import remote

from hapbx_node.layout import PENDING_DIR, PLANNED_DIR, planned_restart_marker

from .render import RenderedFile
from .ssh import Endpoint

# PENDING_DIR: a changed file's marker until its handler acted. PLANNED_DIR: where a handler notes
# the restart it is making (epoch seconds): keepalived's check-local does not count that daemon's
# brief absence, so a planned restart never moves the VIP (honoured 30 s at most: a cut-off apply
# cannot blind the health check). Both from hapbx_node.layout.
# Steps run in parallel; systemd's manager does not like a daemon-reload while it
# re-executes ("Transport endpoint is not connected"): one manager operation at a time.
SYSTEMD_LOCK = "exec 9>/run/lock/hapbx-systemd.lock\nflock -w 120 9\n"


def command(name: str, conn: remote.ConnectionArgs, create: pulumi.Input[str], opts: pulumi.ResourceOptions,
            **kwargs) -> remote.Command:
    """Every remote command of the program: the one place for what they all share.

    ``add_previous_output_in_env=False``: pulumi-command otherwise asks sshd to set
    PULUMI_COMMAND_STDOUT/STDERR, which Debian's sshd refuses (no AcceptEnv), and logs a
    warning on every update and delete; no script of ours reads them.
    """
    return remote.Command(name, connection=conn, create=create, add_previous_output_in_env=False, opts=opts,
                          **kwargs)


def digest_of(content: pulumi.Input[str]) -> pulumi.Output[str]:
    """sha256 of a content, never secret: a hash reveals nothing of a 32-character random
    secret, and a secret digest would make the whole command text `[secret]` in a preview."""
    return pulumi.Output.unsecret(pulumi.Output.from_input(content).apply(
        lambda c: hashlib.sha256(c.encode()).hexdigest()))


def connection(endpoint: Endpoint, private_key: pulumi.Input[str] | None) -> remote.ConnectionArgs:
    return remote.ConnectionArgs(
        host=endpoint.host, port=endpoint.port, user=endpoint.user, host_key=endpoint.host_key,
        private_key=private_key, dial_error_limit=endpoint.dial_error_limit,
        per_dial_timeout=endpoint.per_dial_timeout)


def script(node: str, step: str, body: str) -> str:
    """Wrap a step so any failure says which node and step failed, with the line."""
    label = shlex.quote(f"{node}: {step}")
    return (f"set -euo pipefail\nstep={label}\n"
            'fail() { local rc=$?; echo "hapbx: [$step] failed (exit $rc, line $1)" >&2; exit "$rc"; }\n'
            "trap 'fail $LINENO' ERR\n"
            + body.strip() + "\n")


def _marker(key: str) -> str:
    return f"{PENDING_DIR}/{key}"


#: what a validator's output shows instead of a secret value (a secret-bearing file's
#: validator may quote the offending line, and pulumi-command's error carries all output)
SECRET_MASK = "[secret]"
_PLACEHOLDER = re.compile(r"@@SECRET:[a-z_]+@@")


def secret_values(masked: str, real: str) -> list[str] | None:
    """The secret values in ``real``, found where the masked render has placeholders; None when
    the two do not line up (the caller then withholds the validator's output entirely)."""
    pieces = _PLACEHOLDER.split(masked)
    if len(pieces) == 1:
        return []
    if not real.startswith(pieces[0]):
        return None
    values, pos = [], len(pieces[0])
    for i, nxt in enumerate(pieces[1:], start=1):
        last = i == len(pieces) - 1
        if nxt == "" and not last:
            return None  # two placeholders side by side: no boundary to split on
        end = len(real) - len(nxt) if last else real.find(nxt, pos)
        if end < pos:
            return None
        values.append(real[pos:end])
        pos = end + len(nxt)
    rebuilt = iter(values)
    if _PLACEHOLDER.sub(lambda _: next(rebuilt), masked) != real:
        return None
    return sorted({v for v in values if v}, key=len, reverse=True)


def secret_stdin(content: str, values: list[str] | None) -> str:
    """stdin of a secret-bearing file's install: the values to mask (base64, longest first;
    -1: withhold all output), then the content."""
    if values is None:
        return "-1\n" + content
    lines = "".join(base64.b64encode(v.encode()).decode() + "\n" for v in values)
    return f"{len(values)}\n{lines}{content}"


# Reads the secrets header of secret_stdin() into "$dir/secrets" (0600, in the private stage dir;
# never in argv: printf is a builtin) and defines mask(), which the validator's output goes through.
_READ_SECRETS = r"""umask 077
IFS= read -r count
: > "$dir/secrets"
for ((i = 0; i < count; i++)); do
  IFS= read -r line; printf '%s' "$line" | base64 -d >> "$dir/secrets"; echo >> "$dir/secrets"
done
mask() {
  if [ "$count" -lt 0 ]; then echo "(output withheld: the file holds secrets)"; return; fi
  awk -v m='@@MASK@@' 'FILENAME == ARGV[1] { if (length($0)) s[++n] = $0; next }
    { for (i = 1; i <= n; i++) while ((p = index($0, s[i])) > 0) $0 = substr($0, 1, p - 1) m substr($0, p + length(s[i]))
      print }' "$dir/secrets" -
}
""".replace("@@MASK@@", SECRET_MASK)


def install_script(f: RenderedFile, digest: str) -> str:
    """Install script; a secret-bearing file reads :func:`secret_stdin` (its secrets, then the
    content), and nothing it prints can carry a secret value."""
    dest = shlex.quote(f.path)
    mode = "%o" % int(f.mode, 8)
    secret = bool(f.secrets)
    validate = ""
    if f.validate:
        # The checker runs in a function: any shell it contains stays out of the quoting here.
        check = f.validate.replace("{path}", '"$stage"')
        tool = shlex.quote(f.validate.split()[0])
        shown = '"$(printf \'%s\\n\' "$out" | mask)"' if secret else '"$out"'
        validate = (f"check() {{\n{check}\n}}\n"
                    'if ! out=$(check 2>&1); then\n'
                    f"  printf 'hapbx: [%s] %s rejected the new file:\\n%s\\n' \"$step\" {tool} {shown} >&2\n"
                    "  exit 1\nfi\n")
    after = ""
    if f.service:
        after = f"mkdir -p {PENDING_DIR}; touch {_marker(f.service)}\n"
    elif f.action not in ("none", ""):
        after = (SYSTEMD_LOCK if f.action.startswith("systemctl") else "") + f.action + "\n"
    return f"""
dir=$(mktemp -d /tmp/hapbx-stage.XXXXXX)
trap 'rm -rf "$dir"' EXIT
{_READ_SECRETS if secret else ""}stage="$dir/$(basename {dest})"
cat > "$stage"
[ "$(sha256sum < "$stage" | cut -d' ' -f1)" = {digest} ] || {{ echo "hapbx: [$step] content damaged in transit" >&2; exit 1; }}
{validate}if [ -f {dest} ] && cmp -s "$stage" {dest} && [ "$(stat -c '%U:%G:%a' {dest})" = {f.owner}:{f.group}:{mode} ]; then
  echo unchanged; exit 0
fi
install -D -o {f.owner} -g {f.group} -m {f.mode} "$stage" {dest}
{after}echo changed
"""


def delete_script(f: RenderedFile, digest: str) -> str:
    # Only remove the file if it still holds what this resource installed: on a
    # replace the new content is installed first, and must survive the old delete.
    dest = shlex.quote(f.path)
    return (f'if [ -f {dest} ] && [ "$(sha256sum < {dest} | cut -d" " -f1)" = {digest} ]; then rm -f {dest}; fi\n')


def remote_file(name: str, node: str, conn: remote.ConnectionArgs, f: RenderedFile,
                content: pulumi.Input[str], opts: pulumi.ResourceOptions) -> remote.Command:
    """Install one rendered file. ``f`` is the file rendered with masked secrets (path, owner,
    mode, validator); ``content`` is the real text, a secret Output when it holds secrets."""
    secret = bool(f.secrets)
    digest = digest_of(content)
    stdin = (pulumi.Output.secret(pulumi.Output.from_input(content).apply(
        lambda c: secret_stdin(c, secret_values(f.content, c)))) if secret else content)
    return command(
        name, conn,
        digest.apply(lambda h: script(node, f"install {f.path}", install_script(f, h))),
        opts,
        delete=digest.apply(lambda h: script(node, f"remove {f.path}", delete_script(f, h))),
        stdin=stdin,
        triggers=[digest],
        logging=remote.Logging.NONE if secret else remote.Logging.STDOUT_AND_STDERR,
    )


@dataclass(frozen=True)
class Handler:
    service: str
    action: str          # reload | restart | reload-or-restart
    enable: bool = True
    #: shell condition that holds once the service serves again after a (re)start; polled every
    #: 0.2 s for at most ``health_seconds`` (empty: systemd's word is enough)
    health: str = ""
    health_seconds: int = 60
    #: shell run just before a reload/restart (e.g. note what ``health`` must see again)
    before: str = ""


def listening(port: int, proto: str = "tcp") -> str:
    """Shell condition (a Handler's ``health``): some socket listens on that port again."""
    return f"ss -Hl{'u' if proto == 'udp' else 't'}n sport = :{port} | grep -q ."


def holds_vip(vip: str) -> str:
    """Shell condition: this node holds the VIP right now (runtime state, read at apply time).
    grep reads all of ip's output (no -q): under pipefail an early exit would SIGPIPE ip and
    read as "not held"."""
    return f"ip -4 -o addr show | grep -F ' {vip}/' >/dev/null"


def defer_on_vip(vip: str, what: str) -> str:
    """Shell for the first pass of :func:`rolling`: on the node that holds the VIP, leave the
    pending change for the final pass (the peer goes first) and stop here."""
    return (f"if {holds_vip(vip)}; then\n"
            f"  echo {shlex.quote(f'deferred: this node holds the VIP {vip}; {what} after the peer')}; exit 0\n"
            "fi\n")


def wait_healthy(h: Handler) -> str:
    """Shell: poll ``h.health`` (bounded); fail the step naming the service if it never holds."""
    if not h.health:
        return ""
    return f"""healthy() {{
{h.health}
}}
deadline=$((SECONDS + {h.health_seconds}))
until healthy; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "hapbx: [$step] {h.service} not healthy {h.health_seconds} s after the {h.action}" >&2; exit 1
  fi
  sleep 0.2
done
"""


def handler_script(h: Handler, defer: str = "") -> str:
    """Start the service if it is not running, else reload/restart it if a change is pending.
    ``defer`` (from :func:`defer_on_vip`) runs right before a pending reload/restart and may end
    the script early, leaving the marker for a later pass."""
    svc = shlex.quote(h.service)
    verb = {"reload": "reload", "restart": "restart"}.get(h.action, "reload-or-restart")
    enable = f"systemctl enable -q {svc}\n" if h.enable else ""
    # the systemd lock (fd 9) is let go before waiting on the daemon's own health
    healthy = wait_healthy(h)
    after = f"exec 9>&-\n{healthy}" if healthy else ""
    planned, unplanned = "", ""
    if verb != "reload":
        note = shlex.quote(planned_restart_marker(h.service))
        planned = f"  install -d -m 0755 {PLANNED_DIR} && date +%s > {note}\n"
        unplanned = f"rm -f {note}\n"
    return SYSTEMD_LOCK + f"""
marker={_marker(h.service)}
if [ -e "$marker" ]; then systemctl daemon-reload; fi
{enable}if ! systemctl is-active -q {svc}; then
  systemctl start {svc}; rm -f "$marker"; result=started
elif [ -e "$marker" ]; then
{defer}{h.before}
{planned}  systemctl {verb} {svc}; rm -f "$marker"; result={verb}ed
else
  echo unchanged; exit 0
fi
{after}{unplanned}echo "$result"
"""


def file_digest(cmd: remote.Command) -> pulumi.Output[str]:
    """The content hash a :func:`remote_file` command carries (its trigger)."""
    return cmd.triggers.apply(lambda t: t[0])


def service_handler(name: str, node: str, conn: remote.ConnectionArgs, h: Handler,
                    file_hashes: Sequence[pulumi.Input[str]], opts: pulumi.ResourceOptions) -> remote.Command:
    """Reload/restart a service only when one of its files changed (pending marker)."""
    return command(name, conn, script(node, f"{h.action} {h.service}", handler_script(h)), opts,
                   triggers=list(file_hashes))


@dataclass
class RollingMember:
    """One node's part in a :func:`rolling` change."""
    node: str
    conn: remote.ConnectionArgs
    #: what makes this node's handler run again (its files' content hashes)
    triggers: Sequence[pulumi.Input[str]]
    #: its files and whatever else must be in place first
    depends_on: Sequence[pulumi.Resource] = ()


def rolling(name: str, title: str, members: Sequence[RollingMember], vip: str,
            body: Callable[[str, str], str], parent: pulumi.Resource) -> dict[str, tuple[remote.Command, remote.Command]]:
    """A change to a daemon that runs on every node, applied one node at a time, the VIP holder last.

    Who holds the VIP is runtime state, so the order is decided on the nodes at apply time by a
    static chain of two passes:

      first pass  ``<name>`` on each node in turn (each after the previous one is done and healthy):
                  starts the daemon if it is down, else applies a pending change, unless this node
                  holds the VIP: then it leaves the change pending (``defer``) and moves on;
      final pass  ``<name>-last`` on each node in turn, after every first pass: applies what is
                  still pending, i.e. the VIP holder's deferred change, once the peer's is done.

    ``name`` holds ``{node}``. ``body(node, defer)`` is the node's handler script; ``defer`` is
    shell that it runs right before a pending reload/restart ("" in the final pass). A pending
    change survives on the node as its marker, so an apply cut between the passes finishes the
    change on the next apply. Returns ``{node: (first, last)}``; dependants wait for ``last``.
    """
    first: list[remote.Command] = []
    for m in members:
        first.append(command(
            name.format(node=m.node), m.conn, script(m.node, title, body(m.node, defer_on_vip(vip, title))),
            pulumi.ResourceOptions(parent=parent, depends_on=[*m.depends_on, *first[-1:]]),
            triggers=list(m.triggers)))
    last: list[remote.Command] = []
    for m in members:
        last.append(command(
            name.format(node=m.node) + "-last", m.conn, script(m.node, f"{title} (VIP holder last)", body(m.node, "")),
            pulumi.ResourceOptions(parent=parent, depends_on=[*first, *last[-1:]]),
            triggers=list(m.triggers)))
    return {m.node: (f, l) for m, f, l in zip(members, first, last)}


def rolling_handlers(name: str, members: Sequence[RollingMember], handler: Handler | Callable[[str], Handler],
                     vip: str, parent: pulumi.Resource) -> dict[str, tuple[remote.Command, remote.Command]]:
    """:func:`rolling` with the standard handler (pending marker, reload/restart, health wait);
    ``handler`` may be a function of the node name (health checks that name the peer)."""
    of = handler if callable(handler) else (lambda _node: handler)
    h = of(members[0].node)
    return rolling(name, f"{h.action} {h.service}", members, vip,
                   lambda node, defer: handler_script(of(node), defer), parent)


def step(name: str, node: str, conn: remote.ConnectionArgs, title: str, body: str,
         opts: pulumi.ResourceOptions, triggers: Sequence[pulumi.Input[str]] | None = None,
         delete: str | None = None) -> remote.Command:
    """A plain idempotent remote step (packages, directories...)."""
    return command(name, conn, script(node, title, body), opts,
                   delete=script(node, f"undo {title}", delete) if delete else None, triggers=list(triggers or []))


def by_service(files: Sequence[RenderedFile], commands: Sequence[remote.Command]
               ) -> dict[str, tuple[str, list[remote.Command]]]:
    """Installed files (``commands`` in the order of ``files``) grouped by the service they belong
    to: {service: (action, its file commands)}; restart wins over reload when the files disagree."""
    out: dict[str, tuple[str, list[remote.Command]]] = {}
    for f, cmd in zip(files, commands):
        if f.service:
            action, cmds = out.get(f.service, (f.action, []))
            out[f.service] = ("restart" if "restart" in (f.action, action) else f.action, cmds + [cmd])
    return out


def deploy_files(resource_prefix: str, node: str, conn: remote.ConnectionArgs,
                 files: Sequence[tuple[RenderedFile, pulumi.Input[str]]], parent: pulumi.Resource,
                 depends_on: Sequence[pulumi.Resource] = (), handlers: bool = True) -> list[remote.Command]:
    """Install files, then one handler per service they belong to. Returns every command.

    Names: ``<prefix>-file-<path slug>`` and ``<prefix>-svc-<service>``. ``handlers=False``: the
    files only (the caller applies them, e.g. with :func:`rolling_handlers` across the nodes).
    """
    opts = pulumi.ResourceOptions(parent=parent, depends_on=list(depends_on))
    commands = [remote_file(f"{resource_prefix}-file-{f.slug}", node, conn, f, content, opts) for f, content in files]
    if not handlers:
        return commands
    for service, (action, cmds) in by_service([f for f, _ in files], commands).items():
        h = Handler(service, action, enable=not service.startswith("systemd-"))
        commands.append(service_handler(
            f"{resource_prefix}-svc-{service.removesuffix('.service')}", node, conn, h,
            [c.triggers.apply(lambda t: t[0]) for c in cmds],
            pulumi.ResourceOptions(parent=parent, depends_on=cmds)))
    return commands
