"""The switchover-with-calls report says what the runs measured: a dropped call makes the target
'not met', the switch times are min / median / max of every move."""
from bench.switchover_calls import Run, report

META = {"command": "./hapbx bench switchover", "started": "2026-12-07 11:00 UTC", "took": 400.0,
        "info": {"cores": "2", "cpu": "x", "memory": "1 MiB", "kernel": "k"}, "load_start": "0", "load_end": "0",
        "lab": "hapbx-lab", "calls": 200, "rate": 20, "hold_seconds": 150, "kamailio": "kamailio 5.6.3"}


def run(n, ok, failed, switches=(8.0, 9.0)):
    return Run(str(n), 200, first_owner="pbx1", up_before_switch=200, switch_seconds=list(switches),
               owners=["pbx2", "pbx1"], ok=ok, failed=failed)


def test_every_call_kept_meets_the_target():
    text = report([run(1, 200, 0), run(2, 200, 0, (7.5, 12.0))], META)
    assert "**400 of 400 calls kept** over 2 legs, 0 dropped" in text and "**met**" in text
    assert "7.5 / 9.0 / 12.0 s (min / median / max of 4)" in text


def test_one_dropped_call_is_not_met():
    r = run(1, 199, 1)
    assert not r.kept and run(2, 200, 0).kept
    text = report([r], META)
    assert "199 of 200 calls kept" in text and "**not met**" in text


def test_a_failed_switch_is_said():
    r = Run("1", 200, first_owner="pbx1", up_before_switch=200, ok=200, note="switchover failed: refused")
    text = report([r], META)
    assert "none completed" in text and "switchover failed: refused" in text


def test_the_upgrade_report_says_what_ran_as_the_upgrade():
    meta = {**META, "during": "upgrade", "upgrade_command": "systemctl restart kamailio.service"}
    text = report([run(1, 200, 0, (95.0,))], meta)
    assert text.startswith("# Calls held through a rolling upgrade of both nodes")
    assert "`./hapbx upgrade`'s order" in text and "systemctl restart kamailio.service" in text
    assert "the whole rolling upgrade: 95.0 / 95.0 / 95.0 s" in text
