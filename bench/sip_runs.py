"""The SIP bench's headline figures over N runs: each the median of the runs, with the spread
(min-max) beside it, so one disturbed run on a shared machine moves neither the figure nor the
verdict. Pure: the figures of one run come from bench/sip.py (`figures`)."""
from __future__ import annotations

import statistics
from dataclasses import dataclass


@dataclass
class Figure:
    values: list[float | None]     # one per run, None where the run had no such figure

    @property
    def known(self) -> list[float]:
        return [v for v in self.values if v is not None]

    @property
    def median(self) -> float | None:
        """The median of the runs that had the figure (None: none had it)."""
        return statistics.median(self.known) if self.known else None

    @property
    def low(self) -> float | None:
        return min(self.known) if self.known else None

    @property
    def high(self) -> float | None:
        return max(self.known) if self.known else None

    def show(self, unit: str = "", digits: int = 0) -> str:
        """'200 (150-250)': the median, the runs' min-max; '-' when no run had it; runs without
        the figure said."""
        if self.median is None:
            return "-"

        def f(v: float) -> str:
            return f"{v:.{digits}f}{unit}"
        out = f(self.median)
        if len(self.values) > 1:
            out += f" ({f(self.low)}-{f(self.high)})"
        missing = len(self.values) - len(self.known)
        return out + (f" [{missing} of {len(self.values)} runs: none]" if missing else "")


def aggregate(per_run: list[dict[str, float | None]]) -> dict[str, Figure]:
    """Figure name -> its values over the runs (a name missing from a run: None for it)."""
    names: list[str] = []
    for run in per_run:
        names += [n for n in run if n not in names]
    return {n: Figure([run.get(n) for run in per_run]) for n in names}


def ratio(ours: Figure, stock: Figure) -> str:
    """Ours divided by stock, of the medians."""
    if ours.median is None or not stock.median:
        return "-"
    return f"{ours.median / stock.median:.2f}x"
