"""The heap policy of :mod:`model.cpu_heap` on the sample run: glibc's default against freed memory kept in the heap.

Arms, each ``process.py`` on the sample case in a fresh subprocess, alternating, ``--repeats`` times, with the same
``--threads``:

- ``glibc default``: ``MALLOC_MMAP_MAX_=65536`` in the environment (glibc's own default value; any ``MALLOC_*``
  variable makes :func:`model.cpu_heap.freed_memory_kept` leave the allocator alone);
- ``heap kept``: ``process.py`` as shipped (freed memory kept in the heap during the tile loop).

Per run: wall seconds, CPU user and system seconds of the process tree (``RUSAGE_CHILDREN``), peak RSS of the tree
(:mod:`benchmarks.monitor`). The two arms' label maps must be voxel for voxel equal (the allocator changes where
memory lives, not what is computed); the benchmark fails otherwise.

    python -m benchmarks.cpu_heap [--repeats 2] [--threads 2] [--input sample/input]

Last line: ``RATIOS heap kept / glibc default: wall X.XXx, system time Y.YYx, peak RSS Z.ZZx`` (medians).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from benchmarks.monitor import run_monitored

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.cpu_heap")
ARMS: dict[str, dict[str, str]] = {"glibc default": {"MALLOC_MMAP_MAX_": "65536"}, "heap kept": {}}


@dataclass(frozen=True)
class Run:
    """One ``process.py`` run: seconds (wall, CPU user, CPU system) and the tree's peak RSS in GB."""

    wall_s: float
    user_s: float
    system_s: float
    peak_gb: float


def run_once(input_root: Path, out: Path, threads: int, env_extra: dict[str, str]) -> Run:
    """``process.py`` on ``input_root`` into ``out`` with ``threads`` threads and ``env_extra`` added."""
    cmd = [sys.executable, str(REPO / "process.py"), "--input", str(input_root), "--output", str(out),
           "--no-progress", "--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "HANSEG_THREADS"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = run_monitored(cmd, dict(env, PYTHONPATH=str(REPO), **env_extra))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if run.returncode != 0:
        raise RuntimeError(f"process.py failed ({run.returncode}): {run.last_stderr_line}")
    return Run(run.seconds, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime, run.peak_tree_gb)


def label_maps(out: Path) -> dict[str, np.ndarray]:
    """Every ``.mha`` label map under ``out`` by its path relative to ``out``, as numpy (z, y, x)."""
    return {str(p.relative_to(out)): sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted(out.rglob("*.mha"))}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=REPO / "sample" / "input")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    runs: dict[str, list[Run]] = {name: [] for name in ARMS}
    with tempfile.TemporaryDirectory(prefix="cpu_heap_") as tmp:
        for rep in range(args.repeats):
            order = list(ARMS) if rep % 2 == 0 else list(reversed(ARMS))
            for name in order:
                out = Path(tmp) / name.replace(" ", "_")
                runs[name].append(run_once(args.input, out, args.threads, ARMS[name]))
                r = runs[name][-1]
                log.info("repeat %d %s: wall %.1f s, user %.1f s, system %.1f s, peak RSS %.2f GB", rep, name,
                         r.wall_s, r.user_s, r.system_s, r.peak_gb)
        maps = {name: label_maps(Path(tmp) / name.replace(" ", "_")) for name in ARMS}
    first, second = maps.values()
    if not first or first.keys() != second.keys() or any(not np.array_equal(first[k], second[k]) for k in first):
        print("FAIL: the arms' label maps differ (or none was written)")
        return 1
    med = {name: {f: statistics.median(getattr(r, f) for r in rs) for f in ("wall_s", "user_s", "system_s", "peak_gb")}
           for name, rs in runs.items()}
    print(f"sample case {args.input}, --threads {args.threads}, {args.repeats} repeats, alternating; label maps "
          f"equal voxel for voxel ({len(first)} file(s))")
    print("| arm | wall s | CPU user s | CPU system s | peak RSS GB | runs (wall s) |")
    print("|---|---|---|---|---|---|")
    for name, m in med.items():
        walls = ", ".join(f"{r.wall_s:.1f}" for r in runs[name])
        print(f"| {name} | {m['wall_s']:.1f} | {m['user_s']:.1f} | {m['system_s']:.1f} | {m['peak_gb']:.2f} "
              f"| {walls} |")
    a, b = med["glibc default"], med["heap kept"]
    print(f"RATIOS heap kept / glibc default: wall {b['wall_s'] / a['wall_s']:.2f}x, system time "
          f"{b['system_s'] / max(a['system_s'], 1e-9):.2f}x, peak RSS {b['peak_gb'] / a['peak_gb']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
