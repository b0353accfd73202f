"""reports/failover.md shows every release on record: Debian 12's runs in full, the others beside them."""
from __future__ import annotations

import copy
import json
import os

from lab import drill_report
from tests.mockrun import ROOT

RESULTS = os.path.join(ROOT, "reports", "failover", "results.json")


def test_a_second_release_gets_its_section_and_a_column_side_by_side(tmp_path):
    with open(RESULTS, encoding="utf-8") as fh:
        bookworm = json.load(fh)
    trixie = copy.deepcopy(bookworm)
    trixie["meta"].update(lab="hapbx-lab13", release="trixie", versions={"node": ["kamailio 6.0.1-1"]})
    trixie["results"] = [dict(r, sip_s=r["sip_s"] + 7.0) for r in trixie["results"] if r["drill"] == 1]
    trixie["charts"] = {"1": trixie["charts"]["1"]}
    out = tmp_path / "failover.md"
    drill_report.write(str(out), {"bookworm": bookworm})
    alone = out.read_text()
    assert "Debian 13" not in alone and "side by side" not in alone
    drill_report.write(str(out), {"bookworm": bookworm, "trixie": trixie})
    both = out.read_text()
    assert both.startswith(alone.split("## Per drill")[0].rstrip())   # Debian 12's part is unchanged
    assert "| drill | figure | Debian 12 (bookworm) | Debian 13 (trixie) |" in both
    section = both.split("## Debian 13 (trixie): lab `hapbx-lab13`")[1]
    runs = len(trixie["results"])     # drill 1's runs on record
    assert "kamailio 6.0.1-1" in section and f"| 1. stop keepalived on the VIP owner | {runs} |" in section
    assert "| 2. " not in section.split("### Against")[0]             # only the drills it ran
    # a drill the other release did not run shows a dash, not a number
    assert "| 2 | SIP answers (fault), median | " in both and both.split("| 2 | SIP answers (fault), median | ")[1].split("\n")[0].endswith("| – |")


def test_each_release_keeps_its_own_results_file(tmp_path):
    assets = str(tmp_path)
    assert drill_report.results_path(assets, "bookworm").endswith("/results.json")
    assert drill_report.results_path(assets, "trixie").endswith("/results-trixie.json")
    with open(drill_report.results_path(assets, "trixie"), "w") as fh:
        json.dump({"meta": {}, "results": []}, fh)
    assert list(drill_report.load_all(assets)) == ["trixie"]


def test_a_new_run_is_set_beside_the_report_it_replaced(tmp_path):
    with open(RESULTS, encoding="utf-8") as fh:
        previous = json.load(fh)
    now = copy.deepcopy(previous)
    now["meta"].update(started="2030-01-01 00:00:00 UTC", note="new HA core", parts=None)
    now["results"] = [dict(r, write_s=r["write_s"] + 1.0) for r in now["results"]]
    assert drill_report.previous_path(str(tmp_path), "bookworm").endswith("/results.previous.json")
    out = tmp_path / "failover.md"
    drill_report.write(str(out), {"bookworm": now})
    assert "Beside the previous report" not in out.read_text()
    drill_report.write(str(out), {"bookworm": now}, previous)
    section = out.read_text().split("## Beside the previous report")[1].split("\n## ")[0]
    assert "| drill | figure | previous (" in section and "| now (2030-01-01 00:00:00 UTC, new HA core) |" in section
    row = next(line for line in section.splitlines() if line.startswith("| 1 | writes accepted (run), median |"))
    before, after = (float(cell.split("s")[0]) for cell in row.split("|")[3:5])
    assert round(after - before, 2) == 1.0
