"""`hapbx lab up|apply|down|status|ssh|drill|alert-drill|cdr-drill|soak`: dispatch to lab/ (deploy.py, machinery.py, drill_run.py)
and bench/cdr_drill.py."""
from __future__ import annotations

import os
import sys

from components.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args) -> int:
    import harness
    from lab import context, deploy, machinery
    path = args.config or os.path.join(ROOT, f"Pulumi.{args.stack}.yaml")
    try:
        raw, cluster = context.load(path)
        spec = context.spec_for(cluster)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    try:
        if args.lab_command == "down":
            machinery.down(spec)
            return 0
        if args.lab_command == "status":
            print(deploy.describe(cluster, spec, args.stack))
            return 0 if machinery.status(spec).up else 1
        if args.lab_command == "drill":
            from cli import drill
            return drill.run(args, raw, cluster, spec)
        if args.lab_command == "alert-drill":
            from cli import alert_drill
            return alert_drill.run(args, raw, cluster, spec)
        if args.lab_command == "cdr-drill":
            from cli import cdr_drill
            return cdr_drill.run(args, raw, cluster, spec)
        if args.lab_command == "soak":
            from cli import soak
            return soak.run(args, raw, cluster, spec)
        if args.lab_command == "ssh":
            words = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            argv = machinery.ssh_argv(spec, args.node, " ".join(words) if words else None)  # as ssh joins them
            os.execvp(argv[0], ["ssh", "-t", *argv[1:]] if not args.cmd else argv)
        if args.lab_command == "apply" and args.preview:
            return deploy.preview_text(raw, spec, stack=args.stack)
        return deploy.converge(raw, cluster, spec, stack=args.stack, build=args.lab_command == "up",
                               no_apply=getattr(args, "no_apply", False), force=getattr(args, "force", False))
    except machinery.LabError as err:
        print(f"hapbx lab: {err}", file=sys.stderr)
        return 1
    except harness.ApplyError as err:
        if getattr(args, "preview", False):
            print(f"hapbx lab: preview failed: {err}", file=sys.stderr)
            return 1
        print(f"hapbx lab: apply failed: {err}\nFix the cause and run `./hapbx lab up` again: "
              "what succeeded is kept and will not run again.", file=sys.stderr)
        return 1
