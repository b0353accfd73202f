"""The Grafana dashboards (dashboards/*.json): importable as they are, every query valid PromQL
(the real promtool), every metric one that an exporter of the cluster really exposes."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from lab import dashboards

EXPECTED = {"overview.json", "node.json", "postgres.json", "redis.json", "kamailio.json", "ha.json", "cdr.json"}
NAMES_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "metric_names"
DATASOURCE = "${DS_PROMETHEUS}"
#: PromQL words that look like metric names
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan"}
#: what the overview must show (issue 22), as words its panel titles contain
OVERVIEW_TOPICS = ("VIP owner", "PostgreSQL roles", "Lease holder", "Active calls", "Registrations",
                   "Calls per second", "Replication lag (bytes)", "Replication lag (seconds)", "CDR queue",
                   "dead letters", "Attacks refused", "Targets up")

DASHBOARDS = dashboards.load()


def known_names() -> set[str]:
    """Every fixture file's names: the exporters as Debian 12 ships them (listed from the running
    exporters), Kamailio's xhttp_prom names, the hapbx exporter's names, Prometheus' own."""
    names = set()
    for path in NAMES_DIR.glob("*.txt"):
        names |= {line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: what is left once strings, label matchers, range
    selectors, grouping clauses, function calls, keywords and numbers are taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    words = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", e)
    return {w for w in words if w.lower() not in KEYWORDS}


def _all_panels():
    for name, dash in DASHBOARDS.items():
        for panel in dashboards.panels(dash):
            yield name, panel


def test_every_dashboard_is_there():
    assert set(DASHBOARDS) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_import_structure(name):
    dash = DASHBOARDS[name]
    assert [(i["name"], i["type"], i["pluginId"]) for i in dash["__inputs"]] == [
        ("DS_PROMETHEUS", "datasource", "prometheus")]
    assert dash["id"] is None                                    # an export: Grafana assigns its own
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"]) and dash["title"].strip()
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    cluster = variables["cluster"]
    assert cluster["type"] == "query" and cluster["query"]["query"] == "label_values(up, cluster)"
    assert cluster["datasource"]["uid"] == DATASOURCE
    # the external label `cluster` is absent from a node's own Prometheus: "All" must match everything
    assert cluster["includeAll"] and cluster["allValue"] == ".*"
    assert dash["panels"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_panels_have_titles_targets_and_a_place(name):
    dash = DASHBOARDS[name]
    ids, titles, cells = set(), set(), {}
    for panel in dashboards.panels(dash):
        title = panel.get("title", "").strip()
        assert title, panel
        assert title not in titles, f"{name}: two panels titled {title!r}"   # LAB_WITHOUT_DATA keys on it
        titles.add(title)
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["datasource"]["uid"] == DATASOURCE
        assert panel["targets"], f"{name}: {title} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == DATASOURCE
        g = panel["gridPos"]
        assert all(isinstance(g[k], int) for k in "hwxy") and g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{name}: {title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = title


def test_uids_are_unique():
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(uids) == len(set(uids)), uids


def test_the_overview_shows_what_an_operator_looks_at_first():
    titles = " | ".join(p["title"] for p in dashboards.panels(DASHBOARDS["overview.json"]))
    assert [t for t in OVERVIEW_TOPICS if t.lower() not in titles.lower()] == [], titles


def test_every_query_is_valid_promql(tmp_path):
    """All queries, Grafana's variables substituted as the lab test does, as recording rules of one
    file: promtool parses each expression (and names the one it cannot)."""
    exprs = [(n, t, dashboards.lab_query(e, "hapbx")) for n, t, e in dashboards.queries()]
    assert len(exprs) > 50
    assert not [e for _, _, e in exprs if "$" in e]
    rules = {"groups": [{"name": "dashboards", "rules": [{"record": f"dashboard:query_{i}", "expr": e}
                                                         for i, (_, _, e) in enumerate(exprs)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout, out.stdout


def test_promtool_catches_a_broken_query(tmp_path):
    """The check above can fail: promtool refuses a bad expression in the same file layout."""
    path = tmp_path / "bad.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "g", "rules": [
        {"record": "dashboard:query_0", "expr": dashboards.lab_query("rate(up[$__rate_interval]", "hapbx")}]}]}))
    out = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0


def test_metric_names_are_read_from_an_expression():
    expr = ('histogram_quantile(0.99, sum by (node, le) (rate(etcd_disk_wal_fsync_duration_seconds_bucket'
            '{cluster=~"$cluster", job="x"}[5m]))) * 1e3 > bool 0 and on() time() - '
            'hapbx_ha_role_since_timestamp_seconds offset 1m')
    assert metric_names(expr) == {"etcd_disk_wal_fsync_duration_seconds_bucket",
                                  "hapbx_ha_role_since_timestamp_seconds"}


def test_every_metric_is_a_known_name():
    known = known_names()
    assert {"node_cpu_seconds_total", "pg_up", "redis_up", "etcd_server_has_leader", "hapbx_vip_owner",
            "kamailio_usrloc_registered_users", "up"} <= known
    unknown = {(n, t, m) for n, t, e in dashboards.queries() for m in metric_names(e) if m not in known}
    assert not unknown, sorted(unknown)


def test_the_panels_without_lab_data_exist_and_say_why():
    panels = {(n, p["title"]) for n, p in _all_panels()}
    for key, reason in dashboards.LAB_WITHOUT_DATA.items():
        assert key in panels, key
        assert len(reason) > 20, key


def test_lab_query_substitutes_grafanas_variables():
    q = dashboards.lab_query('rate(up{cluster=~"$cluster", node=~"$node"}[$__rate_interval])', "hapbx-lab")
    assert q == 'rate(up{cluster=~"hapbx\\\\-lab|", node=~".*"}[1m])'
