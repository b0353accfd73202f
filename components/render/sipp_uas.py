"""The lab's media stand-in: a SIPp UAS service per node on the media port (media.engine sipp-uas).

After each call's BYE the scenario logs one line (SIPp's log action, CDR_MARK first) with values it
extracted through regular expressions that admit safe characters only, to CDR_LOG (-trace_logs:
SIPp forks nothing per call, it answers hundreds of calls/s). ``post-cdr --drain`` (CDR_UNIT) reads
that log from its saved POSITION and posts the calls as FreeSWITCH's mod_json_cdr does, one POST
each over kept-alive connections (one long-lived process, POST_PARALLEL at once): this node's
receiver, then the peer's (the URLs of the rendered json_cdr.conf); a
record neither took goes to ERROR_DIR, as mod_json_cdr keeps it in its err-log-dir. The call UUID
is ``call_uuid(Call-ID)``: a re-post of the same call is idempotent.

What SIPp 3.6.1 (Debian 12) does with that log (src/logger.cpp, src/sipp.cpp): each line is
fflush()ed as written; the file is opened when -sf is parsed (the options before it), appended to
with -log_overwrite false (truncated otherwise) across restarts; past -ringbuffer_size bytes
written by this process it is renamed <scenario>_<pid>_logs_<start>[.n].log in SIPp's working
directory and a new one started; past -ringbuffer_files such files SIPp deletes its oldest.
"""
from __future__ import annotations

import os
import uuid

from hapbx_node.layout import ETC_DIR, MEDIA_UAS_RUN_DIR, MEDIA_UAS_STATS, MEDIA_UAS_STATS_EVERY, TLS_CA

from . import TEMPLATES, RenderContext, RenderedFile, cdr, template

SHARE = "/usr/local/share/hapbx/sipp"
SCENARIO = f"{SHARE}/uas.xml"
UNIT = "hapbx-media-uas.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
CDR_UNIT = "hapbx-media-uas-cdr.service"
CDR_UNIT_PATH = f"/etc/systemd/system/{CDR_UNIT}"
USER = "hapbx-media-uas"                        # both units' dynamic user (one UID)
STATE_DIR = "/var/lib/hapbx-media-uas"          # both units' StateDirectory
POST_CDR = "/usr/local/lib/hapbx/media-uas/post-cdr"
CDR_LOG = f"{STATE_DIR}/cdr.log"                  # SIPp's -log_file: one line per ended call
#: the files SIPp rotates CDR_LOG into, in its working directory (the state directory)
ROTATED = os.path.basename(SCENARIO).removesuffix(".xml") + "_*_logs_*.log"
POSITION = f"{STATE_DIR}/cdr.position"          # the drainer's: file (inode, first line), bytes taken
CDR_MARK = "hapbx-cdr-1|"                        # each logged call's first characters
#: SIPp rotates the CDR log every RINGBUFFER_SIZE bytes (~50 000 calls) and keeps RINGBUFFER_FILES
#: rotated files: the drainer may be down or behind by that much (1 GiB, ~6.5 M calls) and lose none
RINGBUFFER_SIZE, RINGBUFFER_FILES = 8 * 1024 * 1024, 128
WORK_DIR = f"{STATE_DIR}/posting"
ERROR_DIR = f"{STATE_DIR}/json_cdr_errors"
SENDER_ENV = f"{ETC_DIR}/media-uas-cdr.env"        # the poster's CDR sender credential (0600 root)
#: seconds a post may wait for the receiver at each step: connect, send, each read (FreeSWITCH's
#: json_cdr.conf timeout: 5); local, then peer
POST_MAX_TIME = 3
#: logged calls per batch, posts at once (threads, each with its kept-alive connection per
#: receiver), seconds between looks at the CDR log
POST_BATCH, POST_PARALLEL, POST_POLL = 200, 32, 0.2
#: the namespace of the name-based call UUIDs (uuid3(NAMESPACE, Call-ID))
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:high-cc-pbx:media-uas:call-id")
# post-cdr parses as Python, checked with the python3 that runs it
PY_VALIDATE = "python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' {path}"
# well-formed XML, checked with what every node has (python3); SIPp's own parser runs at start
XML_VALIDATE = "python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' {path}"


def scenario_text() -> str:
    """The UAS scenario. It runs no command: a SIPp without cdr_log_options() writes no CDR."""
    with open(os.path.join(TEMPLATES, "sipp", "uas.xml"), encoding="utf-8") as fh:
        text = fh.read()
    assert text.count(f'<log message="{CDR_MARK}') == 1 and "<exec" not in text, \
        "uas.xml must log each call's CDR exactly once and run nothing"
    return text


