#!/usr/bin/env bash
# Run the algorithm image on one case the way grand-challenge.org runs it, then check the output on the host.
#
#   ./test.sh [--image hanseg-oar:latest] [--input sample/input] [--model DIR] [--output DIR] [--memory 16g]
#             [--read-only] [--expect-oars-of DIR] [--process-arg ARG ...] [--expect-log TEXT]
#
#   --input DIR    a case folder laid out like the platform's /input (images/ct/*, images/t1-mri/*, optional
#                  inputs.json); mounted read-only. Default: the bundled sample case, sample/input.
#   --model DIR    a model folder (plans.json, dataset.json, fold_N/) mounted read-only at /opt/ml/model, as the
#                  platform does with a model tarball. Default: none (the image's baked-in weights/).
#   --output DIR   host folder for /output (emptied first, chmod 777). Default: work_dirs/container-test/output.
#   --memory SIZE  memory limit (and memory-swap) of the run. Default 16g.
#   --read-only    also make the container's root filesystem read-only (stricter than the platform: proves that
#                  nothing is written outside /output, e.g. to /tmp or $HOME).
#   --expect-oars-of DIR
#                  also require every OAR that the model folder DIR names (dataset.json labels, merged L/R labels
#                  as both sides) in the output, and each left/right pair on the patient's own side (LPS: the
#                  left organ's centroid at larger x). For a run of a TRAINED model (e.g. the baked-in weights/).
#   --process-arg ARG
#                  pass ARG to process.py inside the container (repeatable; e.g. --process-arg --fast).
#   --expect-log TEXT
#                  also require TEXT in the container's log (e.g. "from the compiled cache": --fast used the
#                  OpenVINO models compiled at build time, not a conversion at run time).
#
# Checks: exit code 0, exactly one file in /output/images/head_neck_oar/, .mha, uint8, the CT's exact size,
# spacing, origin and direction, labels within 0..30. Exits non-zero with a message on any failure.
# Environment: PYTHON (host Python with SimpleITK and numpy for the checks, default: .venv/bin/python or python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

die() { echo "test.sh: FAIL: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

image="hanseg-oar:latest"
input="sample/input"
model=""
output="work_dirs/container-test/output"
memory="16g"
extra_run_args=()
process_args=()
expect_oars_of=""
expect_log=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) image="$2"; shift 2 ;;
        --input) input="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --output) output="$2"; shift 2 ;;
        --memory) memory="$2"; shift 2 ;;
        --read-only) extra_run_args+=(--read-only); shift ;;
        --expect-oars-of) expect_oars_of="$(cd "$2" && pwd)"; shift 2 ;;
        --process-arg) process_args+=("$2"); shift 2 ;;
        --expect-log) expect_log="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done

if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    python=.venv/bin/python
else
    python=python3
fi
"$python" -c 'import numpy, SimpleITK' 2>/dev/null \
    || die "the host Python '$python' cannot import SimpleITK and numpy (needed for the checks); set PYTHON=..."
docker info >/dev/null 2>&1 || die "no Docker engine reachable (start dockerd, see ../shared/docs/CONTAINER.md)"
docker image inspect "$image" >/dev/null 2>&1 || die "image $image does not exist (build it with ./build.sh)"

[[ -d "$input/images/ct" ]] || die "no CT folder $input/images/ct (give a case with --input DIR)"
[[ -d "$input/images/t1-mri" ]] || die "no MR folder $input/images/t1-mri (give a case with --input DIR)"
input="$(cd "$input" && pwd)"
mounts=(-v "$input:/input:ro")
if [[ -n "$model" ]]; then
    [[ -f "$model/plans.json" ]] || die "--model $model holds no plans.json"
    model="$(cd "$model" && pwd)"
    mounts+=(-v "$model:/opt/ml/model:ro")
fi

user=$(docker image inspect -f '{{.Config.User}}' "$image")
case "$user" in
    ""|root|0|0:*|root:*) die "image $image runs as root (Config.User='$user'); the platform expects a non-root user" ;;
esac

mkdir -p "$output"
output="$(cd "$output" && pwd)"
[[ "$output" != / ]] || die "refusing to use / as the output folder"
find "$output" -mindepth 1 -delete
chmod 777 "$output"

name="hanseg-test-$$-$RANDOM"
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
echo "test.sh: running $image (user $user) on $input${model:+ with model $model}"
start=$SECONDS
set +e
docker run --name "$name" \
    --network none \
    --cap-drop ALL \
    --security-opt no-new-privileges \
    --memory "$memory" --memory-swap "$memory" \
    --shm-size 128m \
    --pids-limit 256 \
    "${extra_run_args[@]}" \
    "${mounts[@]}" \
    -v "$output:/output" \
    "$image" "${process_args[@]}"
