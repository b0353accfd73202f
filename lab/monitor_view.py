"""What the lab's own monitoring says, for `./hapbx lab status`: each node's roles (the hapbx
exporter's series in Prometheus) and the alerts firing (Alertmanager), asked from the lab host
(monitoring.allowFrom holds it). The first node that answers is asked; none answering is said."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request

from components.config import ClusterConfig

ROLE_SERIES = {"VIP": "hapbx_vip_owner", "PostgreSQL primary": "hapbx_postgres_primary",
               "lease": "hapbx_lease_holder"}


def get(url: str) -> dict | list:
    with urllib.request.urlopen(url, timeout=3) as r:
        return json.loads(r.read())


def lines(cluster: ClusterConfig) -> list[str]:
    m = cluster.monitoring
    if not m.enabled:
        return ["  monitoring: off (monitoring.enabled)"]
    for n in cluster.nodes:
        prom, am = f"http://{n.address}:{m.prometheus_port}", f"http://{n.address}:{m.alertmanager_port}"
        try:
            roles: dict[str, list[str]] = {}
            for what, series in ROLE_SERIES.items():
                out = get(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": f"{series} == 1"}))
                for r in out["data"]["result"]:
                    roles.setdefault(r["metric"].get("node", "?"), []).append(what)
            alerts = get(f"{am}/api/v2/alerts?active=true&silenced=false&inhibited=false")
        except (OSError, ValueError, KeyError):
            continue
        out = ["  roles:   " + ("; ".join(f"{node}: {', '.join(w)}" for node, w in sorted(roles.items()))
                                 or "no node holds a role (per Prometheus)") + f"  (asked {n.name})"]
        firing = sorted((a["labels"].get("severity", "?"), a["labels"].get("alertname", "?"),
                         a["labels"].get("node", "")) for a in alerts)
        out.append(f"  alerts:  {len(firing)} firing" + "".join(f"\n           {sev:<8} {name} {node}".rstrip()
                                                              for sev, name, node in firing))
        out.append(f"  UIs:     Prometheus {prom}/  Alertmanager {am}/  (each node has both)")
        return out
    return ["  monitoring: no Prometheus or Alertmanager answered (is the stack applied?)"]
