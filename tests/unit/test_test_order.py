"""The suite's own order (tests/conftest.py): the unit and daemons tiers shuffled by pytest-randomly,
a scenario module's steps and the lab tier in written order whatever the seed, each release's
test lab built once (its tests contiguous). Checked on what pytest collects, in a subprocess."""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

from components.releases import RELEASES
from tests.mockrun import ROOT

LAB_TIER = ["tests/harness", "tests/lab_machinery", "tests/lab"]
#: the modules whose tests are the steps of one story (SCENARIO = True: test_failover_rig.ordered_rig)
SCENARIOS = sorted(str(p.relative_to(ROOT)) for p in Path(ROOT, "tests/daemons").glob("test_*.py")
                   if "\nSCENARIO = True" in p.read_text())


PATHS = ("tests/daemons/test_postgres.py", *SCENARIOS, *LAB_TIER)


@functools.cache
def collected(*args: str) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return [line for line in out.stdout.splitlines() if "::" in line]


def test_the_lab_tier_and_scenarios_keep_their_order_and_the_rest_is_shuffled():
    written = collected("-p", "no:randomly", *PATHS)
    orders = [collected(f"--randomly-seed={seed}", *PATHS) for seed in (1, 2)]
    for order in orders:
        assert sorted(order) == sorted(written)
        for path in SCENARIOS + LAB_TIER:
            assert [i for i in order if i.startswith(path)] == [i for i in written if i.startswith(path)], path
        lab = [i for i in order if i.startswith(tuple(LAB_TIER))]
        assert order[-len(lab):] == lab, "the lab tier runs last"
    pg = [[i for i in order if i.startswith("tests/daemons/test_postgres.py")] for order in orders]
    assert pg[0] != pg[1], "two seeds, the same order: pytest-randomly is not shuffling"


def test_each_release_lab_is_built_once():
    """pytest groups the lab tests by the session-scoped lab of their release: one block per
    release, so one lab at a time and each built once (the order hook must run before that grouping)."""
    order = [i for i in collected("--randomly-seed=1", *PATHS) if i.startswith("tests/lab/")]
    releases = [next(r for r in RELEASES if f"[{r}" in i) for i in order if any(f"[{r}" in i for r in RELEASES)]
    blocks = [r for n, r in enumerate(releases) if n == 0 or releases[n - 1] != r]
    assert sorted(blocks) == sorted(set(releases)) and len(set(releases)) == len(RELEASES), blocks
