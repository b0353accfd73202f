"""bench/media_scale.py's pure parts: which dispatcher destinations are media-only nodes', the
variants' alternating order, the figure per variant and the report's tables."""
from __future__ import annotations

from bench import media_scale as m
from bench import sip

# `kamcmd dispatcher.list` as Kamailio 5.6 prints it (abridged): two PBX engines and a media node
LISTING = """{
	NRSETS: 1
	RECORDS: {
		SET: {
			ID: 1
			TARGETS: {
				DEST: {
					URI: sip:10.77.0.11:5080
					FLAGS: AP
				}
				DEST: {
					URI: sip:10.77.0.12:5080
					FLAGS: AP
				}
				DEST: {
					URI: sip:10.77.0.21:5080;transport=udp
					FLAGS: AP
				}
			}
		}
	}
}"""


def test_only_the_media_nodes_destinations_are_disabled():
    assert m.media_only_destinations(LISTING, ["10.77.0.21"]) == ["sip:10.77.0.21:5080;transport=udp"]
    assert m.media_only_destinations(LISTING, ["10.77.0.2"]) == []       # no prefix match
    assert m.media_only_destinations(LISTING, []) == []


def test_flags_per_destination():
    assert m.flags_of(LISTING.replace("FLAGS: AP\n\t\t\t\t}\n\t\t\t}", "FLAGS: DX\n\t\t\t\t}\n\t\t\t}")) == {
        "sip:10.77.0.11:5080": "AP", "sip:10.77.0.12:5080": "AP", "sip:10.77.0.21:5080;transport=udp": "DX"}


def test_variants_alternate_between_runs():
    assert m.order(1) == ("all", "pbx-only") and m.order(2) == ("pbx-only", "all") and m.order(3) == m.order(1)


def _step(v, rate, failed=0, run=1):
    s = sip.Step("calls", v, rate, 10, 4000, attempted=rate * 10, ok=rate * 10 - failed, failed=failed,
                 elapsed=10.0, run=run, classified=True, kamailio_failed=failed)
    return s


def test_figure_is_the_highest_passing_rate_median_of_runs():
    runs = [{"all": [_step("all", 100), _step("all", 200), _step("all", 300, failed=50)],
             "pbx-only": [_step("pbx-only", 100), _step("pbx-only", 200, failed=50)]},
            {"all": [_step("all", 100, run=2), _step("all", 200, run=2), _step("all", 300, run=2)],
             "pbx-only": [_step("pbx-only", 100, failed=20, run=2)]}]
    f = m.figures(runs)
    assert f["all"].values == [200, 300] and f["all"].median == 250
    assert f["pbx-only"].values == [100, None]          # no step of run 2 passed
    meta = {"command": "./hapbx bench media", "started": "2026-12-07 18:00 UTC", "took": 60.0,
            "info": {"cores": "2"}, "owner": "pbx1", "lab": "hapbx-lab", "config": "x.yaml",
            "media_nodes": ["10.77.0.21"], "destinations": ["sip:10.77.0.21:5080"],
            "engines": {"all": {"10.77.0.11:5080": 4, "10.77.0.21:5080": 8}, "pbx-only": {"10.77.0.11:5080": 12}},
            "args": {"users": 20, "queues": 12, "call_hold_ms": 4000, "step_seconds": 10, "call_rates": [100, 200]}}
    meta["args"]["note"] = "a quiet host"
    text = m.report(runs, meta)
    assert "- note: a quiet host\n" in text
    assert "| all | 250 (200-300) | 10.77.0.11:5080: 4, 10.77.0.21:5080: 8 |" in text
    assert "| pbx-only | 100 (100-100) [1 of 2 runs: none] | 10.77.0.11:5080: 12 |" in text
    assert text.count("\n| all | ") == 1 + 6 and "| variant | run | offered/s" in text


def test_refused_before_any_traffic_without_media_nodes(tmp_path):
    class Args:
        config, stack, call_rates = str(sip.ROOT) + "/Pulumi.lab.yaml", "lab", [100]

    def has_media_nodes(lab, path):
        if not lab.cluster.media_nodes:
            raise sip.BenchRefused(f"no mediaNodes in {path}")
    try:
        sip.running_lab(Args, "media", 100, has_media_nodes)
    except sip.BenchRefused as err:
        assert str(err) == f"no mediaNodes in {Args.config}" and err.code == 2
    else:
        raise AssertionError("the shipped lab stack has no media node: refused")

    Args.config = str(tmp_path / "missing.yaml")
    try:
        sip.running_lab(Args, "media", 100)
    except sip.BenchRefused as err:
        assert "missing.yaml" in str(err) and err.code == 2
    else:
        raise AssertionError("a missing stack file is refused")


class FakeLab:
    """The two PBX nodes' Kamailio as `kamcmd` sees it: set_state changes the FLAGS dispatcher.list shows."""
    names = ("pbx1", "pbx2")

    def __init__(self):
        self.commands: list[tuple[str, str]] = []
        self.flags = {n: "AP" for n in self.names}

    def sh(self, node, cmd):
        self.commands.append((node, cmd))
        if cmd.startswith("kamcmd dispatcher.set_state "):
            self.flags[node] = {"d": "DX", "ap": "AP"}[cmd.split()[2]]
            return ""
        return LISTING.replace("FLAGS: AP\n\t\t\t\t}\n\t\t\t}", f"FLAGS: {self.flags[node]}\n\t\t\t\t}}\n\t\t\t}}")


URI = "sip:10.77.0.21:5080;transport=udp"


def test_pbx_only_disables_on_both_nodes_and_restores_whatever_happens():
    lab = FakeLab()
    try:
        with m.variant(lab, "pbx-only", [URI]) as check:
            assert lab.flags == {"pbx1": "DX", "pbx2": "DX"} and check() == []
            raise RuntimeError("SIPp failed")
    except RuntimeError:
        pass
    assert lab.flags == {"pbx1": "AP", "pbx2": "AP"}
    assert [c for _, c in lab.commands if "set_state" in c] == [
        f"kamcmd dispatcher.set_state d 1 {URI}"] * 2 + [f"kamcmd dispatcher.set_state ap 1 {URI}"] * 2


def test_a_destination_enabled_during_the_variant_is_reported():
    lab = FakeLab()
    with m.variant(lab, "pbx-only", [URI]) as check:
        lab.flags["pbx2"] = "AP"          # e.g. an operator's set_state, or a restarted Kamailio
        assert check() == [f"{URI} on pbx2: FLAGS AP"]
    with m.variant(lab, "all", [URI]) as check:
        assert check() == [] and lab.commands[-1][1] == f"kamcmd dispatcher.set_state ap 1 {URI}"
