"""reports/sip-security.md: what an attacker on the lab sent, what came back, what reached the outside.

Written by tests/lab/test_sip_abuse_lab.py at the end of a complete run (every attack made) from
what that run saw: one row per attack with the request, the answer (status lines, or "no answer"),
what reached the sink (the stand-in for a SIP destination outside the cluster: every packet to it
counts), the Kamailio statistic that must count the refusal (before -> after, read on the node
holding the VIP) and whether the attack was refused as it must be.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class Row:
    key: str                     # "1a", "2c", ... (the order of the table)
    attack: str                  # what it is
    sent: str = ""               # the request(s), from where
    answer: str = "not run"      # status lines, or "no answer"
    sink: list[str] = field(default_factory=list)   # what the sink got during the attack
    counters: list[tuple[str, int | None, int | None, int]] = field(default_factory=list)  # name, before, after, need
    ok: bool = False
    note: str = ""
    known: str = ""              # a hole the config is known to leave (an expected failure in the test): why
    window: tuple[float, float] = (0.0, 0.0)   # wall-clock span of the attack (what the sink got then is its)


def machine() -> dict[str, str]:
    """The machine of the run, as every report in reports/ names it."""
    from lab.report import host
    return host()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or "–"


def _counter(c: tuple[str, int | None, int | None, int]) -> str:
    name, before, after, need = c
    b = "absent" if before is None else str(before)
    a = "absent" if after is None else str(after)
    grew = "" if before is None or after is None else f" (+{after - before}, needs +{need})"
    return f"`{name}` {b} → {a}{grew}"


def render(meta: dict, rows: list[Row]) -> str:
    m, h = meta, meta["machine"]
    refused = sum(r.ok for r in rows)
    holes = [r for r in rows if not r.ok and r.known]
    failed = [r for r in rows if not r.ok and not r.known]
    L = ["# SIP edge: an attacker on the lab, refused", "",
         "Written by the test itself at the end of a complete run against the suite's lab "
         f"`{m['lab']}` (two systemd-nspawn PBX nodes + witness, the real program applied), from what "
         "that run sent and saw. Nothing in the table is typed in by hand.", "",
         f"- command: `{m['command']}` (run as root from the repository; the lab is built first)",
         f"- date: {m['started']} UTC; the attacks took {m['seconds']:.0f} s (lab build and first apply: "
         f"{m['lab_seconds']:.0f} s)",
         f"- machine: `uname -r` {h['kernel']}, {h['cores']} CPUs ({h.get('cpu', '?')}), "
         f"{h.get('memory', '?')}, Python {h['python']}",
         f"- Kamailio on the nodes: {'; '.join(f'{n}: {v}' for n, v in m['kamailio'].items())}",
         f"- configuration: {m['config']}",
         f"- lab: bridge `{m['bridge']}`, subnet {m['subnet']}, VIP {m['vip']} held by {m['vip_owner']} during the "
         f"run; nodes {m['nodes']}; Kamailio statistics read there with `kamcmd stats.get_statistics all` before and "
         "after each attack",
         f"- attacker: network namespace `attacker` on the lab bridge (veth), addresses {m['attackers']} (none is "
         f"exempt: floodExemptNetworks {m['exempt']}); forged sources sent from it with a raw socket (IP_HDRINCL)",
         f"- sink (the outside SIP destination): namespace `sink`, {m['sink']}, UDP and TCP 5060 listening, every "
         "IPv4 packet to it and every ARP request for it recorded",
         f"- limits of the lab stack: floodRequests {m['flood_requests']} per floodWindowSeconds "
         f"{m['flood_window']}, banSeconds {m['ban_seconds']}, authFailLimit {m['auth_fail_limit']}", "",
         f"**{refused} of {len(rows)} attacks refused as required"
         + (f"; {len(failed)} NOT refused ({', '.join(r.key for r in failed)})" if failed else "")
         + (f"; {len(holes)} known hole(s) still open ({', '.join(r.key for r in holes)}: expected failures "
            "in the test, listed below)" if holes else "")
         + f". The sink received {m['sink_total']} packet(s) during the whole run"
         + (f", {m['sink_unexplained']} of them outside the known holes' attacks" if holes else "") + ".**", "",
         "| # | attack | sent | came back | reached the sink | statistic before → after | result |",
         "|---|---|---|---|---|---|---|"]
    for r in rows:
        sink = "nothing" if not r.sink else f"{len(r.sink)} packet(s): " + "; ".join(r.sink[:4])
        counters = "<br>".join(_counter(c) for c in r.counters) or "–"
        if r.ok:
            result = "pass"
        elif r.known:
            result = "**not refused: known hole** (see below)"
        else:
            result = "**FAIL**" + (f": {r.note}" if r.note else "")
        L.append(f"| {r.key} | {_cell(r.attack)} | {_cell(r.sent)} | {_cell(r.answer)} | {_cell(sink)} | "
                 f"{counters} | {_cell(result)} |")
    notes = [r for r in rows if r.ok and r.note]
    if notes:
        L += ["", "Notes:", ""] + [f"- {r.key}: {r.note}" for r in notes]
    if holes:
        L += ["", "Known holes (the config still lets these through; their tests run as strict expected "
              "failures, so they fail the suite once refused until their KNOWN_HOLES entry goes):", ""]
        L += [f"- {r.key}: {r.known} Seen in this run: {r.note}" for r in holes]
    if m.get("closed"):
        L += ["", f"Found by this test and closed before this run: {m['closed']}."]
    L += ["", "How each attack is judged: the answer must be the refusal named in the issue (status and reason, or "
          "silence where the attacker must learn nothing), the sink must have received nothing, and the statistic "
          "must have grown by at least the amount shown. A forged source address cannot receive its answer: there "
          "the proof is the state afterwards (no contact registered pointing at the attacker on either node; no "
          "INVITE at the phone the attacker controls) and the statistic.", ""]
    return "\n".join(L)


def write(path: str, meta: dict, rows: list[Row]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(render(meta, rows))
    os.replace(tmp, path)
