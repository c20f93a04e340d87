#!/usr/bin/env bash
# Build and tag the HaN-Seg algorithm image.
#
#   ./build.sh [--tag hanseg-oar:latest] [--base IMAGE] [--wheelhouse DIR] [--no-download]
#              [--python-version X.Y] [--torch-from-base auto|yes|no] [-- EXTRA DOCKER BUILD ARGS...]
#
#   --base IMAGE        base image (default: the Dockerfile's ARG BASE_IMAGE, the CUDA PyTorch runtime image).
#                       Without a registry use the local Debian base: --base local/bookworm-py:venv
#                       (make it with docker/make-base.sh).
#   --wheelhouse DIR    wheel folder inside this repository, not left out by .dockerignore (default: wheelhouse/,
#                       which git ignores). Emptied and refilled with `pip download` on the host, for the base
#                       image's Python, unless --no-download is given.
#   --no-download       use the wheelhouse as it is (fully offline build).
#   --python-version    Python of the base image (default: asked from the base image itself).
#   --torch-from-base   auto (default): keep the base's torch if it has one, else put torch in the wheelhouse.
#
# The image is built with `docker build --network none`: every package comes from the wheelhouse.
# Environment: PYTHON (host Python with pip, default python3); pip's own PIP_* variables apply to the download
# (e.g. PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU torch on an ordinary machine).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

die() { echo "build.sh: ERROR: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

tag="hanseg-oar:latest"
base=""
wheelhouse="wheelhouse"
download=1
python_version=""
torch_from_base="auto"
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --base) base="$2"; shift 2 ;;
        --wheelhouse) wheelhouse="$2"; shift 2 ;;
        --no-download) download=0; shift ;;
        --python-version) python_version="$2"; shift 2 ;;
        --torch-from-base) torch_from_base="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done
case "$torch_from_base" in auto|yes|no) ;; *) die "--torch-from-base must be auto, yes or no" ;; esac

default_base=$(sed -n 's/^ARG BASE_IMAGE=//p' Dockerfile | head -n 1)
[[ -n "$default_base" ]] || die "Dockerfile has no 'ARG BASE_IMAGE=' default"
base="${base:-$default_base}"
python="${PYTHON:-python3}"

docker info >/dev/null 2>&1 || die "no Docker engine reachable (start dockerd, see ../shared/docs/CONTAINER.md)"

# The wheelhouse must be inside the build context (the Dockerfile COPYs it); pass it relative to the repo root.
mkdir -p "$wheelhouse"
wheelhouse_abs="$(cd "$wheelhouse" && pwd)"
case "$wheelhouse_abs/" in
    "$root"/?*) wheelhouse_rel="${wheelhouse_abs#"$root"/}" ;;
    *) die "--wheelhouse must be a folder inside $root (the build context), got $wheelhouse_abs" ;;
esac
if grep -qxF -e "${wheelhouse_rel%%/*}" -e "${wheelhouse_rel%%/*}/" .dockerignore; then
    die "--wheelhouse $wheelhouse_rel is inside ${wheelhouse_rel%%/*}/, which .dockerignore leaves out of the build context"
fi

start=$SECONDS
if ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "build.sh: pulling $base"
    docker pull "$base" || die "base image $base is not available and cannot be pulled; without a registry use
    docker/make-base.sh && ./build.sh --base local/bookworm-py:venv"
fi

# Ask the base image which Python it runs and whether it already has torch.
probe=$(docker run --rm --network none --entrypoint python3 "$base" -c '
import sys
try:
    import torch
    t = torch.__version__
except ImportError:
    t = "none"
print("%d.%d %s" % (sys.version_info[0], sys.version_info[1], t))') || die "cannot run python3 in the base image $base"
read -r base_python base_torch <<<"$probe"
python_version="${python_version:-$base_python}"
if [[ "$torch_from_base" == auto ]]; then
    if [[ "$base_torch" == none ]]; then torch_from_base=no; else torch_from_base=yes; fi
fi
if [[ "$torch_from_base" == yes && "$base_torch" == none ]]; then
    die "--torch-from-base yes, but $base has no torch"
fi
echo "build.sh: base $base: Python $base_python, torch $base_torch; torch from the base: $torch_from_base"

if [[ "$download" -eq 1 ]]; then
    "$python" -m pip --version >/dev/null 2>&1 || die "$python has no pip (set PYTHON=/path/to/python)"
    find "$wheelhouse_abs" -maxdepth 1 -name '*.whl' -delete
    abi="cp${python_version/./}"
    target=(--only-binary=:all: --python-version "$python_version" --implementation cp --abi "$abi")
    # pip does not widen manylinux_2_28 to older glibc tags by itself; list them (every candidate base has glibc >= 2.28).
    for glibc in 28 27 26 25 24 17; do target+=(--platform "manylinux_2_${glibc}_x86_64"); done
    target+=(--platform manylinux2014_x86_64)

    requirements="requirements.txt"
    if [[ "$torch_from_base" == yes ]]; then
        # torch is already in the base image: leave it (and its CUDA dependencies) out of the wheelhouse.
        requirements="$wheelhouse_abs/requirements-without-torch.txt"
        grep -Ev '^[[:space:]]*torch[[:space:]]*([=<>!~;[]|$)' requirements.txt >"$requirements"
    fi
    echo "build.sh: downloading wheels for CPython $python_version into $wheelhouse_rel/"
    dl_start=$SECONDS
    "$python" -m pip download --quiet --dest "$wheelhouse_abs" "${target[@]}" -c constraints.txt -r "$requirements"
    "$python" -m pip download --quiet --dest "$wheelhouse_abs" "${target[@]}" --no-deps -r requirements-nodeps.txt
    "$python" -m pip download --quiet --dest "$wheelhouse_abs" "${target[@]}" --no-deps pip
    [[ "$requirements" == requirements.txt ]] || rm -f "$requirements"
    echo "build.sh: wheelhouse ready in $((SECONDS - dl_start)) s: $(find "$wheelhouse_abs" -maxdepth 1 -name '*.whl' | wc -l) wheels, $(du -sh "$wheelhouse_abs" | cut -f1)"
else
    compgen -G "$wheelhouse_abs/*.whl" >/dev/null || die "--no-download, but $wheelhouse_rel/ has no wheels"
    echo "build.sh: using the existing wheelhouse $wheelhouse_rel/ (no download)"
fi
if [[ "$torch_from_base" == no ]] && ! compgen -G "$wheelhouse_abs/torch-*.whl" >/dev/null; then
    die "the base has no torch and $wheelhouse_rel/ holds no torch wheel"
fi

revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -z "$(git status --porcelain 2>/dev/null)" ]] || revision="$revision-dirty"
echo "build.sh: docker build -t $tag (base $base, revision $revision)"
build_start=$SECONDS
docker build --network none \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "WHEELHOUSE=$wheelhouse_rel" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.base.name=$base" \
    --tag "$tag" \
    "${extra[@]}" \
    . || die "docker build failed (see the output above)"

size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "build.sh: built $tag in $((SECONDS - build_start)) s (total $((SECONDS - start)) s); image size $((size / 1000000)) MB ($((size / 1048576)) MiB)"
