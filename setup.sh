#!/usr/bin/env bash
# Create .venv and install what the project needs, from scratch, on a fresh machine.
#   ./setup.sh            inference only (process.py)
#   ./setup.sh --test     + evaluation, nnU-Net (for side-by-side tests), Ray (cohort engine), pytest, ruff, hadolint,
#                         and (apt, as root) the DICOM test tools dicom3tools, plastimatch, orthanc
#   ./setup.sh --train    + nnU-Net training, with this project's trainers registered in it
# VENV=path overrides the location. Every pip call passes constraints.txt so the CPU torch wheel stays.
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-}"
case "$mode" in ""|--test|--train) ;; *) echo "usage: $0 [--test|--train]" >&2; exit 2 ;; esac
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" -c constraints.txt -r requirements.txt
"${pip[@]}" --no-deps -r requirements-nodeps.txt
if [ -n "$mode" ]; then
  "${pip[@]}" -c constraints.txt -r requirements-train.txt
  "${pip[@]}" -c constraints.txt --no-deps -r requirements-nnunet.txt
  "$VENV/bin/python" -m training.install_trainers
fi
if [ "$mode" = "--test" ]; then
  "${pip[@]}" -c constraints.txt -r requirements-eval.txt -r requirements-test.txt -r requirements-ray.txt
  # Independent DICOM tools for the DICOM tests (test/test_dicom_*.py): dicom3tools (dciodvfy), plastimatch
  # (RTSTRUCT rasteriser), orthanc (a real PACS, started by the test fixture on a loopback port; never as a service)
  dicom_tools=(dicom3tools plastimatch orthanc)
  if ! command -v dciodvfy >/dev/null || ! command -v plastimatch >/dev/null || [ ! -x /usr/sbin/Orthanc ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${dicom_tools[@]}" >/dev/null
    else
      echo "setup.sh: install the Debian packages ${dicom_tools[*]} (as root) for the DICOM tests" >&2
      exit 1
    fi
  fi
fi
# nothing above may have swapped the pinned CPU torch for another build
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__} replaced the pinned 2.13.0"
for banned in ("torchvision", "timm"):
    try:
        __import__(banned)
    except ImportError:
        continue
    raise SystemExit(f"{banned} is installed: it breaks beside the pinned torch; remove it")
print(f"setup ok: torch {torch.__version__}")
PY
