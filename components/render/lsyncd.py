"""lsyncd on the PBX nodes: each node's recordings to the peer, rsync over SSH with a dedicated
user and a key restricted to the recordings directory (see components/recording_sync.py). A media
node (mediaNodes) sends its own to both PBX nodes the same way; it receives nothing."""
from __future__ import annotations

import shlex

from . import MANAGED_BY, RenderContext, RenderedFile, template

USER = GROUP = "hapbx-rec"
#: the receiving user's home: root-owned, holds only .ssh/authorized_keys (root-owned too)
HOME = "/var/lib/hapbx/recsync"
#: the sending side (lsyncd runs as root): its key and the peer's pinned host key
KEY_DIR = "/var/lib/hapbx/recsync-key"
KEY = f"{KEY_DIR}/id_ed25519"
KNOWN_HOSTS = f"{KEY_DIR}/known_hosts"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
CONF = "/etc/hapbx/lsyncd.conf.lua"
UNIT = "hapbx-recsync.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
STATUS = "/run/hapbx-recsync/status"

# lsyncd has no check-only switch. Its own loader is the real check: the staged file is loaded
# through a wrapper that hands every sync{} an init hook exiting 0, so lsyncd parses the Lua,
# validates settings{} and every sync{} (unknown keys, bad values, a missing source directory)
# exactly as at start, then stops before its first rsync. `luac -p` would check syntax only.
CHECK_WRAPPER = ("local real_sync = sync",
                 "sync = function(cfg) cfg.init = function() io.stdout:write('lsyncd accepted the configuration\\n') "
                 "os.exit(0) end return real_sync(cfg) end",
                 "dofile(os.getenv('HAPBX_LSYNCD_CONF'))")
VALIDATE = ('d=$(dirname {path}); printf "%s\\n" ' + " ".join(shlex.quote(line) for line in CHECK_WRAPPER)
            + ' > "$d/check.lua"; HAPBX_LSYNCD_CONF={path} timeout 20 lsyncd -nodaemon "$d/check.lua"')


def own_dir(ctx: RenderContext) -> str:
    """Where this node's recordings are written (and sent from)."""
    return f"{ctx.cluster.recordings.directory}/{ctx.host.name}"


def rsh() -> str:
    """ssh for rsync: the pinned host key only; one multiplexed connection kept for ten minutes, so
    a batch costs an rsync exchange, not an SSH handshake (~0.6 s on the lab)."""
    return (f"/usr/bin/ssh -i {KEY} -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile={KNOWN_HOSTS} "
            "-o ConnectTimeout=5 -o ServerAliveInterval=10 -o ServerAliveCountMax=3 "
            "-o ControlMaster=auto -o ControlPersist=600 -o ControlPath=/run/hapbx-recsync/ssh-%C")


def targets(ctx: RenderContext) -> list:
    """Where this host's recordings go: the peer; from a media node both PBX nodes."""
    return list(ctx.cluster.nodes) if ctx.is_media_node else [ctx.peer]


def senders(ctx: RenderContext) -> list:
    """Whose recordings this PBX node receives: the peer's and every media node's (none on a media node)."""
    if ctx.is_media_node:
        return []
    return [ctx.peer, *ctx.cluster.media_nodes]


def media_key_line(name: str) -> str:
    """How a media node's lsyncd key reaches a PBX node's authorize step (after the peer's keys)."""
    return f"media-key {name} "


def files(ctx: RenderContext) -> list[RenderedFile]:
    if ctx.is_witness:
        return []
    c = ctx.cluster
    for opt in c.recordings.rsync_options:
        if '"' in opt or "\\" in opt:
            raise ValueError(f"recordings.rsyncOptions: {opt!r} holds a quote or backslash")
    conf = template("lsyncd/lsyncd.conf.lua.j2", ctx, managed_by_text=MANAGED_BY, source=own_dir(ctx), user=USER,
                    delay=c.recordings.sync_delay_seconds, recordings_dir=c.recordings.directory, status_file=STATUS,
                    rsh=rsh(), extra=c.recordings.rsync_options, targets=targets(ctx))
    return [
        RenderedFile(CONF, conf, service=UNIT, action="restart", validate=VALIDATE),
        RenderedFile(UNIT_PATH, template("lsyncd/hapbx-recsync.service.j2", ctx, conf=CONF,
                                                            targets=targets(ctx)), service=UNIT,
                     action="restart", validate="! systemd-analyze verify --man=no {path} 2>&1 | grep ."),
    ]


# --- step scripts (components.recording_sync) ------------------------------------------------------

