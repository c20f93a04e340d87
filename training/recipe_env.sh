# shellcheck shell=bash
# The common start of training/hanseg_recipe.sh and training/run_shipped_model.sh; sourced, not run:
#
#   source "$(dirname "$0")/recipe_env.sh" <script name>
#
# It changes to the repository root and sets REPO (that root), PYTHON (default: the repository's .venv/bin/python),
# BIN (PYTHON's folder: nnU-Net's commands), WORK (default: $REPO/work_dirs), puts the repository first on
# PYTHONPATH (exported) and defines log(), which prints its arguments after the UTC time and <script name>.
# The nnU-Net folders (nnUNet_raw, ...) are each script's own: the recipe keeps values from the environment, the
# shipped-model run always uses $WORK's.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
BIN=$(dirname "$PYTHON")
WORK=${WORK:-$REPO/work_dirs}
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
RECIPE_LOG_NAME=$1
log() { echo "$(date -u +%FT%TZ) $RECIPE_LOG_NAME: $*"; }
