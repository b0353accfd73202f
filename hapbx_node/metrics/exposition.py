"""Prometheus text format 0.0.4: gauges (and counters) with their HELP and TYPE lines."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Gauge:
    name: str
    help: str
    samples: list[tuple[dict, float]] = field(default_factory=list)
    kind = "gauge"

    def set(self, value: float, **labels: str) -> "Gauge":
        self.samples.append((labels, value))
        return self


class Counter(Gauge):
    """A count that only grows (name ends in _total); it restarts at 0 when its source is remade."""
    kind = "counter"


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(gauges: list[Gauge]) -> str:
    """Each gauge with at least one sample (a gauge without: the value is unknown now)."""
    out = []
    for g in gauges:
        if not g.samples:
            continue
        out.append(f"# HELP {g.name} {_help(g.help)}\n# TYPE {g.name} {g.kind}\n")
        for labels, value in g.samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{g.name}{{{text}}} {_number(value)}\n" if text else f"{g.name} {_number(value)}\n")
    return "".join(out)
