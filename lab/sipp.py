"""SIPp, the one runner: every run bounded in time and made in a temporary directory (SIPp writes its
error, message, screen, stat and rtt files to its working directory), its results read back.

- `run` -> `Result`: one scenario until its calls ended (the tests, the drills' phone);
- `Uas`: a UAS in the background (the media stand-in, or a registered phone answering);
- `command`, `launch`, `Workdir` and the parsers of SIPp's files: what `run` is made of, and what
  the SIP bench (bench/sip.py) measures a load with (-trace_stat, -trace_rtt, -trace_screen).

Scenarios: the functional ones are templates/sipp (shipped with the lab's media stand-in); the
bench's, with users from an injection file, are bench/scenarios.
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


def scenario(name: str, **replace: str) -> str:
    """A functional scenario's text (templates/sipp), with literal replacements (e.g. another
    expected response code)."""
    from components.render import TEMPLATES   # not at import: `./hapbx` builds its parser from bench/
    with open(os.path.join(TEMPLATES, "sipp", name), encoding="utf-8") as fh:
        text = fh.read()
    for old, new in replace.items():
        assert old in text, (name, old)
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------- one bounded run


class Workdir:
    """SIPp's working directory: made for one run, removed after it."""

    def __init__(self, prefix: str = "hapbx-sipp-"):
        self.path = tempfile.mkdtemp(prefix=prefix)

    def __enter__(self) -> Workdir:
        return self

    def __exit__(self, *exc) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write(self, name: str, text: str) -> str:
        with open(self.file(name), "w", encoding="utf-8") as fh:
            fh.write(text)
        return self.file(name)

    def read(self, suffix: str, tail: int | None = None) -> str:
        """Every file SIPp wrote whose name ends with suffix (its last `tail` characters each)."""
        out = []
        for f in os.listdir(self.path):
            if f.endswith(suffix):
                with open(self.file(f), errors="replace") as fh:
                    text = fh.read()
                out.append(text[-tail:] if tail else text)
        return "".join(out)


def command(target: str, scenario_path: str, local_ip: str, *, port: int = 0, service: str = "s", calls: int = 1,
            keys: dict | None = None, auth: tuple[str, str] | None = None, options=()) -> list[str]:
    """SIPp as a UAC: scenario_path against target (ip:port) from local_ip[:port] until `calls` calls
    ended; keys (-key), digest credentials (-au/-ap) and further options after them."""
    cmd = ["sipp", target, "-sf", scenario_path, "-i", local_ip, "-p", str(port), "-s", service, "-m", str(calls),
           "-nostdin", "-trace_err"]
    for k, v in (keys or {}).items():
        cmd += ["-key", k, str(v)]
    if auth:
        cmd += ["-au", auth[0], "-ap", auth[1]]
    return cmd + list(options)


@dataclass
class Exit:
    rc: int
    stdout: str
    stderr: str
    seconds: float
    killed: bool      # SIPp did not end within its bound and was killed


