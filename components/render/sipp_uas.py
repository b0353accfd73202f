"""The lab's media stand-in: a SIPp UAS service per node on the media port (media.engine sipp-uas).

After each call's BYE the scenario runs ``post-cdr`` (SIPp's exec action) with values it extracted
through regular expressions that admit safe characters only; the script spools the call (shell
builtins only: SIPp answers hundreds of calls/s). ``post-cdr --drain`` (CDR_UNIT) posts the spooled
calls as FreeSWITCH's mod_json_cdr does, in batches (one curl each): this node's receiver, then the
peer's (the URLs of the rendered json_cdr.conf); a record neither took goes to ERROR_DIR, as
mod_json_cdr keeps it in its err-log-dir. The call UUID is ``call_uuid(Call-ID)``: a re-post of the
same call is idempotent.
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
SPOOL_DIR = f"{STATE_DIR}/spool"
WORK_DIR = f"{STATE_DIR}/posting"
ERROR_DIR = f"{STATE_DIR}/json_cdr_errors"
SENDER_ENV = f"{ETC_DIR}/media-uas-cdr.env"        # the poster's CDR sender credential (0600 root)
#: seconds each post may take (FreeSWITCH's json_cdr.conf: 5); local, then peer
POST_MAX_TIME = 3
#: spooled calls per batch, posts at once, seconds between looks at the spool
POST_BATCH, POST_PARALLEL, POST_POLL = 200, 32, 0.2
#: the namespace of the name-based call UUIDs (uuid3(NAMESPACE, Call-ID))
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:high-cc-pbx:media-uas:call-id")
# well-formed XML, checked with what every node has (python3); SIPp's own parser runs at start
XML_VALIDATE = "python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' {path}"


def scenario_text(post_cdr: str = POST_CDR) -> str:
    """The UAS scenario; ``post_cdr`` replaces the poster's path (tests: another script, or
    ``true`` for a UAS that posts nothing)."""
    with open(os.path.join(TEMPLATES, "sipp", "uas.xml"), encoding="utf-8") as fh:
        text = fh.read()
    marker = f"exec {POST_CDR} "
    assert text.count(marker) == 1, "uas.xml must run post-cdr exactly once"
    return text.replace(marker, f"exec {post_cdr} ")


def call_uuid(call_id: str) -> str:
    """The call UUID post-cdr gives the call with this (safe) Call-ID."""
    return str(uuid.uuid3(NAMESPACE, call_id))


def post_cdr_text(ctx: RenderContext, state_dir: str = STATE_DIR, ca: str = TLS_CA) -> str:
    """post-cdr for this node; ``state_dir`` and the CA the peer's HTTPS receiver is checked
    against (``ca``) elsewhere for tests."""
    # a media node's: the VIP's receiver, then the initial standby's (cdr.receiver_urls)
    local, peer = cdr.receiver_urls(ctx)[:2]
    return template("sipp/post-cdr.sh.j2", ctx, node=ctx.host.name, local_url=local, peer_url=peer, ca=ca,
                    spool_dir=SPOOL_DIR.replace(STATE_DIR, state_dir), work_dir=WORK_DIR.replace(STATE_DIR, state_dir),
                    error_dir=ERROR_DIR.replace(STATE_DIR, state_dir), max_time=POST_MAX_TIME, batch=POST_BATCH,
                    parallel=POST_PARALLEL, poll=POST_POLL,
                    core_uuid=str(uuid.uuid3(NAMESPACE, f"core {ctx.host.name}")),
                    namespace=NAMESPACE, namespace_octal="".join(f"\\{b:03o}" for b in NAMESPACE.bytes))


def files(ctx: RenderContext) -> list[RenderedFile]:
    c = ctx.cluster
    if ctx.is_witness or c.media.engine != "sipp-uas":
        return []
    v = dict(scenario=SCENARIO, state_dir=STATE_DIR, user=USER, post_cdr=POST_CDR, cdr_unit=CDR_UNIT,
             sipp_unit=UNIT, error_dir=ERROR_DIR, sender_env=SENDER_ENV,
             stats_file=MEDIA_UAS_STATS, stats_dir=MEDIA_UAS_RUN_DIR, stats_every=MEDIA_UAS_STATS_EVERY)
    unit = template("sipp/hapbx-media-uas.service.j2", ctx, max_socket=min(c.os.nofile - 64, 50000), **v)
    verify = "! systemd-analyze verify --man=no {path} 2>&1 | grep ."
    return [
        RenderedFile(SCENARIO, scenario_text(), service=UNIT, action="restart", validate=XML_VALIDATE),
        # SIPp runs it afresh for every call, the drainer reads it at its start
        RenderedFile(POST_CDR, post_cdr_text(ctx), service=CDR_UNIT, action="restart", mode="0755",
                     validate="sh -n {path}"),
        RenderedFile(UNIT_PATH, unit, service=UNIT, action="restart", validate=verify),
        RenderedFile(CDR_UNIT_PATH, template("sipp/hapbx-media-uas-cdr.service.j2", ctx, **v), service=CDR_UNIT,
                     action="restart", validate=verify),
        # the poster's own copy of this node's sender credential: a change restarts it
        RenderedFile(SENDER_ENV, cdr.env_file(cdr.sender_env(ctx), "The media stand-in's CDR sender credential."),
                     service=CDR_UNIT, action="restart", mode="0600",
                     secrets=(cdr.sender_secret(c, ctx.host.name),)),
    ]
