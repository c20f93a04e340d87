"""How many CPU threads a run uses when nobody says: the cores this process may use that no other process is busy on.

Why: OpenMP threads that share a core with another CPU-bound process wait for each other at every barrier. On the
2-core machine with one competing single-thread process, ``--threads 2`` was 1.33x slower than ``--threads 1``
(``benchmarks/thread_policy.py``; up to 6x under heavier load), while on an idle machine 2 threads are ~1.5x faster
than 1. So the default is measured, not fixed:

1. **usable cores**: the CPU affinity set, capped by a cgroup v2 CPU quota (``cpu.max``, e.g. ``docker --cpus``);
2. **busy elsewhere**: when no quota caps the cores, the non-idle time of those cores over a short window
   (``/proc/stat``, ``window_s``, 0.2 s) while this process sleeps, in cores;
3. **threads** = usable - busy, rounded, at least 1.

Measured once per run (``process.py`` at start-up, :func:`default_threads`); ``--threads`` / ``HANSEG_THREADS``
override it. Nothing here changes global state.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def affinity_cores() -> list[int]:
    """The CPU numbers this process may run on (all CPUs where the OS cannot say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def cgroup_quota_cores(cpu_max: Path = CGROUP_CPU_MAX) -> float | None:
    """The cgroup v2 CPU quota in cores (``quota / period`` of ``cpu.max``); None without a quota or a cgroup v2."""
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = float(fields[0]), float(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may use: the affinity set, capped by a CPU quota (rounded up)."""
    return _usable(cgroup_quota_cores(cpu_max))


def _usable(quota: float | None) -> int:
    cores = len(affinity_cores())
    return max(1, min(cores, math.ceil(quota))) if quota is not None else max(1, cores)


CpuTimes = dict[int, tuple[int, int]]
"""Per CPU number: (busy, total) jiffies since boot."""


def cpu_times(cpus: set[int], proc_stat: Path = PROC_STAT) -> CpuTimes:
    """(busy, total) jiffies of each CPU in ``cpus`` from ``/proc/stat`` (busy = total - idle - iowait)."""
    out: CpuTimes = {}
    for line in proc_stat.read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        cpu = int(name[3:])
        if cpu in cpus:
            ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
            total = sum(ticks)
            out[cpu] = (total - ticks[3] - ticks[4], total)
    return out


def busy_between(before: CpuTimes, after: CpuTimes) -> float:
    """Cores' worth of busy time between two :func:`cpu_times` snapshots (sum over CPUs of busy / total)."""
    busy = 0.0
    for cpu, (b1, t1) in after.items():
        b0, t0 = before.get(cpu, (b1, t1))
        if t1 > t0:
            busy += (b1 - b0) / (t1 - t0)
    return busy


def busy_cores(cpus: list[int], window_s: float = 0.2, proc_stat: Path = PROC_STAT) -> float | None:
    """Cores' worth of non-idle time on ``cpus`` over ``window_s`` seconds (this process sleeps meanwhile, so it is
    other processes' load); None where ``/proc/stat`` cannot be read."""
    wanted = set(cpus)
    try:
        before = cpu_times(wanted, proc_stat)
        time.sleep(window_s)
        return busy_between(before, cpu_times(wanted, proc_stat))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class ThreadChoice:
    """The default thread count and what it was derived from (for the log)."""

    threads: int
    usable: int
    busy: float | None
    """Cores busy with other processes at start-up (None: not measured, e.g. under a CPU quota)."""

    def describe(self) -> str:
        busy = "not measured" if self.busy is None else f"{self.busy:.2f} cores busy with other processes"
        return f"{self.threads} of {self.usable} usable core(s); {busy}"


def default_threads(window_s: float = 0.2, proc_stat: Path = PROC_STAT, cpu_max: Path = CGROUP_CPU_MAX) -> ThreadChoice:
    """The thread count of a run that was not given one: usable cores minus those busy elsewhere (>= 1)."""
    quota = cgroup_quota_cores(cpu_max)
    usable = _usable(quota)
    if quota is not None:  # the quota is this container's own share: no one else's load
        return ThreadChoice(usable, usable, None)
    busy = busy_cores(affinity_cores(), window_s, proc_stat)
    if busy is None:
        return ThreadChoice(usable, usable, None)
    return ThreadChoice(max(1, min(usable, round(usable - busy))), usable, busy)
