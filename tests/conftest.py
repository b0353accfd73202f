import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from components.releases import RELEASES  # noqa: E402
from tests import leftovers  # noqa: E402
from tests.mockrun import run_ok, stack_config  # noqa: E402

FAKE_TOKEN = "tok-Vq3mZ9-not-a-real-token"


@pytest.fixture
def ssh_files(tmp_path):
    """A private key file and a known_hosts pinning every host of both stacks."""
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAfakekeyZk2\n-----END OPENSSH PRIVATE KEY-----\n")
    hosts = ["10.77.0.11", "10.77.0.12", "10.77.0.13", "192.168.1.101", "192.168.1.102", "192.168.1.103"]
    known = tmp_path / "known_hosts"
    known.write_text("".join(f"{h} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i}hostkey\n" for i, h in enumerate(hosts)))
    return {"privateKeyFile": str(key), "knownHostsFile": str(known)}


@pytest.fixture
def lab_config(ssh_files):
    raw = stack_config("lab")
    raw["ssh"] = {**raw["ssh"], **ssh_files}
    return raw


@pytest.fixture
def prod_config(ssh_files):
    raw = stack_config("prod")
    raw["ssh"] = {**raw["ssh"], **ssh_files}
    raw["vendorRepoToken"] = FAKE_TOKEN
    return raw


@pytest.fixture(params=["lab", "prod"])
def stack(request, lab_config, prod_config):
    """(graph, generated secrets, raw config) of each shipped stack under mocks."""
    if request.param == "lab":
        return run_ok(lab_config) + (lab_config,)
    return run_ok(prod_config, ["vendorRepoToken"]) + (prod_config,)


@pytest.fixture(scope="session", autouse=True)
def no_daemon_left_behind():
    """Fails the run (an error at the last test's teardown) when a daemon a test started is still
    running at the end of the session, ~10 s of grace included, and kills it (tests/leftovers.py:
    which processes are the session's; a lab kept with HAPBX_KEEP_TEST_LAB=1 is not counted)."""
    session = leftovers.Session()
    yield
    left = session.check(keep_lab=os.environ.get("HAPBX_KEEP_TEST_LAB") == "1")
    if left:
        leftovers.kill(left)
        pytest.fail("daemons started by this test session were still running at its end (now killed):\n"
                    + leftovers.report(left), pytrace=False)


# --- order: unit and daemons tests run in a random order (pytest-randomly: the seed is in the
# header, `--randomly-seed=N` replays it, `-p no:randomly` runs in written order); the lab tier
# keeps its written order (its labs are session fixtures, built per release) and runs last --------
LAB_TIER = ("harness", "lab_machinery", "lab")
_COLLECTED = pytest.StashKey[int]()
_collected = iter(range(1 << 62))


def _in_lab_tier(item) -> bool:
    parts = item.path.relative_to(ROOT).parts if item.path.is_relative_to(ROOT) else ()
    return len(parts) > 2 and parts[0] == "tests" and parts[1] in LAB_TIER


def pytest_itemcollected(item):
    item.stash[_COLLECTED] = next(_collected)


def _scenario(item) -> bool:
    """A module whose tests are the steps of one story on one rig (SCENARIO = True; see
    tests/daemons/test_failover_rig.ordered_rig): its steps keep their written order."""
    return bool(getattr(getattr(item, "module", None), "SCENARIO", False))


@pytest.hookimpl(tryfirst=True)   # before pytest's own grouping (fixtures.py), or the labs alternate
def pytest_collection_modifyitems(items):
    """After pytest-randomly's shuffle, before pytest groups the tests by their parametrized
    session fixtures (the lab per release): a scenario module's steps back in written order (in
    the places the shuffle gave them), the lab tier back in collection order, at the end."""
    slots: dict[str, list[int]] = {}
    for n, i in enumerate(items):
        if _scenario(i):
            slots.setdefault(i.module.__name__, []).append(n)
    for positions in slots.values():
        steps = sorted((items[n] for n in positions), key=lambda i: i.stash[_COLLECTED])
        for n, step in zip(positions, steps):
            items[n] = step
    lab = [i for i in items if _in_lab_tier(i)]
    if lab:
        items[:] = [i for i in items if not _in_lab_tier(i)] + sorted(lab, key=lambda i: i.stash[_COLLECTED])


def pytest_collection_finish(session):
    """The daemons tier runs Debian 13's daemons from the lab's trixie node image
    (tests/release_root.py). On a machine without it cached, building it (debootstrap, then apt-get
    of the node packages) takes minutes, longer than a test's timeout: every test needing it would
    time out in turn. So it is built here, once, before the first test."""
    if session.config.option.collectonly or not any(
            i.path.is_relative_to(os.path.join(ROOT, "tests", "daemons")) for i in session.items):
        return
    from tests import release_root
    if release_root.available() is not None or not release_root.image_missing("trixie"):
        return   # built already; or not buildable here, which the trixie_root fixture reports
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter else print
    say("building Debian 13's node image for the daemons tier (not cached on this machine) ...")
    started = time.monotonic()
    try:
        release_root.ensure_image("trixie")
    except Exception as err:  # noqa: BLE001 - the tests needing it fail on their own, with the cause
        say(f"... failed after {time.monotonic() - started:.0f} s: {err}")
        return
    say(f"... built in {time.monotonic() - started:.0f} s")


# --- time per tier and per Debian release, printed at the end (the README's test table) ---------
_TIER_SECONDS: dict[str, float] = {}


def _tier(item_path: str, nodeid: str) -> str:
    part = item_path.split("tests/", 1)[-1].split("/", 1)[0]
    tier = {"unit": "unit", "daemons": "daemons"}.get(part, "lab")
    for release in RELEASES if tier == "lab" else ():   # the lab fixture's ids
        if f"[{release}" in nodeid:
            return f"{tier} ({release})"
    return tier


def pytest_runtest_logreport(report):
    key = _tier(str(report.fspath), report.nodeid)
    _TIER_SECONDS[key] = _TIER_SECONDS.get(key, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if _TIER_SECONDS:
        terminalreporter.write_line("time per tier (setup + call + teardown): " + ", ".join(
            f"{k} {v:.0f} s" for k, v in sorted(_TIER_SECONDS.items())))
