"""The media stand-in's call rate on loopback: a SIPp phone (INVITE / 200 / ACK / hold / BYE / 200)
against the rendered stand-in (components/render/sipp_uas.py: its scenario, its SIPp options, its
post-cdr) on 127.0.0.1, stepped through calls/s; what the lab's SIP bench sees through Kamailio
without Kamailio.

  .venv/bin/python -m bench.standin_loopback [--rates 100,200,300] [--seconds 20] [--hold-ms 100] [--drain]
                                            [--poster-rev REV]

Per rate: calls placed and completed, failed calls (the phone's BYE unanswered after its
retransmissions: Kamailio would answer 408), BYE retransmissions (a BYE the stand-in did not answer
within 500 ms), the p50/p99 of BYE -> 200 as the phone saw it, the CPU of the UAS SIPp process
(its own; with its reaped children: the per-call forks of an exec action), and the CDRs written
(complete lines in the stand-in's CDR log) against the calls the UAS saw end. With --drain,
post-cdr --drain runs during the step and posts to a counting receiver on 127.0.0.1 (the
rendered local URL): CDRs posted (distinct call UUIDs) and posted twice, and the poster's CPU (its
own and its reaped children's, from the first call until the last CDR is posted). With
--poster-rev, each rate runs twice: with post-cdr rendered by that git revision (the baseline,
from a temporary worktree) and with this tree's, side by side in one run.

Loopback only (127.0.0.1); every process it starts is stopped at the end of its step.
"""
from __future__ import annotations

import argparse
import dataclasses
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from components.config import load_stack_file
from components.render import RenderContext, masked_secrets, sipp_uas
from lab import sipp

ADDRESS = "127.0.0.1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TICK = os.sysconf("SC_CLK_TCK")

# The phone (templates/sipp/direct-call.xml): its BYE is response time 1 (BYE -> 200), retransmitted
# every 500 ms (-max_retrans).
FROM_HDR = '"Lab 1001" <sip:1001@127.0.0.1>'


