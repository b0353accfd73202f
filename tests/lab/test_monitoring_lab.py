"""Monitoring on the lab: both Prometheus servers scrape every target up; every dashboard query
returns data (or is listed with its reason in lab/dashboards.py); a password-guessing attack from
the attacker namespace reaches the lab host's webhook receiver exactly once, then resolves.

The lab host reaches the UIs (the lab stack's monitoring.allowFrom) and receives the alerts
(monitoring.webhookUrls); nothing here sends anywhere but to the lab's own addresses.
"""
from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request

import pytest

from lab import alert_drill, dashboards, drills
from lab.alert_inbox import AlertInbox
from lab.context import LabContext


def api(lab, node, path: str, port_of=lambda m: m.prometheus_port) -> dict | list:
    n = next(x for x in lab.cluster.nodes if x.name == node)
    url = f"http://{n.address}:{port_of(lab.cluster.monitoring)}{path}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def expected_targets(lab) -> int:
    jobs = 7   # node, postgres, redis, kamailio, hapbx, prometheus, alertmanager on each node
    return jobs * len(lab.cluster.nodes) + len(lab.cluster.nodes) + 1   # + etcd on every member


def test_every_scrape_target_of_both_prometheus_is_up(lab):
    deadline = time.monotonic() + 120
    for node in [n.name for n in lab.cluster.nodes]:
        while True:
            targets = api(lab, node, "/api/v1/targets")["data"]["activeTargets"]
            down = [f"{t['labels']['job']}@{t['labels'].get('node')}: {t.get('lastError')}" for t in targets
                    if t["health"] != "up"]
            if not down and len(targets) == expected_targets(lab):
                break
            assert time.monotonic() < deadline, f"{node}'s Prometheus: {len(targets)} targets, not up: {down}"
            time.sleep(3)


def test_every_dashboard_query_returns_data(lab):
    node = lab.cluster.nodes[0].name
    empty = []
    checked = 0
    for dash, title, expr in dashboards.queries():
        if (dash, title) in dashboards.LAB_WITHOUT_DATA:
            continue
        q = dashboards.lab_query(expr, lab.cluster.monitoring.cluster_label)
        out = api(lab, node, "/api/v1/query?" + urllib.parse.urlencode({"query": q}))
        assert out["status"] == "success", (dash, title, q, out)
        checked += 1
        if not out["data"]["result"]:
            empty.append(f"{dash} / {title}: {q}")
    assert checked >= 20, checked
    assert not empty, "queries without data on the lab:\n" + "\n".join(empty)


def test_both_alertmanagers_form_one_cluster(lab):
    for n in lab.cluster.nodes:
        status = api(lab, n.name, "/api/v2/status", port_of=lambda m: m.alertmanager_port)
        peers = status["cluster"]["peers"]
        assert status["cluster"]["status"] == "ready" and len(peers) == 2, (n.name, status["cluster"])


def test_an_attack_alert_reaches_the_webhook_once_then_resolves(lab):
    c = lab.cluster
    if not c.monitoring.webhook_urls:
        pytest.fail("the lab stack sends alerts nowhere (monitoring.webhookUrls)")
    ctx = LabContext.from_cluster(lab.spec, c)
    sc = next(s for s in alert_drill.SCENARIOS if s.key == "attack")
    with AlertInbox.for_url(c.monitoring.webhook_urls[0]) as inbox:
        drills.setup(ctx)
        try:
            alert_drill.wait_quiet(ctx, c, (sc.expect,))
            r = alert_drill.run_scenario(ctx, c, lab.spec, inbox, sc, 1)
        finally:
            drills.cleanup(ctx)
    print(f"\nalert {sc.expect}: {r}")
    assert r["fault_to_firing_s"] is not None, r
    assert r["firing_notifications"] == 1, r
    assert r["heal_to_resolved_s"] is not None, r
