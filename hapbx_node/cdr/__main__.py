"""python3 -m hapbx_node.cdr receiver|worker|admin|replay|deadletters (replay: also python3 -m
hapbx_node.cdr.replay; deadletters takes its own arguments: list|replay|drop)"""
import sys

from .settings import SettingsError


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else ""
    try:
        if what == "receiver":
            from .receiver import main as run
        elif what == "worker":
            from .worker import main as run
        elif what == "admin":
            from .admin import main as run
        elif what == "replay":
            from .replay import main as run
        elif what == "deadletters":
            from .deadletters import main as deadletters
            return deadletters(argv[2:])
        else:
            print("usage: python3 -m hapbx_node.cdr receiver|worker|admin|replay|deadletters", file=sys.stderr)
            return 2
        return run()
    except SettingsError as err:
        print(f"hapbx-cdr {what}: bad setting: {err}", file=sys.stderr)
        return 78  # EX_CONFIG: systemd's RestartPreventExitStatus keeps it from looping


if __name__ == "__main__":
    sys.exit(main(sys.argv))