class CountingReceiver:
    """This node's CDR receiver on loopback: answers 200, counts the call UUIDs posted."""

    def __init__(self, port: int):
        self.uuids: list[str] = []
        counted = self.uuids

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                counted.append(json.loads(body)["variables"]["call_uuid"])
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            request_queue_size = 128
            daemon_threads = True

        self.server = Server((ADDRESS, port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ADDRESS, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(own, reaped children's) CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


class Stand:
    """The rendered stand-in in a scratch state directory: SIPp UAS as its unit runs it, and
    (optionally) post-cdr --drain as its CDR unit runs it."""

    def __init__(self, receiver_port: int, poster_tree: str | None = None):
        c, _ = load_stack_file(os.path.join(ROOT, "Pulumi.lab.yaml"), assume_secrets=True)
        nodes = [dataclasses.replace(c.nodes[0], address=ADDRESS), *c.nodes[1:]]
        self.cluster = dataclasses.replace(c, nodes=nodes, cdr=dataclasses.replace(c.cdr, receiver_port=receiver_port))
        self.dir = tempfile.mkdtemp(prefix="hapbx-standin-bench-")
        self.state = os.path.join(self.dir, "state")
        os.mkdir(self.state)
        ctx = RenderContext(self.cluster, self.cluster.nodes[0], masked_secrets())
        self.script = os.path.join(self.dir, "post-cdr")
        with open(self.script, "w", encoding="utf-8") as fh:
            fh.write(sipp_uas.post_cdr_text(ctx, state_dir=self.state) if poster_tree is None
                     else render_poster(poster_tree, receiver_port, self.state))
        os.chmod(self.script, 0o755)
        self.scenario = os.path.join(self.dir, "uas.xml")
        with open(self.scenario, "w", encoding="utf-8") as fh:
            fh.write(sipp_uas.scenario_text())
        self.port = free_port(socket.SOCK_DGRAM)
        self.uas: subprocess.Popen | None = None
        self.drainer: subprocess.Popen | None = None

    def start_uas(self) -> None:
        # the unit's command line (its options before -sf: SIPp opens the CDR log at -sf)
        argv = ["sipp", *sipp_uas.cdr_log_options(self.state), "-sf", self.scenario, "-i", ADDRESS,
                "-p", str(self.port), "-aa", "-nostdin", "-max_socket", "50000"]
        self.uas = subprocess.Popen(argv, cwd=self.state, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while f"{ADDRESS}:{self.port} " not in subprocess.run(["ss", "-lunH"], capture_output=True,
                                                              text=True).stdout:
            assert self.uas.poll() is None and time.monotonic() < deadline, "SIPp UAS did not start"
            time.sleep(0.05)

    def start_drainer(self) -> None:
        self.drainer = subprocess.Popen([self.script, "--drain"], cwd=self.state, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def cdrs_written(self) -> int:
        """Complete CDR lines in the stand-in's CDR log and its rotated files."""
        return sipp_uas.cdr_lines_logged(self.state)

    def stop(self) -> None:
        for p in (self.drainer, self.uas):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


# post-cdr as another tree's code renders it (the same cluster, node and receiver as Stand's)
_RENDER = """
import dataclasses, os, sys
from components.config import load_stack_file
from components.render import RenderContext, masked_secrets, sipp_uas
port, state = int(sys.argv[1]), sys.argv[2]
c, _ = load_stack_file("Pulumi.lab.yaml", assume_secrets=True)
nodes = [dataclasses.replace(c.nodes[0], address="127.0.0.1"), *c.nodes[1:]]
c = dataclasses.replace(c, nodes=nodes, cdr=dataclasses.replace(c.cdr, receiver_port=port))
sys.stdout.write(sipp_uas.post_cdr_text(RenderContext(c, c.nodes[0], masked_secrets()), state_dir=state))
"""


def render_poster(tree: str, receiver_port: int, state: str) -> str:
    return subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-c", _RENDER, str(receiver_port), state],
                          cwd=tree, capture_output=True, text=True, check=True).stdout


class Worktree:
    """A revision of this repository checked out in a temporary directory (git worktree)."""

    def __init__(self, rev: str):
        short = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", rev], capture_output=True, text=True,
                               check=True).stdout.strip()
        self.rev, self.path = f"{rev} = {short}", tempfile.mkdtemp(prefix="hapbx-poster-rev-")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "-q", "--detach", self.path, rev], check=True)

    def close(self) -> None:
        subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", self.path], check=False)
        shutil.rmtree(self.path, ignore_errors=True)


def bye_row(screen: str) -> tuple[int, int, int]:
    """(sent, retransmissions, timeouts) of the BYE from the phone's final screen."""
    m = re.search(r"^\s*BYE\s+-+>\s+(?:B-RTD1\s+)?(\d+)\s+(\d+)\s+(\d+)", screen, re.M)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else (0, 0, 0)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def step(rate: int, seconds: int, hold_ms: int, drain: bool, poster_tree: str | None = None) -> dict:
    http_port = free_port(socket.SOCK_STREAM)
    receiver = CountingReceiver(http_port) if drain else None
    stand = Stand(http_port, poster_tree)
    try:
        stand.start_uas()
        if drain:
            stand.start_drainer()
            time.sleep(1)                   # started and idle
        calls = rate * seconds
        before = cpu_seconds(stand.uas.pid)
        poster_before = cpu_seconds(stand.drainer.pid) if drain else (0.0, 0.0)
        started = time.monotonic()
        with sipp.Workdir("hapbx-standin-caller-") as d:
            cmd = sipp.command(f"{ADDRESS}:{stand.port}", d.write("caller.xml", sipp.scenario("direct-call.xml")), ADDRESS,
                               service="8000", keys={"from_hdr": FROM_HDR},
                               calls=calls, options=["-r", str(rate), "-l", str(max(rate * 4, 100)),
                                                     "-d", str(hold_ms), "-recv_timeout", "8000",
                                                     "-max_retrans", "5", "-timeout", f"{seconds * 3 + 30}s",
                                                     "-trace_rtt", "-rtt_freq", "1"])
            x = sipp.launch(cmd, d.path, seconds * 3 + 60)
            rtts = sipp.parse_rtt_csv(d.read("_rtt.csv"))
        after = cpu_seconds(stand.uas.pid)
        ok, ko = sipp.counts(x.stdout)
        sent, retrans, timeouts = bye_row(x.stdout)
        written, stable = stand.cdrs_written(), time.monotonic()
        while time.monotonic() - stable < 2:
            time.sleep(0.2)                 # until no CDR has been added for 2 s
            if (now := stand.cdrs_written()) != written:
                written, stable = now, time.monotonic()
        posted = twice = 0
        if drain:
            deadline = time.monotonic() + 30
            while len(set(receiver.uuids)) < written and time.monotonic() < deadline:
                time.sleep(0.2)
            poster_seconds = time.monotonic() - started
            poster_after = cpu_seconds(stand.drainer.pid)
            time.sleep(1)
            posted, twice = len(set(receiver.uuids)), len(receiver.uuids) - len(set(receiver.uuids))
            poster_cpu = sum(poster_after) - sum(poster_before)
        return {"poster": "baseline" if poster_tree else "this tree", "rate": rate, "placed": calls,
                "completed": ok, "failed": ko, "bye_sent": sent,
                "bye_retrans": retrans, "bye_timeouts": timeouts, "bye_p50_ms": percentile(rtts, 0.5),
                "bye_p99_ms": percentile(rtts, 0.99), "phone_seconds": round(x.seconds, 1),
                "uas_cpu_pct": round(100 * (after[0] - before[0]) / x.seconds, 1),
                "uas_children_cpu_pct": round(100 * (after[1] - before[1]) / x.seconds, 1),
                "cdrs_written": written, "cdrs_posted": posted, "posted_twice": twice,
                **({"poster_cpu_s": round(poster_cpu, 2), "poster_cpu_pct": round(100 * poster_cpu / poster_seconds, 1),
                    "poster_cpu_ms_per_cdr": round(1000 * poster_cpu / max(posted, 1), 3)} if drain else {})}
    finally:
        stand.stop()
        if receiver:
            receiver.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,200,300")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--hold-ms", type=int, default=100)
    ap.add_argument("--drain", action="store_true", help="run post-cdr --drain and a counting receiver")
    ap.add_argument("--poster-rev", help="also run post-cdr as this git revision renders it (baseline)")
    ap.add_argument("--out", help="also write the rows as a markdown report to this file")
    a = ap.parse_args()
    machine = (f"{os.cpu_count()} cores; sipp "
               f"{subprocess.run(['sipp', '-v'], capture_output=True, text=True).stdout.split()[1]}")
    print(f"machine: {machine}")
    tree = Worktree(a.poster_rev) if a.poster_rev else None
    rows = []
    try:
        for rate in (int(r) for r in a.rates.split(",")):
            if tree is not None:
                rows.append({**step(rate, a.seconds, a.hold_ms, True, tree.path), "rev": tree.rev})
                print(json.dumps(rows[-1]), flush=True)
            rows.append(step(rate, a.seconds, a.hold_ms, a.drain or tree is not None))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        if tree is not None:
            tree.close()
    if a.out:
        with open(a.out, "w", encoding="utf-8") as fh:
            fh.write(report(rows, machine, "python -m bench.standin_loopback " + " ".join(sys.argv[1:])))


def report(rows: list[dict], machine: str, command: str) -> str:
    """The rows as markdown: the command, the machine, one line per rate and poster."""
    head = ("| calls/s | poster | calls completed | CDRs posted | posted twice | poster CPU | poster CPU per CDR "
            "| UAS CPU | BYE p99 |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['rate']} | {r['poster'] + (' (' + r['rev'] + ')' if 'rev' in r else '')} | "
             f"{r['completed']:,} of {r['placed']:,} | {r['cdrs_posted']:,} | {r['posted_twice']} | "
             f"{r.get('poster_cpu_pct', '-')} % of a core ({r.get('poster_cpu_s', '-')} s) | "
             f"{r.get('poster_cpu_ms_per_cdr', '-')} ms | {r['uas_cpu_pct']} % | {r['bye_p99_ms']:g} ms |"
             for r in rows]
    return ("# The media stand-in on loopback: calls and its CDR poster\n\n"
            f"`{command}` on {time.strftime('%Y-%m-%d')}, {machine}. A SIPp phone calls the rendered stand-in "
            "on 127.0.0.1; post-cdr --drain posts every CDR to a counting receiver on 127.0.0.1. Poster CPU: "
            "its own and its reaped children's, from the first call until the last CDR was posted.\n\n"
            + head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
