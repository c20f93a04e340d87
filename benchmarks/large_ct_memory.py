"""Peak memory of a full run on a large CT (1024 x 1024 x 300), optionally under a hard memory limit.

Makes a HaN-Seg-sized input from a real OpenKBP CT (linearly resampled to 0.56 x 0.56 x 1.0 mm, 1024 x 1024 x 300
voxels, air outside the original field of view) and a T1-like MR of it under a known rigid motion, then runs
``process.py`` on it in a subprocess: registration, preprocessing, the ensemble, export and writing, i.e. a full
run. Peak RSS is sampled from /proc over the whole process tree every 50 ms. With ``--limit-gb`` the run is put
into a cgroup (v1 ``memory`` or v2) with that hard limit, as the platform and ``docker run --memory`` do: the
kernel kills it if it goes over (exit -9), which the report states.

    python -m benchmarks.large_ct_memory [--model weights] [--limit-gb 8] [--size 1024 1024 300]
    python -m benchmarks.large_ct_memory --hanseg-plan --limit-gb 16 --size 1024 1024 200 -- --no-tta
    python -m benchmarks.large_ct_memory --hanseg-plan --variant --limit-gb 16 --size 1024 1024 200

``--hanseg-plan``: instead of ``--model``, a 31-class random-weight model folder with a 3d_fullres-sized plan
(0.56 x 0.56 x 2 mm, patch 40 x 224 x 192, tiny features; ``benchmarks.gpu_check.HANSEG_PLAN``), the CT made at
that spacing: the fp16 ensemble sum alone is ~13 GB, the host path must fit under 16 GB.

Last line: ``RESULT peak RSS X GB (limit L GB): exit N``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import SimpleITK as sitk

from benchmarks.monitor import Monitored, run_monitored
from benchmarks.nnunet_comparison import OPENKBP, REPO, hanseg_sized_ct

log = logging.getLogger("benchmarks.large_ct_memory")
LARGE_SIZE_XYZ = (1024, 1024, 300)
LARGE_SPACING_XYZ = (0.56, 0.56, 1.0)
VARIANT_PLAN = {"spacing_zyx": (2.0, 1.0, 1.0), "patch_size": (64, 160, 160), "features": (4, 8, 16, 32)}
"""The platform-fit recipe variant's geometry (``benchmarks.hanseg_plans --target-spacing 1 1 2``: spacing and patch
from nnU-Net's planner), with tiny features: the memory is in the logits, not in the network."""
CGROUP_V1 = Path("/sys/fs/cgroup/memory")
CGROUP_V2 = Path("/sys/fs/cgroup/unified")


def make_input(root: Path, case: str = "pt_201", size_xyz: Sequence[int] = LARGE_SIZE_XYZ,
               spacing_xyz: Sequence[float] = LARGE_SPACING_XYZ) -> Path:
    """ROOT/images/ct/large.mha (int16) and ROOT/images/t1-mri/large_t1.mha (T1-like, 1 x 1 x 3 mm, moved)."""
    from preprocessing.synthetic_t1 import make_t1_like

    ct = hanseg_sized_ct(sitk.ReadImage(str(OPENKBP / case / "ct.nii.gz")), size_xyz, spacing_xyz)
    mr = make_t1_like(ct, rotation_deg=(2.0, -3.0, 2.0), translation_mm=(10.0, -15.0, 6.0), spacing_mm=(1.0, 1.0, 3.0),
                      seed=5).image
    for sub, name, image in (("ct", "large.mha", ct), ("t1-mri", "large_t1.mha", mr)):
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / "images" / sub / name), useCompression=True)
    return root


