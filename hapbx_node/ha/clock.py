"""Clocks. Decisions use the monotonic boot clock: a wall-clock step (NTP at boot, an operator's
`date -s`) must neither delay a fence nor fire one early. The wall clock is for reports only.

CLOCK_BOOTTIME is what /proc/uptime shows, so the bash entry points (notify, check-local,
vip-release, promote) read the same clock (lib.sh mono_ms)."""
from __future__ import annotations

import time


def mono_ms() -> int:
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1000)


def wall_ms() -> int:
    return int(time.time() * 1000)
