"""drivers.Keepalived.alive(): whether the holder may beat. A pid file naming a live process (a
SIGSTOPped one too: it still holds the VIP) is alive; one naming a process that is gone is not;
no pid file configured or none readable concludes nothing (the beat is not held back)."""
from __future__ import annotations

import signal
import subprocess

from hapbx_node.ha.drivers import Keepalived


def keepalived(tmp_path, pidfile: str) -> Keepalived:
    return Keepalived({"HA_RUN_DIR": str(tmp_path), "KEEPALIVED_PIDFILE": pidfile})


def test_alive_dead_frozen_and_unknown(tmp_path):
    pidfile = tmp_path / "keepalived.pid"
    proc = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{proc.pid}\n")
        assert keepalived(tmp_path, str(pidfile)).alive() is True
        proc.send_signal(signal.SIGSTOP)                      # frozen: still holds its VIP
        assert keepalived(tmp_path, str(pidfile)).alive() is True
    finally:
        proc.kill()
        proc.wait()
    assert keepalived(tmp_path, str(pidfile)).alive() is False   # killed: gone
    assert keepalived(tmp_path, str(tmp_path / "none.pid")).alive() is None
    pidfile.write_text("not a pid\n")
    assert keepalived(tmp_path, str(pidfile)).alive() is None
    assert keepalived(tmp_path, "").alive() is None
