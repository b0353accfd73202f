"""python3 -m hapbx_node.cdr.replay: post again the JSON CDRs FreeSWITCH could not deliver.

mod_json_cdr writes a record that no receiver took (after its retries, on every URL) to its
err-log-dir, one file per call: ``<uuid>.cdr.json`` (``a_<uuid>.cdr.json`` with
``prefix-a-leg``), holding the JSON, or with ``encode`` true/base64 what it would have posted
after ``cdr=`` (the url-escaped or base64 JSON), and a newline. FreeSWITCH never sends them again.
This does, one pass per run (hapbx-cdr-replay.timer, every minute):

  * every such file older than HAPBX_CDR_REPLAY_MIN_AGE (FreeSWITCH may still be writing a
    younger one), oldest first, is POSTed as the module posts it (``<url>?uuid=<uuid>``,
    User-Agent ``freeswitch-json/1.0``, ``Accept: */*``, the Content-Type of its encoding) to the
    first receiver of HAPBX_CDR_REPLAY_URLS that takes it (this node's on loopback, then the
    peer's over HTTPS, its certificate checked against HAPBX_CDR_REPLAY_CA: the cluster CA);
  * 2xx: the file is deleted. The pipeline is idempotent on the call UUID: a record that did
    arrive before (FreeSWITCH gave up on a slow answer) is stored once;
  * 400, 413, 422 (a record no receiver will take): moved to ``rejected/`` in the directory, with
    the receiver's answer in ``<name>.reason``; never posted again (move it back to retry it);
  * 5xx, another answer, no connection: left for the next run. After HAPBX_CDR_REPLAY_GIVE_UP_AFTER
    such files in a row the run stops (the receivers are down: the rest waits as well).

One log line per file (its name and the answer, never the record) and a summary line.
Exit status: 0 nothing left behind, 1 files kept for the next run, 2 files refused (moved to
rejected/), 78 a bad setting. Two runs at once: the second one leaves (a lock on the directory).
"""
from __future__ import annotations

import base64
import errno
import fcntl
import http.client
import json
import logging
import os
import re
import ssl
import sys
import time
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from . import records
from .common import setup_logging
from .settings import ReplaySettings, SettingsError

SUFFIX = ".cdr.json"
REJECTED = "rejected"
USER_AGENT = "freeswitch-json/1.0"     # mod_json_cdr's
REFUSED = (400, 413, 422)              # the receiver will never take it
BASE64_RE = re.compile(rb"^[A-Za-z0-9+/]+={0,2}$")


@dataclass
class Outcome:
    kind: str          # replayed | rejected | kept
    status: int | None
    detail: str        # shown in the log: never the record's content
    url: str = ""
    answer: str = ""   # the receiver's body (rejected: kept in the .reason file)


def call_uuid(name: str) -> str:
    base = name[:-len(SUFFIX)]
    return base[2:] if base.startswith("a_") else base


def body_of(data: bytes) -> tuple[bytes, str]:
    """(POST body, Content-Type) of an error file, as mod_json_cdr posts that encoding."""
    text = data.rstrip(b"\r\n")
    if text.lstrip()[:1] == b"{":
        return text, "application/json"
    if text[:3].upper() == b"%7B":
        return b"cdr=" + text, records.FORM
    if BASE64_RE.match(text):
        return b"cdr=" + text, records.BASE64_FORM
    return text, "application/json"          # the receiver says what is wrong with it


def _reason(answer: str) -> str:
    """The receiver's refusal cut to its field or phrase: its details may quote the record."""
    try:
        message = str(json.loads(answer).get("error", ""))
    except (ValueError, AttributeError):
        message = ""
    return re.split(r"[:(]", message, 1)[0].strip()[:60] or "no reason given"


