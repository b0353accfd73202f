"""A lab stack with one media node more, without a second stack file: a bench or a test takes the
lab stack's raw config (lab/context.py `load`, tests' `stack_config("lab")`) and adds a `mediaNodes`
entry on that stack's own lab subnet.

    raw, _ = context.load("Pulumi.lab.yaml")
    cluster, _ = build(with_media_node(raw))          # spec_for(cluster): pbx1, pbx2, witness, media1
"""
from __future__ import annotations

import ipaddress
from typing import Any

from components.config import ConfigError, build


def with_media_node(raw: dict, name: str = "media1", last_octet: int = 21, *,
                    host_key: str | None = None) -> dict:
    """A deep copy of a lab stack's raw config (keys without the project prefix) with one media node
    added at the lab subnet's network address + last_octet. host_key: pinned in the stack (else the
    lab's known_hosts pins it, as for the other nodes). ConfigError, with every problem at once, when
    the result is no valid stack, e.g. a name or address another host has (the config's own rules
    decide: components/config.py _check_media_nodes); ValueError when raw is not a lab stack or
    last_octet is no host address of its subnet."""
    lab = raw.get("lab")
    if raw.get("environment") != "lab" or not isinstance(lab, dict) or "subnet" not in lab:
        raise ValueError("with_media_node: not a lab stack's config (environment 'lab' with lab.subnet)")
    net = ipaddress.IPv4Network(lab["subnet"], strict=False)
    if not 0 < last_octet < net.num_addresses - 1:
        raise ValueError(f"with_media_node: last_octet {last_octet} is not a host of the lab subnet {net} "
                         f"(allowed: 1..{net.num_addresses - 2})")
    entry = {"name": name, "address": str(net.network_address + last_octet)}
    if host_key is not None:
        entry["hostKey"] = host_key
    out = _copy(raw)
    out["mediaNodes"] = [*(out.get("mediaNodes") or []), entry]
    # the config's own rules decide (one place); the source names the node this call added
    build(out, source=f"the lab stack with media node {name} at {entry['address']} added")
    return out


def _copy(value: Any) -> Any:
    """Dicts and lists copied, leaves kept: copy.deepcopy would rebuild a SecretPlaceholder (a str made
    from its key) from its text, "<secret:<secret:key>>"."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value
