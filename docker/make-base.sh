#!/usr/bin/env bash
# Make the local Debian 12 base image used for builds on machines without a container registry:
# python3 (3.11.2, so cp311 wheels fit) + python3-venv + CA certificates, from Debian packages (~30 s, ~217 MB).
#
#   docker/make-base.sh [--tag local/bookworm-py:venv] [--mirror http://deb.debian.org/debian] [--force]
#
# Needs root, mmdebstrap and a running Docker engine. Does nothing if the tag already exists (unless --force).
set -euo pipefail

tag="local/bookworm-py:venv"
mirror="http://deb.debian.org/debian"
force=0

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) tag="$2"; shift 2 ;;
        --mirror) mirror="$2"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "make-base.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

if ! docker info >/dev/null 2>&1; then
    echo "make-base.sh: no Docker engine reachable (start dockerd first, see ../shared/docs/CONTAINER.md)" >&2
    exit 1
fi
if [[ "$force" -eq 0 ]] && docker image inspect "$tag" >/dev/null 2>&1; then
    echo "make-base.sh: $tag already exists"
    exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
    echo "make-base.sh: mmdebstrap is missing (apt-get install -y --no-install-recommends mmdebstrap)" >&2
    exit 1
fi

echo "make-base.sh: building $tag from $mirror (bookworm, minbase + python3, python3-venv, ca-certificates)"
start=$SECONDS
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm - "$mirror" \
    | docker import --change 'CMD ["python3"]' - "$tag" >/dev/null
docker run --rm --network none "$tag" python3 -c 'import sys, venv, ensurepip; print("python", sys.version.split()[0])'
echo "make-base.sh: $tag ready in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
