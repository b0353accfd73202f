"""Where each failed call of a SIPp run came from, read from SIPp's error log (-trace_err, the
`*_errors.log` it writes only for unexpected messages and aborted calls: affordable at any rate).

Classes (CLASSES):
  kamailio  a final error response Kamailio generated: its Server header (the stock configuration's
            `server_signature`), or the To-tag its sl/tm modules make (32 hex digits, '.' or '-',
            hex: `fb0792f1f840ab65f2763018d1c5fac6.3c02c41a`; ours sets server_signature=no, so only
            the tag tells). A final response of unknown origin counts here too (conservative).
  stand-in  a final error response a SIPp UAS generated (its To-tag `<pid>SIPpTag<nn><call>`),
            relayed unchanged by Kamailio: the media stand-in's answer, not Kamailio's.
  timeout   no answer: SIPp's receive timeout, its UDP retransmission timeout, a call aborted at
            the run's end. Counted against Kamailio, shown on its own.
  scenario  SIPp aborting on a message that is not a failure of a server: a provisional or 2xx it
            did not expect (a retransmission, a 180 overtaken by the 200), a late challenge to the
            first request (CSeq 1: what a retransmission of it was answered with), a request.

Entries that are no failure of a call are skipped: "Dead call" (a message for a call already
ended or aborted, e.g. Kamailio's `404 Not here` to the BYE SIPp sends when it aborts a call:
a consequence, counted once as its cause), "Ignoring final ...", "Discarding message ...".
"""
from __future__ import annotations

import re
from dataclasses import dataclass

KAMAILIO, STAND_IN, TIMEOUT, SCENARIO = "kamailio", "stand-in", "timeout", "scenario"
CLASSES = (KAMAILIO, STAND_IN, TIMEOUT, SCENARIO)
#: the classes a step's verdict counts: what Kamailio did, or did not answer
SERVER_CAUSED = (KAMAILIO, TIMEOUT)

# each entry starts with SIPp's timestamp: "2026-12-07\t10:18:10.594069\t1796638690.594069: "
_ENTRY = re.compile(r"\d{4}-\d\d-\d\d\t\d\d:\d\d:\d\d\.\d+\t\d+\.\d+: ")
_UNEXPECTED = re.compile(r"^Aborting call on unexpected message for Call-Id '([^']*)': (.*?), received '(.*)", re.S)
_RETRANS = re.compile(r"^Aborting call on UDP retransmission timeout for Call-ID '([^']*)'")
_RECV_TIMEOUT = re.compile(r"^Call-Id: (\S+?), receive timeout on message (.*?):(\d+) ")
_ABORTED = re.compile(r"^Aborted call with Call-ID '([^']*)'")
_UNEXPECTED_REQUEST = re.compile(r"^Aborting call on an unexpected (\w+) for call: (\S+)")
_STATUS = re.compile(r"^SIP/2\.0 (\d{3}) ?([^\r\n]*)")
_KAMAILIO_TAG = re.compile(r"^[0-9a-f]{32}[.-][0-9a-f]+$")


@dataclass
class Failure:
    cls: str        # one of CLASSES
    call_id: str
    what: str       # one line: the response (or event) and where the scenario was

    def line(self) -> str:
        return f"{self.cls}: {self.what}"


def entries(text: str) -> list[str]:
    """The error log's entries, each without its timestamp."""
    return [e.strip("\r\n") for e in _ENTRY.split(text)[1:]]


def _header(msg: str, *names: str) -> str | None:
    for line in msg.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() in names:
            return value.strip()
    return None


def origin(msg: str) -> str:
    """The class of a call aborted on this received message (the text SIPp logged after 'received')."""
    status = _STATUS.match(msg)
    if not status:
        return SCENARIO                        # a request: no server's failure answer
    code = int(status.group(1))
    if code < 300:
        return SCENARIO                        # a retransmitted or reordered provisional or 2xx
    cseq = (_header(msg, "cseq") or "").split()
    if code in (401, 407) and cseq[:1] == ["1"]:
        return SCENARIO                        # a late challenge to the first request
    server = _header(msg, "server") or ""
    if "kamailio" in server.lower():
        return KAMAILIO
    tag = re.search(r";\s*tag=([^;\s>]+)", _header(msg, "to", "t") or "")
    if tag and _KAMAILIO_TAG.match(tag.group(1)):
        return KAMAILIO
    if tag and "SIPpTag" in tag.group(1):
        return STAND_IN
    return KAMAILIO                            # came through Kamailio, origin unknown: conservative


def classify(entry: str) -> Failure | None:
    """One error log entry as the failure of a call, or None when it is no failure of a call."""
    m = _UNEXPECTED.match(entry)
    if m:
        call_id, where, msg = m.groups()
        msg = msg.rsplit("'", 1)[0] if msg.rstrip().endswith("'") else msg
        first = msg.splitlines()[0].strip() if msg.strip() else "?"
        cseq = _header(msg, "cseq") or "?"
        return Failure(origin(msg), call_id, f"{first} (CSeq {cseq}) {where}")
    m = _RETRANS.match(entry)
    if m:
        return Failure(TIMEOUT, m.group(1), "no answer: UDP retransmission timeout")
    m = _RECV_TIMEOUT.match(entry)
    if m:
        return Failure(TIMEOUT, m.group(1), f"no answer: receive timeout at index {m.group(3)}")
    m = _ABORTED.match(entry)
    if m:
        return Failure(TIMEOUT, m.group(1), "no answer: call aborted at the run's end")
    m = _UNEXPECTED_REQUEST.match(entry)
    if m:
        return Failure(SCENARIO, m.group(2), f"unexpected {m.group(1)} request")
    return None


@dataclass
class Classified:
    counts: dict[str, int]         # class -> failed calls
    samples: dict[str, str]        # class -> its first failure, one line

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def classify_log(text: str) -> Classified:
    """Each failed call once (its first entry decides: the cause, not what followed it)."""
    counts = dict.fromkeys(CLASSES, 0)
    samples: dict[str, str] = {}
    seen: set[str] = set()
    for entry in entries(text):
        f = classify(entry)
        if f is None or f.call_id in seen:
            continue
        seen.add(f.call_id)
        counts[f.cls] += 1
        samples.setdefault(f.cls, f.what[:200])
    return Classified(counts, samples)


def attribute(failed: int, found: Classified) -> dict[str, int]:
    """Per class, the failed calls SIPp counted: those its log does not explain (a call still
    open when SIPp stopped at its bound, a log cut short) count as timeout: unanswered."""
    counts = dict(found.counts)
    counts[TIMEOUT] += max(0, failed - found.total)
    return counts