def launch(cmd: list[str], cwd: str, bound: float, *, stdout: bool = True, on_start=None) -> Exit:
    """Run SIPp in cwd, killed when it runs longer than bound seconds. on_start(process) once it runs
    (e.g. to sample its CPU); stdout=False: its screen output is not kept."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if on_start:
        on_start(proc)
    killed = False
    try:
        out, err = proc.communicate(timeout=bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        killed = True
    return Exit(proc.returncode, out or "", err or "", time.monotonic() - started, killed)


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


def run(text: str, target: str, local_ip: str, *, port: int = 0, service: str = "s", keys: dict | None = None,
        auth: tuple[str, str] | None = None, calls: int = 1, rate: float | None = None, timeout: float = 15,
        extra: tuple[str, ...] = (), messages: bool = False) -> Result:
    """Run one scenario text against target (ip:port) from local_ip[:port] until `calls` calls ended.
    messages: keep SIPp's message trace (Result.messages). subprocess.TimeoutExpired when SIPp outlives
    its own timeout by 15 s."""
    with Workdir("hapbx-sipp-") as d:
        options = ["-timeout", f"{int(timeout)}s", "-timeout_error", "-recv_timeout", "4000", "-max_retrans", "3"]
        if rate:
            options += ["-r", str(rate), "-l", str(max(calls, 1))]
        cmd = command(target, d.write("scenario.xml", text), local_ip, port=port, service=service, calls=calls,
                      keys=keys, auth=auth, options=[*options, *extra, *(["-trace_msg"] if messages else [])])
        x = launch(cmd, d.path, timeout + 15)
        if x.killed:
            raise subprocess.TimeoutExpired(cmd, timeout + 15)
        ok, ko = counts(x.stdout)
        return Result(x.rc, ok, ko, x.stdout[-4000:], x.stderr[-2000:], d.read("_errors.log", tail=4000),
                      x.seconds, d.read("_messages.log"))


class Uas:
    """A SIPp UAS in the background (the media stand-in, or a registered phone answering)."""

    def __init__(self, local_ip: str, port: int, text: str | None = None, extra: tuple[str, ...] = ()):
        from components.render import sipp_uas
        self.dir = tempfile.mkdtemp(prefix="hapbx-sipp-uas-")
        path = os.path.join(self.dir, "uas.xml")
        with open(path, "w", encoding="utf-8") as fh:
            # a phone, or the loopback tests' media: without -trace_logs it logs no CDR
            fh.write(text or sipp_uas.scenario_text())
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


# ---------------------------------------------------------------- SIPp's files (pure, unit tested)

_OK = re.compile(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)")
_KO = re.compile(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)")


def counts(text: str) -> tuple[int, int]:
    """(successful, failed) calls from SIPp's final screen, the cumulative column; 0 for a line not there."""
    ok, ko = _OK.search(text), _KO.search(text)
    return (int(ok.group(1)) if ok else 0), (int(ko.group(1)) if ko else 0)


def screen_counts(text: str) -> tuple[int, int] | None:
    """(successful, failed) from SIPp's final screen (-trace_screen), the cumulative column; None
    unless both lines are there."""
    ok, ko = _OK.search(text), _KO.search(text)
    return (int(ok.group(1)), int(ko.group(1))) if ok and ko else None


def first_error(errors: str) -> str:
    """The first telling line of SIPp's error log."""
    m = re.search(r"^.*(Aborting|unexpected|[Tt]imeout|retrans|Dead call|Max).*$", errors, re.M)
    return (m.group(0) if m else "")[:200]


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """SIPp's -trace_stat file (';' separated, header line first) as one dict per line."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    head = lines[0].rstrip(";").split(";")
    return [dict(zip(head, line.rstrip(";").split(";"))) for line in lines[1:]]


def stat_int(row: dict[str, str], key: str) -> int:
    try:
        return int(float(row.get(key, "0") or 0))
    except ValueError:
        return 0


def parse_rtt_rows(text: str, rtd: str = "1") -> list[tuple[float, float]]:
    """SIPp's -trace_rtt file: `Date_ms;response_time_ms;rtd_no` lines; (date ms, value ms) of one rtd."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(";")
        if len(parts) < 3 or parts[0] == "Date_ms" or parts[2] != rtd:
            continue
        try:
            out.append((float(parts[0]), float(parts[1])))
        except ValueError:
            pass
    return out


def parse_rtt_csv(text: str, rtd: str = "1") -> list[float]:
    """The latencies (ms) of one rtd."""
    return [v for _, v in parse_rtt_rows(text, rtd)]


def start_span(rows: list[tuple[float, float]]) -> float:
    """Seconds over which the measured calls were started: the spread of their start times
    (completion date - latency), scaled from n-1 intervals to n (one interval per call at a steady rate)."""
    if len(rows) < 2:
        return 0.0
    starts = sorted(d - v for d, v in rows)
    n = len(starts)
    return (starts[-1] - starts[0]) / 1000 * n / (n - 1)
