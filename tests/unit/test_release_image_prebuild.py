"""The suite builds Debian 13's node image once before the first test when the daemons tier is
collected and the image is not cached (tests/conftest.py): on a fresh machine the build takes
longer than a test's timeout, and every test needing it timed out in turn (63 errors in one run)."""
from __future__ import annotations

import pathlib
import types

import pytest

import tests.conftest as suite
from tests import release_root


def _session(*tiers: str):
    lines: list[str] = []
    reporter = types.SimpleNamespace(write_line=lines.append)
    items = [types.SimpleNamespace(path=pathlib.Path(suite.ROOT, "tests", t, "test_x.py")) for t in tiers]
    config = types.SimpleNamespace(option=types.SimpleNamespace(collectonly=False),
                                   pluginmanager=types.SimpleNamespace(get_plugin=lambda name: reporter))
    return types.SimpleNamespace(items=items, config=config), lines


@pytest.fixture
def cache(monkeypatch):
    state = {"missing": [pathlib.Path("/var/cache/hapbx/layers/x")], "built": [], "fail": None}

    def ensure(codename):
        if state["fail"]:
            raise RuntimeError(state["fail"])
        state["built"].append(codename)
    monkeypatch.setattr(release_root, "available", lambda: None)
    monkeypatch.setattr(release_root, "image_missing", lambda codename: state["missing"])
    monkeypatch.setattr(release_root, "ensure_image", ensure)
    return state


def test_built_once_before_the_tests_when_the_daemons_tier_needs_it(cache):
    session, lines = _session("unit", "daemons", "daemons")
    suite.pytest_collection_finish(session)
    assert cache["built"] == ["trixie"]
    assert lines[0].startswith("building Debian 13's node image") and lines[1].startswith("... built in")


def test_nothing_built_when_cached_or_without_the_daemons_tier(cache):
    session, lines = _session("unit", "lab")
    suite.pytest_collection_finish(session)
    cache["missing"] = []
    suite.pytest_collection_finish(_session("daemons")[0])
    assert cache["built"] == [] and lines == []


def test_a_failed_build_is_said_and_left_to_the_tests(cache):
    cache["fail"] = "apt-get install: exit 100"
    session, lines = _session("daemons")
    suite.pytest_collection_finish(session)   # no exception: the trixie_root fixture fails with the cause
    assert cache["built"] == [] and "failed after" in lines[1] and "exit 100" in lines[1]
