"""Run a command in a subprocess and record its wall time and the peak resident memory of its process tree.

Memory is sampled from Linux ``/proc`` every 50 ms over the process and all its descendants (worker processes
included). ``getrusage`` is not used: Linux keeps ``ru_maxrss`` across ``exec``, so a child would report its
parent's peak.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

log = logging.getLogger(__name__)
SAMPLE_SECONDS = 0.05


@dataclass(frozen=True)
class Monitored:
    """How one monitored run went. Memory in GB (1024**3 bytes)."""

    returncode: int
    seconds: float
    peak_tree_gb: float
    largest_process_gb: float
    stderr: str
    killed: bool
    started_at: float = 0.0
    """Wall clock (``time.time()``, s) at the start."""
    peak_at_s: float = 0.0
    """Seconds after the start at which the tree's peak RSS was sampled."""

    @property
    def last_stderr_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def log_line_before(self, seconds: float) -> str:
        """The last stderr line logged (``logging``'s ``%(asctime)s`` prefix, local time) at most ``seconds`` after
        the start: what the command was doing then, e.g. at the memory peak. Empty if no line is timestamped."""
        last = ""
        for line in self.stderr.splitlines():
            try:
                stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if stamp > self.started_at + seconds:
                break
            last = line
        return last


def tree_process_rss(root: int) -> list[int]:
    """Resident memory (bytes) of ``root`` and of each of its descendants (Linux /proc)."""
    sizes, stack, seen = [], [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/statm") as f:
                sizes.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"))
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return sizes


def run_monitored(cmd: Sequence[str], env: Mapping[str, str], cwd: Path | None = None,
                  kill_above_gb: float | None = None, on_start: Callable[[int], None] | None = None) -> Monitored:
    """Run ``cmd`` in a new session (stdout discarded, stderr kept) until it exits.

    Args:
        kill_above_gb: kill the whole process group once the tree's RSS exceeds this (protects a shared machine).
        on_start: called with the pid right after the start, e.g. to move it into a memory cgroup.
    """
    with tempfile.TemporaryFile("w+") as err:
        started_at, start = time.time(), time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        if on_start is not None:
            on_start(proc.pid)
        peak = largest = 0
        peak_at = 0.0
        killed = False
        while proc.poll() is None:
            sizes = tree_process_rss(proc.pid)
            total = sum(sizes)
            if total > peak:
                peak, peak_at = total, time.perf_counter() - start
            largest = max([largest, *sizes])
            if kill_above_gb is not None and total > kill_above_gb * 1024**3 and not killed:
                log.warning("%.1f GB > cap %.1f GB: killing %s", total / 1024**3, kill_above_gb, cmd[0])
                os.killpg(proc.pid, 9)
                killed = True
            time.sleep(SAMPLE_SECONDS)
        seconds = time.perf_counter() - start
        err.seek(0)
        stderr = err.read()
    return Monitored(proc.returncode, seconds, peak / 1024**3, largest / 1024**3, stderr, killed, started_at, peak_at)