status=$?
set -e
elapsed=$((SECONDS - start))
oom=$(docker inspect -f '{{.State.OOMKilled}}' "$name" 2>/dev/null || echo unknown)
log_found=1
if [[ -n "$expect_log" ]]; then
    # grep reads the whole log (no -q): with -q it may exit at the first match while `docker logs` still writes,
    # which then dies of SIGPIPE and, under pipefail, fails the pipeline although the text was found
    docker logs "$name" 2>&1 | grep -F -- "$expect_log" >/dev/null || log_found=0
fi
docker rm -f "$name" >/dev/null 2>&1 || true
[[ "$oom" != true ]] || die "the container ran out of memory (limit $memory) after ${elapsed} s (exit $status)"
[[ $status -eq 0 ]] || die "the container exited with status $status after ${elapsed} s (its stderr is above)"
[[ $log_found -eq 1 ]] || die "the container's log does not contain '$expect_log'"
echo "test.sh: container finished in ${elapsed} s"

"$python" - "$input" "$output" "$expect_oars_of" "$root" <<'PY'
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

input_dir, output_dir = Path(sys.argv[1]), Path(sys.argv[2])
IMAGE_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nii.gz", ".nii", ".tif", ".tiff")


def fail(message: str) -> None:
    print(f"test.sh: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


cts = sorted(p for p in (input_dir / "images" / "ct").iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES))
if len(cts) != 1:
    fail(f"expected one CT image in {input_dir / 'images' / 'ct'}, found {[p.name for p in cts]}")
seg_dir = output_dir / "images" / "head_neck_oar"
if not seg_dir.is_dir():
    fail(f"the container wrote no folder /output/images/head_neck_oar (output: {sorted(map(str, output_dir.rglob('*')))})")
files = sorted(p for p in seg_dir.iterdir())
if len(files) != 1:
    fail(f"expected exactly one file in /output/images/head_neck_oar, found {[p.name for p in files]}")
seg_path = files[0]
if seg_path.suffix.lower() != ".mha":
    fail(f"the output {seg_path.name} is not an .mha file")

ct_reader = sitk.ImageFileReader()
ct_reader.SetFileName(str(cts[0]))
ct_reader.ReadImageInformation()
seg = sitk.ReadImage(str(seg_path))
if seg.GetPixelID() != sitk.sitkUInt8 or seg.GetNumberOfComponentsPerPixel() != 1:
    fail(f"{seg_path.name} has pixel type {seg.GetPixelIDTypeAsString()}, expected 8-bit unsigned integer")
for name in ("Size", "Spacing", "Origin", "Direction"):
    want, got = getattr(ct_reader, f"Get{name}")(), getattr(seg, f"Get{name}")()
    if tuple(want) != tuple(got):
        diff = max(abs(a - b) for a, b in zip(want, got)) if len(want) == len(got) else float("nan")
        fail(f"{name.lower()} of the output {tuple(got)} differs from the CT's {tuple(want)} (max abs diff {diff:g})")
labels = np.unique(sitk.GetArrayViewFromImage(seg))
if labels.min() < 0 or labels.max() > 30:
    fail(f"labels outside 0..30: {labels.tolist()}")
print(f"test.sh: output {seg_path.name}: uint8 {seg.GetSize()} on the CT grid, "
      f"{len(labels) - int(0 in labels)} foreground labels present {labels.tolist()}")
if sys.argv[3]:
    sys.path.insert(0, sys.argv[4])
    from contract.labels import LATERAL_PAIRS, hanseg_value

    dataset = json.loads((Path(sys.argv[3]) / "dataset.json").read_text())
    split = dataset.get("lr_split") or {}
    expected = [m for n in dataset["labels"] if n != "background" for m in split.get(n, [n])]
    missing = [n for n in expected if hanseg_value(n) not in labels]
    if missing:
        fail(f"the trained model's OARs {missing} are missing from the output (expected all of {expected})")
    arr = sitk.GetArrayViewFromImage(seg)

    def centroid_x(value: int) -> float:
        idx = np.argwhere(arr == value).mean(axis=0)[::-1]  # numpy (z, y, x) -> index (x, y, z)
        return seg.TransformContinuousIndexToPhysicalPoint(idx.tolist())[0]

    for left, right in LATERAL_PAIRS.values():
        if left in expected and right in expected and not centroid_x(hanseg_value(left)) > centroid_x(hanseg_value(right)):
            fail(f"{left} does not lie on the patient's left of {right} (LPS x of the centroids)")
    print(f"test.sh: all {len(expected)} OARs of the model are present, left/right pairs on their own side")
PY
echo "test.sh: PASS ($image, ${elapsed} s in the container)"
