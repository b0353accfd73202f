"""hapbx: check, render, test, lab, bench. Dispatch only; the work lives in the modules."""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stack_file(args) -> str:
    return args.config or os.path.join(ROOT, f"Pulumi.{args.stack}.yaml")


def cmd_check(args) -> int:
    from components.config import ConfigError, load_stack_file
    from components.pulumi_config_rules import check_stack_file
    try:
        cli_problems = check_stack_file(os.path.join(ROOT, "Pulumi.yaml"), args.config)
        cluster, warnings = load_stack_file(args.config)
        if cli_problems:  # what `pulumi preview` itself would refuse before running the program
            raise ConfigError(cli_problems, f"{args.config} (the Pulumi CLI's rules)")
    except FileNotFoundError:
        print(f"{args.config}: no such stack file", file=sys.stderr)
        return 2
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"{args.config}: ok ({cluster.environment}, nodes {', '.join(n.name for n in cluster.nodes)}, "
          f"witness {cluster.witness.name if cluster.witness else 'none: ' + str(cluster.no_witness_policy)})")
    return 0


def cmd_render(args) -> int:
    from components.config import ConfigError, load_stack_file
    from components.render.to_dir import write_render
    path = stack_file(args)
    try:
        cluster, _ = load_stack_file(path, assume_secrets=True)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    count = write_render(cluster, args.out)
    print(f"rendered {count} files for {len(cluster.nodes) + bool(cluster.witness)} hosts into {args.out} "
          "(secrets masked; manifest.json lists owner, mode, validation and action)")
    return 0


def cmd_test(args) -> int:
    from lab import hostdeps
    import pytest
    hostdeps.ensure(hostdeps.TEST_TOOLS, "the test suite")
    os.chdir(ROOT)
    paths = {"unit": ["tests/unit"], "daemons": ["tests/daemons"],
             "lab": ["tests/harness", "tests/lab_machinery", "tests/lab"]}
    targets = [p for t in (args.tier or ["unit", "daemons", "lab"]) for p in paths.get(t, [t])]
    code = pytest.main(["-p", "no:cacheprovider", "-ra", *targets, *args.pytest_args])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print("hapbx test: no tests were collected: that is a failure, not a pass", file=sys.stderr)
        return 1
    return int(code)


def cmd_lab(args) -> int:
    from cli import lab_cmd
    return lab_cmd.run(args)


def cmd_restore(args) -> int:
    from cli import restore
    return restore.cmd(args, stack_file(args))


def cmd_switchover(args) -> int:
    from cli import switchover
    return switchover.cmd(args, stack_file(args))


def cmd_upgrade(args) -> int:
    from cli import upgrade
    return upgrade.cmd(args, stack_file(args))


def cmd_docs(args) -> int:
    from components import config_docs
    config_docs.write()
    print("rewrote Pulumi.yaml and the config table in README.md from components/config.py")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hapbx", description="high-cc-pbx: HA PBX on two Debian 12 nodes")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="validate a stack file; exit 2 listing every problem")
    c.add_argument("--config", required=True, help="a Pulumi.<stack>.yaml")
    c.set_defaults(func=cmd_check)

    r = sub.add_parser("render", help="write every host's files (secrets masked) and a manifest")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--stack", help="stack name (reads Pulumi.<stack>.yaml)")
    g.add_argument("--config", help="a stack file")
    r.add_argument("--out", required=True, help="output directory: OUT/<host>/<absolute path>")
    r.set_defaults(func=cmd_render)

    t = sub.add_parser("test", help="the whole test suite (unit, daemons, lab tiers)")
    t.add_argument("--tier", action="append", choices=["unit", "daemons", "lab"], help="only these tiers")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest after --")
    t.set_defaults(func=cmd_test)

    d = sub.add_parser("docs", help="regenerate Pulumi.yaml config block and README config table")
    d.set_defaults(func=cmd_docs)

    from cli import restore
    restore.add_parser(sub).set_defaults(func=cmd_restore)   # point-in-time recovery from the repository

    from cli import switchover
    switchover.add_parser(sub).set_defaults(func=cmd_switchover)   # planned hand-over to the standby
    from cli import upgrade
    upgrade.add_parser(sub).set_defaults(func=cmd_upgrade)         # package upgrades, one node at a time

    from cli import bench_cmd
    bench_cmd.add_parser(sub)    # `bench cdr`: loopback; `bench sip`: the running lab, ours against stock Kamailio

    lab = sub.add_parser("lab", help="the local systemd-nspawn lab")
    lab.add_argument("--stack", default="lab", help="stack whose lab settings to use (default: lab)")
    lab.add_argument("--config", help="a stack file instead of Pulumi.<stack>.yaml")
    lsub = lab.add_subparsers(dest="lab_command", required=True)
    up = lsub.add_parser("up", help="build the lab and apply the stack to it")
    up.add_argument("--no-apply", action="store_true", help="only build and boot the nodes")
    up.add_argument("--force", action="store_true", help="run every command again (idempotence check)")
    ap = lsub.add_parser("apply", help="apply the stack to the running lab")
    ap.add_argument("--preview", action="store_true",
                    help="only show what apply would change (like pulumi preview): runs and writes nothing")
    lsub.add_parser("down", help="remove everything the lab made")
    lsub.add_parser("status", help="nodes, addresses, roles")
    from cli import drill
    drill.add_parser(lsub)      # `lab drill`: failover drills -> reports/failover.md
    from cli import alert_drill, cdr_drill
    alert_drill.add_parser(lsub)  # `lab alert-drill`: faults -> notifications -> reports/alerts.md
    cdr_drill.add_parser(lsub)  # `lab cdr-drill`: CDRs to the VIP through faults -> reports/cdr-drill.md
    from cli import soak
    soak.add_parser(lsub)       # `lab soak`: random faults under load, history check -> reports/soak.md
    s = lsub.add_parser("ssh", help="open a shell (or run a command) on a node")
    s.add_argument("node")
    s.add_argument("cmd", nargs=argparse.REMAINDER)
    lab.set_defaults(func=cmd_lab)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "pytest_args", None) and args.pytest_args[:1] == ["--"]:
        args.pytest_args = args.pytest_args[1:]
    return args.func(args)