@contextmanager
def memory_cgroup(limit_gb: float | None):
    """A fresh cgroup with a hard memory limit; yields a function that moves a pid into it (or None)."""
    if limit_gb is None:
        yield None
        return
    limit = str(int(limit_gb * 1024**3))
    name = f"hanseg_bench_{os.getpid()}"
    if (CGROUP_V2 / "cgroup.procs").exists() and os.access(CGROUP_V2, os.W_OK) and \
            "memory" in (CGROUP_V2 / "cgroup.controllers").read_text():
        group, limit_file = CGROUP_V2 / name, "memory.max"
    elif (CGROUP_V1 / "memory.limit_in_bytes").exists() and os.access(CGROUP_V1, os.W_OK):
        group, limit_file = CGROUP_V1 / name, "memory.limit_in_bytes"
    else:
        raise PermissionError("no writable memory cgroup (needs root; use docker run --memory instead)")
    group.mkdir()
    try:
        (group / limit_file).write_text(limit)
        swap = group / "memory.memsw.limit_in_bytes"
        if swap.exists():
            try:
                swap.write_text(limit)
            except OSError:
                pass  # no swap accounting: the machine has no swap here either
        yield lambda pid: (group / "cgroup.procs").write_text(str(pid))
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def run_process_monitored(input_root: Path, out: Path, model: Path, limit_gb: float | None,
                          extra: Sequence[str] = ()) -> Monitored:
    """Run ``process.py`` (INFO log lines, timestamped) under the memory limit; the monitored run."""
    cmd = [sys.executable, str(REPO / "process.py"), "--input", str(input_root), "--output", str(out), "--model",
           str(model), "--no-progress", *extra]
    with memory_cgroup(limit_gb) as move:
        # moved into the cgroup right after the start, before it has imported anything: a few MB at most
        return run_monitored(cmd, dict(os.environ, PYTHONPATH=str(REPO)), on_start=move)


def run_process(input_root: Path, out: Path, model: Path, limit_gb: float | None,
                extra: Sequence[str] = ()) -> tuple[int, float, float, str]:
    """Run ``process.py``; returns (exit code, wall s, peak tree RSS GB, last stderr line)."""
    run = run_process_monitored(input_root, out, model, limit_gb, extra)
    return run.returncode, run.seconds, run.peak_tree_gb, run.last_stderr_line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=REPO / "weights", help="nnU-Net v2 model folder")
    parser.add_argument("--limit-gb", type=float, help="hard memory limit (cgroup) for the run")
    parser.add_argument("--size", type=int, nargs=3, default=list(LARGE_SIZE_XYZ), help="CT size x y z (voxels)")
    parser.add_argument("--workdir", type=Path, help="keep inputs/outputs here (default: a temporary folder)")
    parser.add_argument("--hanseg-plan", action="store_true",
                        help="31-class random model with a 3d_fullres-sized plan instead of --model")
    parser.add_argument("--variant", action="store_true",
                        help="with --hanseg-plan: the documented platform-fit variant instead of nnU-Net's default "
                             "plan (1 x 1 x 2 mm, patch 64 x 160 x 160, 5 folds, no mirroring; training/README.md)")
    parser.add_argument("extra", nargs="*", help="extra process.py arguments (after --)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="large_ct_") as tmp:
        workdir = args.workdir or Path(tmp)
        spacing = LARGE_SPACING_XYZ
        if args.hanseg_plan:
            from benchmarks.gpu_check import HANSEG_PLAN
            from devkit.make_test_model import make_test_model

            if args.variant:
                args.model = make_test_model(workdir / "model_31", folds=5, mirror_axes=None, **VARIANT_PLAN)
            else:
                args.model = make_test_model(workdir / "model_31", folds=2, mirror_axes=(2,), **HANSEG_PLAN)
            spacing = tuple(reversed(HANSEG_PLAN["spacing_zyx"]))  # the CT at HaN-Seg's native 0.56 x 0.56 x 2 mm
        root = make_input(workdir / "input", size_xyz=args.size, spacing_xyz=spacing)
        run = run_process_monitored(root, workdir / "output", args.model, args.limit_gb, args.extra)
        code, peak = run.returncode, run.peak_tree_gb
        written = list((workdir / "output").rglob("*.mha"))
    limit = f"{args.limit_gb:g} GB" if args.limit_gb else "none"
    print(f"model: {args.model} | CT {' x '.join(map(str, args.size))} at {spacing} mm + T1 MR | "
          f"memory limit: {limit}")
    print(f"wall {run.seconds:.1f} s | outputs written: {len(written)} | last log line: {run.last_stderr_line[:160]}")
    print(f"peak at {run.peak_at_s:.0f} s; last log line before it: {run.log_line_before(run.peak_at_s)[:160]}")
    killed = " (killed: over the memory limit)" if code == -9 else ""
    print(f"RESULT peak RSS {peak:.2f} GB (limit {limit}): exit {code}{killed}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
