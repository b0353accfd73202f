"""`hapbx bench sip`: the pure parts (SIPp stat/rtt parsing in lab/sipp.py, percentiles, the step and
stop rules, the stock configuration edit). No SIPp, no lab."""
from __future__ import annotations

import pytest

from bench import sip as b
from lab import sipp

STAT = ("StartTime;CurrentTime;OutgoingCall(C);CurrentCall;SuccessfulCall(C);FailedCall(C);Retransmissions(C);\n"
        "2026-11-25\t11:11:45;x;10;10;0;0;0;\n"
        "2026-11-25\t11:11:46;x;20;5;15;0;2;\n")
RTT = "Date_ms;response_time_ms;rtd_no\n100.0;4;1\n200.0;8;1\n300.0;2;2\n400.0;12;1\n"


def step(**kw) -> b.Step:
    base = dict(scenario="register", target="ours", rate=100, seconds=10, attempted=1000, ok=1000, failed=0,
                p95=10.0, elapsed=10.0)
    base.update(kw)
    return b.Step(**base)


def test_stat_csv_rows_by_header():
    rows = sipp.parse_stat_csv(STAT)
    assert len(rows) == 2
    assert sipp.stat_int(rows[-1], "OutgoingCall(C)") == 20
    assert sipp.stat_int(rows[-1], "Retransmissions(C)") == 2
    assert sipp.stat_int(rows[-1], "NoSuchColumn") == 0
    assert sipp.parse_stat_csv("") == []


def test_rtt_values_of_one_rtd_and_start_span():
    assert sipp.parse_rtt_csv(RTT) == [4.0, 8.0, 12.0]
    assert sipp.parse_rtt_csv(RTT, "2") == [2.0]
    rows = sipp.parse_rtt_rows(RTT)
    # starts at 96, 192, 388 ms: 3 calls over 0.292 s, scaled from 2 intervals to 3
    assert sipp.start_span(rows) == pytest.approx(0.292 * 3 / 2)
    assert sipp.start_span(rows[:1]) == 0.0


def test_screen_counts():
    screen = "  Successful call        |        0                  |       1999     \n" \
             "  Failed call            |        0                  |       1        \n"
    assert sipp.screen_counts(screen) == (1999, 1)
    assert sipp.screen_counts("nothing") is None
    assert sipp.counts(screen) == (1999, 1) and sipp.counts("nothing") == (0, 0)   # the functional runs' reading


@pytest.mark.parametrize("values,q,want", [([], 95, None), ([5.0], 50, 5.0), (list(range(1, 101)), 95, 95),
                                           (list(range(1, 101)), 99, 99), ([3, 1, 2], 50, 2)])
def test_percentile_nearest_rank(values, q, want):
    assert b.percentile([float(v) for v in values], q) == want


def test_stop_rules():
    assert b.stop_reason(step()) is None
    assert "failures" in b.stop_reason(step(failed=2))              # 0.2 % > 0.1 %
    assert b.stop_reason(step(failed=1)) is None                    # 0.1 % is not more than 0.1 %
    assert "p95" in b.stop_reason(step(p95=51.0))                   # REGISTER: p95 over 50 ms
    assert b.stop_reason(step(scenario="calls", p95=80.0)) is None  # calls: failures only
    assert "rate not reached" in b.stop_reason(step(elapsed=12.0))  # 83/s of 100/s offered
    assert b.stop_reason(step(attempted=0, ok=0)) == "nothing was sent"


def test_best_stops_at_the_first_failed_step_and_at_rate():
    steps = [step(rate=100), step(rate=200, elapsed=5.0), step(rate=300, failed=50), step(rate=400, elapsed=2.5)]
    assert b.best(steps).rate == 200
    assert b.best(steps[2:]) is None
    assert b.at_rate(steps, 150).rate == 200
    assert b.at_rate(steps, 500) is None


def test_bounded_clamps_every_loop():
    class A:
        users, register_rates, call_rates = 10 ** 6, [10 ** 6] * 50, [0]
        step_seconds, call_hold_ms, concurrent, ramp_rate, hold_seconds, max_minutes = 10 ** 6, -1, 10 ** 6, 0, 10 ** 6, 999
        queues = 10 ** 6
    a = A()
    b.bounded(a)
    assert a.users == 20000 and len(a.register_rates) == 12 and max(a.register_rates) == 5000
    assert a.call_rates == [1] and a.step_seconds == 120 and a.call_hold_ms == 0 and a.max_minutes == 60
    assert a.queues == b.MAX_QUEUES


def test_users_call_the_queue_numbers_in_turn(tmp_path):
    queues = b.queue_numbers(3)
    assert queues == [b.CALLEE, "7989998", "7989997"]
    with pytest.raises(ValueError):
        b.queue_numbers(0)
    path = b.users_file(str(tmp_path), [(f"79000{i}", f"pw{i}") for i in range(5)], queues)
    lines = open(path).read().splitlines()
    assert lines[0] == "SEQUENTIAL"
    # field2 is the number called (bench/scenarios/call.xml's Request-URI and To)
    assert [x.split(";")[2] for x in lines[1:]] == ["7989999", "7989998", "7989997", "7989999", "7989998"]
    assert lines[1].split(";")[1] == "[authentication username=790000 password=pw0]"
    assert (tmp_path / "users.csv").stat().st_mode & 0o777 == 0o600
    call = open(f"{b.SCENARIOS}/call.xml").read()
    assert "INVITE sip:[field2]@" in call and "[service]" not in call


def test_engine_shares_count_the_numbers_each_engine_answers():
    assert b.engine_shares({"1": "10.0.0.12:5080", "2": "10.0.0.11:5080", "3": "10.0.0.12:5080"}) == {
        "10.0.0.11:5080": 1, "10.0.0.12:5080": 2}


SHIPPED = ('#!KAMAILIO\n#\n#!ifdef WITH_MYSQL\n#!trydef DBURL "mysql://kamailio:kamailiorw@localhost/kamailio"\n#!endif\n'
           '# listen=udp:10.0.0.10:5060\n#!ifdef WITH_MYSQL\nloadmodule "db_mysql.so"\n#!endif\n')


def test_stock_config_enables_db_auth_usrloc_and_nothing_else():
    cfg = b.stock_config(SHIPPED, "udp:10.79.0.11:5070", "/run/x/dburl.cfg")
    assert cfg.startswith("#!KAMAILIO\n")
    for d in ("#!define WITH_MYSQL", "#!define WITH_AUTH", "#!define WITH_USRLOCDB", 'include_file "/run/x/dburl.cfg"'):
        assert d in cfg
    assert 'loadmodule "db_postgres.so"' in cfg and "db_mysql.so" not in cfg
    assert "listen=udp:10.79.0.11:5070" in cfg
    with pytest.raises(ValueError):
        b.stock_config("not kamailio", "udp:1.2.3.4:5070", "/x")