def keys_script(ctx: RenderContext) -> str:
    """Users, directories and this node's key, made once on the node. Prints only public keys
    (this node's lsyncd key and its SSH host key): the peer's authorize step reads them."""
    c, host = ctx.cluster, ctx.host
    d = c.recordings.directory
    # the senders' directories here, each written by its key only (authorize_script)
    received = "".join(f"install -d -o {USER} -g {GROUP} -m 2770 {d}/{s.name}\n" for s in senders(ctx))
    return f"""
getent group {GROUP} >/dev/null || groupadd -r {GROUP}
id -u {USER} >/dev/null 2>&1 || useradd -r -g {GROUP} -d {HOME} -M -s /bin/sh -c "hapbx recordings from the peer" {USER}
[ -d /var/lib/hapbx ] || install -d -m 0755 /var/lib/hapbx
install -d -o root -g root -m 0755 {HOME} {HOME}/.ssh
install -d -o root -g root -m 0700 {KEY_DIR}
install -d -o root -g {GROUP} -m 2770 {d} {d}/{host.name}
{received}[ -f {KEY} ] || ssh-keygen -q -t ed25519 -N '' -C hapbx-recsync@{host.name} -f {KEY} >/dev/null
chmod 0600 {KEY}
echo "user-key $(cut -d' ' -f1,2 {KEY}.pub)"
echo "host-key $(cut -d' ' -f1,2 {HOST_KEY})"
"""


def authorize_script(ctx: RenderContext) -> str:
    """On stdin the peer's keys (its keys step's output): its lsyncd key may write into
    <recordings>/<peer> here and nothing else (rrsync -wo -no-del, from the peer's addresses,
    no pty or forwarding); its host key is pinned for this node's lsyncd."""
    if ctx.is_media_node:
        return media_authorize_script(ctx)
    c, peer = ctx.cluster, ctx.peer
    target = f"{c.recordings.directory}/{peer.name}"
    options = f'restrict,from="{peer.address},{c.vip.address}",command="/usr/bin/rrsync -wo -no-del {target}"'
    # each media node's key (mediaNodes: a "media-key <name> " line after the peer's keys), restricted
    # to its own directory here and to its address
    media_keys, media_lines = "", ""
    for i, m in enumerate(c.media_nodes):
        opts = (f'restrict,from="{m.address}",command="/usr/bin/rrsync -wo -no-del '
                f'{c.recordings.directory}/{m.name}"')
        media_keys += (f"media_key_{i}=$(printf '%s\\n' \"$input\" | sed -n 's/^{media_key_line(m.name)}//p')\n"
                       f'case "$media_key_{i}" in\n  "ssh-ed25519 "*) ;;\n'
                       f'  *) echo "hapbx: [$step] no ed25519 public key from {m.name}: \'$media_key_{i}\'" >&2; exit 1 ;;\n'
                       "esac\n")
        media_lines += f' {shlex.quote(opts)}" $media_key_{i} hapbx-recsync@{m.name}"'
    return f"""
input=$(cat)
user_key=$(printf '%s\n' "$input" | sed -n 's/^user-key //p')
host_key=$(printf '%s\n' "$input" | sed -n 's/^host-key //p')
for k in "$user_key" "$host_key"; do
  case "$k" in
    "ssh-ed25519 "*) ;;
    *) echo "hapbx: [$step] no ed25519 public key from {peer.name}: '$k'" >&2; exit 1 ;;
  esac
done
{media_keys}tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
changed=0
printf '%s\n' {shlex.quote("# " + MANAGED_BY)} {shlex.quote(options)}" $user_key hapbx-recsync@{peer.name}"{media_lines} > "$tmp"
if ! cmp -s "$tmp" {HOME}/.ssh/authorized_keys; then
  install -o root -g root -m 0644 "$tmp" {HOME}/.ssh/authorized_keys; changed=1
fi
printf '%s %s\n' {peer.address} "$host_key" > "$tmp"
if ! cmp -s "$tmp" {KNOWN_HOSTS}; then
  install -o root -g root -m 0644 "$tmp" {KNOWN_HOSTS}; changed=1
fi
[ $changed = 1 ] && echo changed || echo unchanged
"""


def pbx_key_line(name: str) -> str:
    """How a PBX node's keys reach a media node's authorize step: its lines, each after its name."""
    return f"{name} "


def media_authorize_script(ctx: RenderContext) -> str:
    """A media node receives nothing: it only pins both PBX nodes' host keys for its lsyncd. On stdin
    each node's keys step output, every line after "<node> " (pbx_key_line)."""
    nodes = ctx.cluster.nodes
    checks = "".join(
        f"host_key_{i}=$(printf '%s\\n' \"$input\" | sed -n 's/^{pbx_key_line(n.name)}host-key //p')\n"
        f'case "$host_key_{i}" in\n  "ssh-ed25519 "*) ;;\n'
        f'  *) echo "hapbx: [$step] no ed25519 host key from {n.name}: \'$host_key_{i}\'" >&2; exit 1 ;;\n'
        "esac\n" for i, n in enumerate(nodes))
    lines = " ".join(f'"{n.address} $host_key_{i}"' for i, n in enumerate(nodes))
    return f"""
input=$(cat)
{checks}tmp=$(mktemp); trap 'rm -f "$tmp"' EXIT
printf '%s\n' {lines} > "$tmp"
if cmp -s "$tmp" {KNOWN_HOSTS}; then echo unchanged; exit 0; fi
install -o root -g root -m 0644 "$tmp" {KNOWN_HOSTS}
echo changed
"""