def cdr_log_options(state_dir: str = STATE_DIR, ringbuffer_size: int = RINGBUFFER_SIZE,
                    ringbuffer_files: int = RINGBUFFER_FILES) -> list[str]:
    """SIPp's options for the CDR log, to come before -sf (SIPp opens the log when it parses -sf);
    SIPp's working directory must be ``state_dir`` (it rotates the log there)."""
    return ["-trace_logs", "-log_file", CDR_LOG.replace(STATE_DIR, state_dir), "-log_overwrite", "false",
            "-ringbuffer_files", str(ringbuffer_files), "-ringbuffer_size", str(ringbuffer_size)]


def cdr_log_files(state_dir: str = STATE_DIR) -> list[str]:
    """The CDR log and its rotated files now in ``state_dir``."""
    import glob
    rotated = sorted(glob.glob(os.path.join(state_dir, ROTATED)))
    current = CDR_LOG.replace(STATE_DIR, state_dir)
    return rotated + ([current] if os.path.exists(current) else [])


def cdr_lines_logged(state_dir: str = STATE_DIR) -> int:
    """Complete lines (calls) in the CDR log and its rotated files now in ``state_dir``."""
    n = 0
    for path in cdr_log_files(state_dir):
        with open(path, "rb") as fh:
            n += fh.read().count(b"\n")
    return n


def call_uuid(call_id: str) -> str:
    """The call UUID post-cdr gives the call with this (safe) Call-ID."""
    return str(uuid.uuid3(NAMESPACE, call_id))


def post_cdr_text(ctx: RenderContext, state_dir: str = STATE_DIR, ca: str = TLS_CA) -> str:
    """post-cdr for this node; ``state_dir`` and the CA the peer's HTTPS receiver is checked
    against (``ca``) elsewhere for tests."""
    # a media node's: the VIP's receiver, then the initial standby's (cdr.receiver_urls)
    local, peer = cdr.receiver_urls(ctx)[:2]
    return template("sipp/post-cdr.py.j2", ctx, node=ctx.host.name, local_url=local, peer_url=peer, ca=ca,
                    log_file=CDR_LOG.replace(STATE_DIR, state_dir), rotated_dir=state_dir, rotated=ROTATED,
                    position=POSITION.replace(STATE_DIR, state_dir), mark=CDR_MARK,
                    work_dir=WORK_DIR.replace(STATE_DIR, state_dir),
                    error_dir=ERROR_DIR.replace(STATE_DIR, state_dir), max_time=POST_MAX_TIME, batch=POST_BATCH,
                    parallel=POST_PARALLEL, poll=POST_POLL,
                    core_uuid=str(uuid.uuid3(NAMESPACE, f"core {ctx.host.name}")), namespace=NAMESPACE)


def files(ctx: RenderContext) -> list[RenderedFile]:
    c = ctx.cluster
    if ctx.is_witness or c.media.engine != "sipp-uas":
        return []
    v = dict(scenario=SCENARIO, state_dir=STATE_DIR, user=USER, post_cdr=POST_CDR, cdr_unit=CDR_UNIT,
             sipp_unit=UNIT, error_dir=ERROR_DIR, sender_env=SENDER_ENV, cdr_log=CDR_LOG,
             cdr_log_options=" ".join(cdr_log_options()),
             stats_file=MEDIA_UAS_STATS, stats_dir=MEDIA_UAS_RUN_DIR, stats_every=MEDIA_UAS_STATS_EVERY)
    unit = template("sipp/hapbx-media-uas.service.j2", ctx, max_socket=min(c.os.nofile - 64, 50000), **v)
    verify = "! systemd-analyze verify --man=no {path} 2>&1 | grep ."
    return [
        RenderedFile(SCENARIO, scenario_text(), service=UNIT, action="restart", validate=XML_VALIDATE),
        # the drainer reads it at its start
        RenderedFile(POST_CDR, post_cdr_text(ctx), service=CDR_UNIT, action="restart", mode="0755",
                     validate=PY_VALIDATE),
        RenderedFile(UNIT_PATH, unit, service=UNIT, action="restart", validate=verify),
        RenderedFile(CDR_UNIT_PATH, template("sipp/hapbx-media-uas-cdr.service.j2", ctx, **v), service=CDR_UNIT,
                     action="restart", validate=verify),
        # the poster's own copy of this node's sender credential: a change restarts it
        RenderedFile(SENDER_ENV, cdr.env_file(cdr.sender_env(ctx), "The media stand-in's CDR sender credential."),
                     service=CDR_UNIT, action="restart", mode="0600",
                     secrets=(cdr.sender_secret(c, ctx.host.name),)),
    ]
