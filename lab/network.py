"""The lab's bridge and its own nft table; nothing else on the host is touched.

The bridge carries an alias naming the lab, so the lab never adopts (or deletes)
an interface it did not create. The nft table drops anything routed into or out
of the bridge, so nodes reach each other and the host's bridge address only.
"""
from __future__ import annotations

import ipaddress
import json

from .host import CommandError, command
from .spec import LabSpec


def _alias(spec: LabSpec) -> str:
    return f"hapbx lab {spec.name}"


def _links() -> list[dict]:
    # -d: the alias is only in the detailed view.
    return json.loads(command(["ip", "-j", "-d", "addr", "show"]).stdout)


def _bridge(spec: LabSpec) -> dict | None:
    return next((link for link in _links() if link["ifname"] == spec.bridge), None)


def ensure_bridge(spec: LabSpec) -> bool:
    """Create/converge the bridge; True if it had to be created."""
    links = _links()
    _refuse_overlap(spec, links)
    link = next((lk for lk in links if lk["ifname"] == spec.bridge), None)
    created = link is None
    if created:
        command(["ip", "link", "add", "name", spec.bridge, "type", "bridge"])
        command(["ip", "link", "set", spec.bridge, "alias", _alias(spec)])
        # No IPv6 link-local address: the lab speaks IPv4 only, and the host should not
        # start sending router solicitations or MLD on it.
        command(["ip", "link", "set", spec.bridge, "addrgenmode", "none"])
    elif link.get("ifalias") != _alias(spec):
        raise CommandError(f"interface {spec.bridge} exists but was not made by lab "
                           f"{spec.name} (alias {link.get('ifalias')!r}); pick another bridge "
                           "name or remove that interface yourself")
    have = {(a["local"], a["prefixlen"]) for a in (link or {}).get("addr_info", ())
            if a.get("family") == "inet"}
    if (spec.host_address, spec.prefixlen) not in have:
        command(["ip", "addr", "add", f"{spec.host_address}/{spec.prefixlen}",
                 "dev", spec.bridge])
    command(["ip", "link", "set", spec.bridge, "up"])
    return created


def _refuse_overlap(spec: LabSpec, links: list[dict]) -> None:
    """The subnet must be the lab's alone, or nodes would be reachable from elsewhere."""
    for link in links:
        if link["ifname"] == spec.bridge:
            continue
        for a in link.get("addr_info", ()):
            if a.get("family") == "inet" and ipaddress.IPv4Network(
                    f"{a['local']}/{a['prefixlen']}", strict=False).overlaps(spec.network):
                raise CommandError(f"{link['ifname']} already has {a['local']}/{a['prefixlen']}, "
                                   f"which overlaps the lab subnet {spec.subnet}; choose "
                                   "another subnet")


def remove_bridge(spec: LabSpec) -> None:
    if bridge_exists(spec):  # never an interface the lab did not make
        command(["ip", "link", "del", spec.bridge])


def bridge_exists(spec: LabSpec) -> bool:
    link = _bridge(spec)
    return link is not None and link.get("ifalias") == _alias(spec)


def bridge_up(spec: LabSpec) -> bool:
    link = _bridge(spec)
    return link is not None and "UP" in link.get("flags", ())


# --- forwarding block -------------------------------------------------------

def _ruleset(spec: LabSpec) -> str:
    # With br_netfilter loaded (bridge-nf-call-iptables=1 on these hosts) frames
    # bridged between two nodes also pass the forward hook, with the bridge as both
    # input and output: only traffic crossing the bridge boundary is dropped.
    br, table = json.dumps(spec.bridge), spec.nft_table
    return f"""\
table inet {table}
delete table inet {table}
table inet {table} {{
    comment "hapbx lab {spec.name}: nothing is routed into or out of {spec.bridge}"
    chain forward {{
        type filter hook forward priority filter; policy accept;
        iifname {br} oifname != {br} counter drop
        oifname {br} iifname != {br} counter drop
    }}
}}
"""


def ensure_isolation(spec: LabSpec) -> None:
    # Declare-delete-define in one nft transaction: converges any previous state atomically.
    command(["nft", "-f", "-"], input=_ruleset(spec))


def isolation_present(spec: LabSpec) -> bool:
    return command(["nft", "list", "table", "inet", spec.nft_table], check=False).returncode == 0


def remove_isolation(spec: LabSpec) -> None:
    if isolation_present(spec):
        command(["nft", "delete", "table", "inet", spec.nft_table])
