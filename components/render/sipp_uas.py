"""The lab's media stand-in: a SIPp UAS service per node on the media port (media.engine sipp-uas)."""
from __future__ import annotations

import os

from . import TEMPLATES, RenderContext, RenderedFile, template

SHARE = "/usr/local/share/hapbx/sipp"
SCENARIO = f"{SHARE}/uas.xml"
UNIT = "hapbx-media-uas.service"
UNIT_PATH = f"/etc/systemd/system/{UNIT}"
# well-formed XML, checked with what every node has (python3); SIPp's own parser runs at start
XML_VALIDATE = "python3 -c 'import sys, xml.dom.minidom as m; m.parse(sys.argv[1])' {path}"


def scenario_text() -> str:
    with open(os.path.join(TEMPLATES, "sipp", "uas.xml"), encoding="utf-8") as fh:
        return fh.read()


def files(ctx: RenderContext) -> list[RenderedFile]:
    c = ctx.cluster
    if ctx.is_witness or c.media.engine != "sipp-uas":
        return []
    unit = template("sipp/hapbx-media-uas.service.j2", ctx, scenario=SCENARIO,
                    max_socket=min(c.os.nofile - 64, 50000))
    return [
        RenderedFile(SCENARIO, scenario_text(), service=UNIT, action="restart", validate=XML_VALIDATE),
        RenderedFile(UNIT_PATH, unit, service=UNIT, action="restart",
                     validate="! systemd-analyze verify --man=no {path} 2>&1 | grep ."),
    ]
