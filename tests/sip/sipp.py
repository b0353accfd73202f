"""SIPp from the tests: the scenarios under templates/sipp, run with bounded time, results parsed.

Used by the loopback test (tests/render/test_kamailio_loopback.py) and the lab test
(tests/lab/test_sip_lab.py). Every run has a global timeout and runs in a temporary directory
(SIPp writes its error/stat files to the working directory).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass

from components.render import TEMPLATES, sipp_uas

SCENARIOS = os.path.join(TEMPLATES, "sipp")


def scenario(name: str, **replace: str) -> str:
    """A scenario's text, with literal replacements (e.g. another expected response code)."""
    with open(os.path.join(SCENARIOS, name), encoding="utf-8") as fh:
        text = fh.read()
    for old, new in replace.items():
        assert old in text, (name, old)
        text = text.replace(old, new)
    return text


@dataclass
class Result:
    rc: int
    successful: int
    failed: int
    stdout: str
    stderr: str
    errors: str
    seconds: float
    messages: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0 and self.failed == 0 and self.successful > 0


def _counts(text: str) -> tuple[int, int]:
    ok = re.search(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", text)
    ko = re.search(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", text)
    return (int(ok.group(1)) if ok else 0), (int(ko.group(1)) if ko else 0)


def run(text: str, target: str, local_ip: str, *, port: int = 0, service: str = "s", keys: dict | None = None,
        auth: tuple[str, str] | None = None, calls: int = 1, rate: float | None = None, timeout: float = 15,
        extra: tuple[str, ...] = (), messages: bool = False) -> Result:
    """Run one scenario text against target (ip:port) from local_ip[:port] until `calls` calls ended.
    messages: keep SIPp's message trace (Result.messages)."""
    d = tempfile.mkdtemp(prefix="hapbx-sipp-")
    try:
        path = os.path.join(d, "scenario.xml")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        cmd = ["sipp", target, "-sf", path, "-i", local_ip, "-p", str(port), "-s", service, "-m", str(calls),
               "-nostdin", "-trace_err", "-timeout", f"{int(timeout)}s", "-timeout_error", "-recv_timeout", "4000",
               "-max_retrans", "3"]
        if rate:
            cmd += ["-r", str(rate), "-l", str(max(calls, 1))]
        for k, v in (keys or {}).items():
            cmd += ["-key", k, str(v)]
        if auth:
            cmd += ["-au", auth[0], "-ap", auth[1]]
        cmd += list(extra) + (["-trace_msg"] if messages else [])
        started = time.monotonic()
        out = subprocess.run(cmd, cwd=d, capture_output=True, text=True, timeout=timeout + 15)
        seconds = time.monotonic() - started
        errors = "".join(open(os.path.join(d, f), errors="replace").read()[-4000:]
                         for f in os.listdir(d) if f.endswith("_errors.log"))
        trace = "".join(open(os.path.join(d, f), errors="replace").read()
                        for f in os.listdir(d) if f.endswith("_messages.log"))
        ok, ko = _counts(out.stdout)
        return Result(out.returncode, ok, ko, out.stdout[-4000:], out.stderr[-2000:], errors, seconds, trace)
    finally:
        shutil.rmtree(d, ignore_errors=True)


class Uas:
    """A SIPp UAS in the background (the media stand-in, or a registered phone answering)."""

    def __init__(self, local_ip: str, port: int, text: str | None = None, extra: tuple[str, ...] = ()):
        self.dir = tempfile.mkdtemp(prefix="hapbx-sipp-uas-")
        path = os.path.join(self.dir, "uas.xml")
        with open(path, "w", encoding="utf-8") as fh:
            # a phone, or the loopback tests' media: the stand-in's CDR poster is not run
            fh.write(text or sipp_uas.scenario_text(post_cdr="true"))
        self.ip, self.port = local_ip, port
        self.proc = subprocess.Popen(
            ["sipp", "-sf", path, "-i", local_ip, "-p", str(port), "-aa", "-nostdin", "-trace_msg",
             "-trace_err", *extra],
            cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipp UAS on {local_ip}:{port} exited: {self.proc.stderr.read().decode()}")
            if f"{local_ip}:{port} " in subprocess.run(["ss", "-lunH"], capture_output=True, text=True).stdout:
                return
            time.sleep(0.05)
        raise RuntimeError(f"sipp UAS on {local_ip}:{port} did not start")

    def messages(self) -> str:
        return "".join(open(os.path.join(self.dir, f), errors="replace").read()
                       for f in os.listdir(self.dir) if f.endswith("_messages.log"))

    def invites(self) -> int:
        return len(re.findall(r"^INVITE ", self.messages(), re.M))

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)
