#!/usr/bin/env bash
# Save the image as the gzipped tarball that grand-challenge.org takes as an algorithm container upload.
#
#   ./export.sh [--image hanseg-oar:latest] [--output work_dirs/export/hanseg-oar.tar.gz] [--level 1]
#
#   --level N   gzip level 1..9 (default 1, the fastest; higher levels take much longer for a somewhat smaller file).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$root"

die() { echo "export.sh: ERROR: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

image="hanseg-oar:latest"
output="work_dirs/export/hanseg-oar.tar.gz"
level=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --image) image="$2"; shift 2 ;;
        --output) output="$2"; shift 2 ;;
        --level) level="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done
[[ "$level" =~ ^[1-9]$ ]] || die "--level must be 1..9, got '$level'"
docker info >/dev/null 2>&1 || die "no Docker engine reachable (start dockerd, see ../shared/docs/CONTAINER.md)"
docker image inspect "$image" >/dev/null 2>&1 || die "image $image does not exist (build it with ./build.sh)"

mkdir -p "$(dirname "$output")"
partial="$output.partial"
trap 'rm -f "$partial"' EXIT
echo "export.sh: docker save $image | gzip -$level > $output"
start=$SECONDS
docker save "$image" | gzip "-$level" >"$partial"
gzip -t "$partial" || die "the written tarball does not pass gzip -t"
mv "$partial" "$output"
bytes=$(stat -c %s "$output")
echo "export.sh: wrote $output: $bytes bytes ($((bytes / 1048576)) MiB) in $((SECONDS - start)) s"
