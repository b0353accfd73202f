"""``python3 -m hapbx_node.backup run full|diff`` (the scheduled backup) or ``... stanza`` (deploy)."""
from __future__ import annotations

import sys

USAGE = "usage: python3 -m hapbx_node.backup run full|diff | stanza"


def main(argv: list[str]) -> int:
    if argv[:1] == ["run"] and len(argv) == 2:
        from .run import main as run
        return run(argv[1])
    if argv == ["stanza"]:
        from .stanza import main as stanza
        return stanza()
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