def client_tls(ca: str) -> ssl.SSLContext:
    """An https:// receiver's certificate checked against ``ca`` and for the URL's host (as
    json_cdr.conf's enable-cacert-check and enable-ssl-verifyhost)."""
    ctx = ssl.create_default_context(cafile=ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def post(url: str, uuid: str, body: bytes, ctype: str, timeout: float,
         credential: tuple = (), tls: ssl.SSLContext | None = None) -> tuple[int, str]:
    """One POST as mod_json_cdr makes it (libcurl: Host, User-Agent, Accept, Content-Type,
    Content-Length, and with ``cred`` its basic Authorization); (status, body); an https:// URL
    with ``tls`` (client_tls). OSError/HTTPException when there is no answer (ssl.SSLError: the
    receiver's certificate did not verify)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        if tls is None:
            raise ValueError(f"{url}: an https URL needs the CA to check it against")
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                                                       context=tls)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        sep = "&" if parts.query else "?"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "") + f"{sep}uuid={quote(uuid)}"
        conn.putrequest("POST", target, skip_accept_encoding=True)
        conn.putheader("User-Agent", USER_AGENT)
        if credential:
            token = base64.b64encode(f"{credential[0]}:{credential[1]}".encode()).decode()
            conn.putheader("Authorization", f"Basic {token}")
        conn.putheader("Accept", "*/*")
        conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read(65536).decode("utf-8", "replace")
    finally:
        conn.close()


def replay_one(s: ReplaySettings, name: str, data: bytes, tls: ssl.SSLContext | None = None) -> Outcome:
    body, ctype = body_of(data)
    uuid = call_uuid(name)
    last = Outcome("kept", None, "no receiver configured")
    for url in s.urls:
        try:
            status, answer = post(url, uuid, body, ctype, s.timeout, s.credential, tls)
        except (OSError, http.client.HTTPException) as err:
            last = Outcome("kept", None, f"{url}: {type(err).__name__}: {err}"[:200], url)
            continue
        if 200 <= status < 300:
            return Outcome("replayed", status, url, url, answer)
        if status in REFUSED:
            return Outcome("rejected", status, f"{url}: {_reason(answer)}", url, answer)
        last = Outcome("kept", status, f"{url}: HTTP {status}", url, answer)
    return last


def _reject(s: ReplaySettings, name: str, outcome: Outcome) -> None:
    target = os.path.join(s.directory, REJECTED)
    os.makedirs(target, mode=0o750, exist_ok=True)
    os.replace(os.path.join(s.directory, name), os.path.join(target, name))
    with open(os.path.join(target, name + ".reason"), "w", encoding="utf-8") as fh:
        json.dump({"status": outcome.status, "url": outcome.url, "answer": outcome.answer[:4000],
                   "rejected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, fh)
        fh.write("\n")


def pending(s: ReplaySettings, now: float) -> tuple[list[str], int]:
    """(names of the files to post now, oldest first; how many are too young yet)."""
    files, young = [], 0
    with os.scandir(s.directory) as it:
        for entry in it:
            if not entry.name.endswith(SUFFIX) or entry.name.startswith(".") or \
                    not entry.is_file(follow_symlinks=False):
                continue
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if now - mtime < s.min_age:
                young += 1
                continue
            files.append((mtime, entry.name))
    return [n for _, n in sorted(files)], young


def run(s: ReplaySettings, log: logging.Logger) -> int:
    if not os.path.isdir(s.directory):
        log.info("no directory %s: nothing to replay", s.directory)
        return 0
    lock = os.open(s.directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                log.info("another replay is running on %s: leaving it to that one", s.directory)
                return 0
            raise
        return _run(s, log)
    finally:
        os.close(lock)


def _run(s: ReplaySettings, log: logging.Logger) -> int:
    try:
        names, young = pending(s, time.time())
    except OSError as err:
        log.error("cannot read %s: %s", s.directory, err)
        return 1
    tls = None
    if names and any(u.startswith("https://") for u in s.urls):
        try:
            tls = client_tls(s.ca)
        except (OSError, ssl.SSLError) as err:
            log.error("cannot read the CA %s (%s): the files wait for the next run", s.ca,
                      getattr(err, "strerror", None) or err)
            return 1
    counts = {"replayed": 0, "rejected": 0, "kept": 0}
    unavailable = 0
    for i, name in enumerate(names):
        path = os.path.join(s.directory, name)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            continue          # gone meanwhile (moved by hand)
        except OSError as err:
            log.error("kept %s: cannot read it (%s)", name, err.strerror)
            counts["kept"] += 1
            continue
        outcome = replay_one(s, name, data, tls)
        try:
            if outcome.kind == "replayed":
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                log.info("replayed %s (%d from %s)", name, outcome.status, outcome.url)
            elif outcome.kind == "rejected":
                _reject(s, name, outcome)
                log.warning("rejected %s (%d, %s): moved to %s/", name, outcome.status, outcome.detail, REJECTED)
            else:
                log.warning("kept %s for the next run (%s)", name, outcome.detail)
        except OSError as err:
            log.error("%s %s, but the file could not be removed or moved: %s", outcome.kind, name, err)
            outcome.kind = "kept"
        counts[outcome.kind] += 1
        unavailable = unavailable + 1 if outcome.kind == "kept" and outcome.url else 0
        if unavailable >= s.give_up_after and i + 1 < len(names):
            rest = len(names) - i - 1
            counts["kept"] += rest
            log.warning("receivers unavailable for %d files in a row: %d more left for the next run",
                        unavailable, rest)
            break
    total = len(names)
    later = f"; {young} younger than {s.min_age:g}s left for later" if young else ""
    log.info("%d file(s): %d replayed, %d rejected, %d kept for the next run%s", total, counts["replayed"],
             counts["rejected"], counts["kept"], later)
    if counts["kept"]:
        return 1
    return 2 if counts["rejected"] else 0


def main() -> int:
    log = setup_logging("hapbx-cdr-replay")
    try:
        settings = ReplaySettings.from_env()
    except SettingsError as err:
        log.error("bad setting: %s", err)
        return 78
    return run(settings, log)


if __name__ == "__main__":
    sys.exit(main())
