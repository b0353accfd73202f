"""Run a rendered file's own validation command on a staged copy, as the deploy does."""
from __future__ import annotations

import os
import subprocess
import tempfile

from components.render import RenderedFile


def run_validator(f: RenderedFile) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as d:
        stage = os.path.join(d, os.path.basename(f.path))
        with open(stage, "w", encoding="utf-8") as fh:
            fh.write(f.content)
        cmd = "set -o pipefail; " + f.validate.replace("{path}", f'"{stage}"')
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
