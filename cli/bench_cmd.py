"""`hapbx bench sip|cdr|switchover`: the arguments, then bench/sip.py, bench/cdr.py or bench/switchover_calls.py."""
from __future__ import annotations

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def add_parser(sub) -> None:
    from bench import cdr, devstack, sip
    b = sub.add_parser("bench", help="measure a part and write reports/<part>-bench.md")
    bsub = b.add_subparsers(dest="bench_command", required=True)

    # `bench cdr`: loopback
    c = bsub.add_parser("cdr", help="CDR pipeline: records/s sustained and end-to-end latency")
    c.add_argument("--rate", type=int, default=cdr.TARGET_RATE,
                   help=f"records/s of the sustained phase ({cdr.TARGET_RATE})")
    c.add_argument("--seconds", type=float, default=20, help="length of each sustained run (20)")
    c.add_argument("--repeat", type=int, default=3, help="sustained runs (3): the machine may be shared")
    c.add_argument("--steps", type=int, default=3, help="higher rates tried after it (3)")
    c.add_argument("--step", type=int, default=500, help="rate increase per step (500)")
    c.add_argument("--step-seconds", type=float, default=15, help="length of each step (15)")
    c.add_argument("--connections", type=int, default=32, help="concurrent poster connections (32)")
    c.add_argument("--batch", type=int, default=500, help="worker batch size (500, as cdr.batchSize)")
    c.add_argument("--wait-ms", type=int, default=100, help="receiver WAIT for the replica (100, as cdr.waitReplicaMs)")
    deployed = devstack.deployed_appendfsync()
    c.add_argument("--appendfsync", choices=("always", "everysec", "no"), default=deployed,
                   help=f"Redis AOF fsync policy measured ({deployed}: as the nodes run it)")
    c.add_argument("--baseline", choices=("always", "everysec", "no", "none"), default="everysec",
                   help="every phase again under this policy, side by side in the report (everysec; none: off)")
    c.add_argument("--out", default=cdr.REPORT, help="report file (reports/cdr-bench.md)")
    c.set_defaults(func=lambda args: cdr.run(args))

    # `bench sip`: the running lab, ours against stock Kamailio
    s = bsub.add_parser("sip", help="SIP on the running lab: REGISTER and calls, ours vs stock Kamailio")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--stack", default="lab", help="lab stack (reads Pulumi.<stack>.yaml; default lab)")
    g.add_argument("--config", help="a lab stack file instead")
    s.add_argument("--users", type=int, default=2000, help="bench users provisioned (2000)")
    s.add_argument("--register-rates", type=rates, default=[200, 400, 500, 700, 1000, 1300, 1600, 2000],
                   help="REGISTER/s steps (200,400,500,700,1000,1300,1600,2000)")
    s.add_argument("--call-rates", type=rates, default=[50, 100, 150, 200, 250, 300, 400, 500],
                   help="calls/s steps (50,100,150,200,250,300,400,500)")
    s.add_argument("--queues", type=int, default=sip.QUEUES,
                   help=f"queue numbers called, the users in turn (dispatcher hashes the number; {sip.QUEUES})")
    s.add_argument("--step-seconds", type=float, default=12, help="length of each step (12)")
    s.add_argument("--call-hold-ms", type=int, default=4000, help="holding time of the stepped calls (4000)")
    s.add_argument("--concurrent", type=int, default=sip.TARGET_CONCURRENT, help="calls held at once (800)")
    s.add_argument("--ramp-rate", type=int, default=100, help="calls/s of the ramp to --concurrent (100)")
    s.add_argument("--hold-seconds", type=int, default=40, help="holding time of the held calls (40)")
    s.add_argument("--stock-port", type=int, default=5070, help="UDP port of the stock baseline (5070)")
    s.add_argument("--stock-shm-mb", type=int, default=64, help="stock -m (Debian's default 64)")
    s.add_argument("--stock-pkg-mb", type=int, default=8, help="stock -M (Debian's default 8)")
    s.add_argument("--no-stock", action="store_true", help="ours only")
    s.add_argument("--runs", type=int, default=sip.RUNS,
                   help=f"runs of the whole bench; headline figures are their medians, with the spread ({sip.RUNS})")
    s.add_argument("--max-minutes", type=float, default=20, help="each run's time bound (20)")
    s.add_argument("--out", default=os.path.join(ROOT, sip.REPORT), help=f"report file ({sip.REPORT})")
    s.add_argument("--from-json", help="write the report and chart again from a run's saved results (no traffic)")
    s.set_defaults(func=sip.run)

    # `bench switchover`: calls held through a planned switchover (or a rolling upgrade) on the running lab
    from bench import switchover_calls
    switchover_calls.add_parser(bsub)

    # `bench media`: calls/s on a lab with media-only nodes, with them and without (bench/media_scale.py)
    from bench import media_scale
    m = bsub.add_parser("media", help="calls/s on a lab with media-only nodes: with them and without, side by side")
    g = m.add_mutually_exclusive_group()
    g.add_argument("--stack", default="lab", help="lab stack (reads Pulumi.<stack>.yaml; default lab)")
    g.add_argument("--config", help="a lab stack file instead (one with mediaNodes)")
    m.add_argument("--users", type=int, default=2000, help="bench users provisioned (2000)")
    m.add_argument("--queues", type=int, default=sip.QUEUES, help=f"queue numbers called ({sip.QUEUES})")
    m.add_argument("--call-rates", type=rates, default=[100, 200, 300, 400, 500, 600],
                   help="calls/s steps (100,200,300,400,500,600)")
    m.add_argument("--step-seconds", type=float, default=12, help="length of each step (12)")
    m.add_argument("--call-hold-ms", type=int, default=4000, help="holding time of the calls (4000)")
    m.add_argument("--runs", type=int, default=sip.RUNS, help=f"runs; the figure is their median ({sip.RUNS})")
    m.add_argument("--max-minutes", type=float, default=20, help="each run's time bound (20)")
    m.add_argument("--out", default=os.path.join(ROOT, media_scale.REPORT), help=f"report file ({media_scale.REPORT})")
    m.add_argument("--note", default="", help="a line for the report (what else ran on the host)")
    # bench sip's bounds (sip.bounded) read these too; this bench has no REGISTER or held-calls scenario
    m.set_defaults(func=media_scale.run, register_rates=[1], concurrent=1, ramp_rate=1, hold_seconds=1)
