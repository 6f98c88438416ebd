"""CPU time of process groups from /proc (Linux), to say where the two cores went."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["CpuMeter", "group_cpu_seconds", "system_busy_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after the last ')'
    return text[text.rfind(")") + 2 :].split()


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    ticks = [int(v) for v in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already included in user/nice
    return (sum(ticks[:8]) - idle) / _TICKS


def group_cpu_seconds(groups: Mapping[str, int]) -> dict[str, float]:
    """User+system CPU seconds of every live process in each named process group.

    ``groups`` maps a label to a process-group id (the stack's services and the broker run in
    their own groups). Time of processes that exited during the interval is not counted.
    """
    wanted = {pgid: name for name, pgid in groups.items()}
    totals = dict.fromkeys(groups, 0.0)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return totals
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None or len(fields) < 13:
            continue
        # after the name: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
        name = wanted.get(int(fields[2]))
        if name is not None:
            totals[name] += (int(fields[11]) + int(fields[12])) / _TICKS
    return totals


class CpuMeter:
    """CPU use of named process groups and of this process over an interval.

    Figures are percent of one core: 200 means both cores of a two-core machine were busy.
    ``loadgen`` is this process (the load generator), ``other`` what the machine spent outside
    every measured group, ``machine_total`` all of it.
    """

    def __init__(self, groups: Mapping[str, int] | None = None) -> None:
        self.groups: dict[str, int] = dict(groups or {})

    def add(self, name: str, pgid: int | None) -> None:
        """Also measure process group ``pgid`` as ``name`` (ignored when None)."""
        if pgid is not None:
            self.groups[name] = pgid

    def remove(self, name: str) -> None:
        """Stop measuring ``name``."""
        self.groups.pop(name, None)

    def start(self) -> Callable[[float | None], dict[str, float]]:
        """Start an interval; the returned function ends it with percent of one core each."""
        before = group_cpu_seconds(self.groups)
        busy = system_busy_seconds()
        own = os.times()
        started = time.perf_counter()

        def stop(seconds: float | None = None) -> dict[str, float]:
            elapsed = seconds or (time.perf_counter() - started)
            after = group_cpu_seconds(self.groups)
            now = os.times()
            out = {
                name: round(100 * (after[name] - before.get(name, 0.0)) / elapsed, 1)
                for name in after
            }
            load = (now.user - own.user) + (now.system - own.system)
            out["loadgen"] = round(100 * load / elapsed, 1)
            total = 100 * (system_busy_seconds() - busy) / elapsed
            # whatever else ran meanwhile (other users of the machine, the kernel's own work)
            out["other"] = round(max(0.0, total - sum(out.values())), 1)
            out["machine_total"] = round(total, 1)
            return out

        return stop
