"""Thread policy on a busy machine: ``process.py`` on the sample case while one CPU-bound process competes.

Settings, each run in a fresh subprocess, alternating, ``--repeats`` times, while a competing single-thread torch
matmul loop runs on the same cores (started once, killed at the end):

- ``default``: ``process.py`` as shipped (whatever its default thread policy is);
- ``threads=1`` and ``threads=all``: ``--threads 1`` / ``--threads <available cores>``;
- ``passive``: ``--threads <available cores>`` with ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead
  of spinning);

and ``idle default`` without the competitor, for the "no more than 2x slower than idle" bar.

    python -m benchmarks.thread_policy [--repeats 3] [--input sample/input] [--only threads=1]

Last line: ``RATIOS default/best busy X.XXx (best: S), default busy/idle Y.YYx``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks.monitor import run_monitored

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.thread_policy")
COMPETITOR = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\n"
              "while True:\n    a = torch.tanh(a @ a)\n")


def settings(cores: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    return {
        "default": ([], {}),
        "threads=1": (["--threads", "1"], {}),
        "threads=all": (["--threads", str(cores)], {}),
        "passive": (["--threads", str(cores)], {"OMP_WAIT_POLICY": "PASSIVE"}),
    }


def run_once(input_root: Path, out: Path, extra: Sequence[str], env_extra: dict[str, str]) -> float:
    cmd = [sys.executable, str(REPO / "process.py"), "--input", str(input_root), "--output", str(out),
           "--no-progress", *extra]
    env = {k: v for k, v in os.environ.items() if k not in ("HANSEG_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    run = run_monitored(cmd, dict(env, PYTHONPATH=str(REPO), **env_extra))
    if run.returncode != 0:
        raise RuntimeError(f"process.py failed ({run.returncode}): {run.last_stderr_line}")
    return run.seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=REPO / "sample" / "input")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", metavar="SETTING",
                        help="busy settings to run besides 'default' (e.g. threads=1; all by default): on a machine "
                             "where all-core runs beside a busy process take many minutes each")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cores = len(os.sched_getaffinity(0))
    chosen = settings(cores)
    if args.only:
        unknown = sorted(set(args.only) - set(chosen))
        if unknown:
            parser.error(f"unknown setting(s) {', '.join(unknown)}; choose from {', '.join(chosen)}")
        chosen = {name: value for name, value in chosen.items() if name == "default" or name in args.only}
    times: dict[str, list[float]] = {name: [] for name in [*chosen, "idle default"]}
    with tempfile.TemporaryDirectory(prefix="threads_") as tmp:
        for rep in range(args.repeats):
            times["idle default"].append(run_once(args.input, Path(tmp) / "idle", [], {}))
            competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=dict(os.environ, OMP_NUM_THREADS="1"))
            try:
                for name, (extra, env) in chosen.items():
                    times[name].append(run_once(args.input, Path(tmp) / name, extra, env))
                    log.info("repeat %d %s: %.1f s", rep, name, times[name][-1])
            finally:
                competitor.kill()
                competitor.wait()
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"sample case {args.input}, {cores} cores, {args.repeats} repeats, one competing single-thread process")
    print("| setting | median s | runs |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {medians[name]:.1f} | {', '.join(f'{x:.1f}' for x in t)} |")
    busy = {k: v for k, v in medians.items() if k != "idle default"}
    best = min(busy, key=busy.get)
    print(f"RATIOS default/best busy {busy['default'] / busy[best]:.2f}x (best: {best}), default busy/idle "
          f"{busy['default'] / medians['idle default']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
