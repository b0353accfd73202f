"""python3 -m hapbx_node.metrics: run hapbx-exporter (settings from the environment)."""
import sys

from .server import main

if __name__ == "__main__":
    sys.exit(main())
