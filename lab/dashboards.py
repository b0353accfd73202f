"""The Grafana dashboards of dashboards/*.json, as the queries they run.

``queries()`` yields (dashboard file, panel title, expr) for every target of every panel; the
lab test runs each one, through ``lab_query``, against the lab's Prometheus and wants data except
for the panels of ``LAB_WITHOUT_DATA``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboards"

#: what Grafana puts for its own variables; 1m holds several samples at any scrape interval allowed up to 15 s
#: and is what $__rate_interval comes to with Grafana's default 15 s datasource interval
RATE_INTERVAL = "1m"

#: (dashboard file, panel title) -> why that panel has no data on the lab
LAB_WITHOUT_DATA: dict[tuple[str, str], str] = {
    # every other panel answered on the lab (Debian 12, 2026-12-06, 112 queries; the lab nodes' disks
    # are reported, node exporter counts their root as a filesystem)
    ("overview.json", "Recordings retention (last run)"):
        "recordings retention runs once a day at backup.recordingsSchedule (03:30): a lab run seldom spans "
        "one, and until the first run no node has recordings.json (hapbx_recordings_status_present 0)",
}


def load() -> dict[str, dict]:
    """dashboard file name -> the parsed dashboard, every dashboards/*.json."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows' collapsed panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every query of every dashboard."""
    for name, dashboard in load().items():
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                yield name, panel["title"], target["expr"]


def lab_query(expr: str, cluster_label: str) -> str:
    """expr as Grafana sends it with cluster `cluster_label` chosen and every node ("All").

    ``cluster`` is an external label of each node's Prometheus (it marks alerts and federated
    series, not the local ones), so a node's own Prometheus stores series without it: `$cluster`
    becomes "<cluster_label>|", which matches the cluster's series wherever they carry the label
    and the unlabelled ones of a node's own Prometheus.
    """
    # a regex inside a PromQL string: its backslashes doubled
    label = re.escape(cluster_label).replace("\\", "\\\\")
    return (expr.replace("$cluster", f"{label}|")
            .replace("$node", ".*")
            .replace("$__rate_interval", RATE_INTERVAL)
            .replace("$__interval", RATE_INTERVAL))
