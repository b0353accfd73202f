"""Measure the live harness: N trivial remote commands, first apply, no-op apply, force.

    python -m tests.harness.bench [N] [PARALLEL]      (from the repository root)

Uses the same throwaway sshd as the tests (needs /usr/sbin/sshd and root).
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import harness

from . import conftest  # the sshd fixture, used outside pytest

PROGRAM = '''
import pulumi
from pulumi_command import remote
cfg = pulumi.Config()
conn = remote.ConnectionArgs(host="127.0.0.1", port=cfg.require_int("port"), user="root",
                             private_key=cfg.require_secret("key"), host_key=cfg.require("hostKey"))
previous = None
for i in range(cfg.require_int("n")):
    # chains of 10: ordering work for the SDK, parallel work for the harness
    deps = [previous] if previous is not None and i % 10 else []
    previous = remote.Command(f"c{i}", connection=conn, create=f"echo {i}",
                              opts=pulumi.ResourceOptions(depends_on=deps))
'''


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    parallel = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    fixture = conftest.sshd.__wrapped__  # the generator under the pytest fixture
    with tempfile.TemporaryDirectory() as tmp:
        gen = fixture(_Factory(Path(tmp)))
        server = next(gen)
        prog = Path(tmp) / "prog"
        prog.mkdir()
        (prog / "__main__.py").write_text(PROGRAM)
        config = {"bench:port": server.port, "bench:key": server.client_key,
                  "bench:hostKey": server.host_key, "bench:n": n}
        state = str(Path(tmp) / "state" / "s.json")
        for label, force in (("first apply", False), ("no-op apply", False), ("force apply", True)):
            started = time.monotonic()
            result = harness.apply(str(prog), "bench", "b", config, ["bench:key"], state,
                                   force=force, parallel=parallel, log=lambda _: None)
            print(f"{label}: {len(result.executed)} commands, {time.monotonic() - started:.2f} s")
        started = time.monotonic()
        result = harness.destroy(state, log=lambda _: None)
        print(f"destroy: {len(result.deleted)} deleted, {time.monotonic() - started:.2f} s")
        next(gen, None)


class _Factory:
    def __init__(self, root: Path):
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=name, dir=self.root))


if __name__ == "__main__":
    main()
