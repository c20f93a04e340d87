#!/usr/bin/env bash
# The HaN-Seg recipe end to end, resumable: convert -> plan + preprocess -> train every fold -> export -> held-out
# evaluation, which writes the new model's card (weights/README.md, heldout_metrics.json).
#
#   SRC=/data/HaN-Seg TEST_CASES="case_40 case_41 case_42" training/hanseg_recipe.sh     # full run, GPU
#   SMOKE=1 training/hanseg_recipe.sh                                                   # same steps, minutes, CPU
#
# SMOKE=1 is the SAME recipe (converter, nnU-Net's default 3d_fullres plans, the no-mirroring trainer, export,
# evaluation) on a 4-case HaN-Seg-layout sample made from the shared OpenKBP CTs at 8 x 8 x 6 mm
# (training.sample_hanseg_layout), trained by nnUNetTrainerNoMirroring_smoke (2 epochs x 3 iterations) on fold
# `all` on the CPU. A dry run on a few real cases: FOLDS=all (or SPLITS=your_splits_final.json; nnU-Net's own
# 5-fold split needs >= 5 training cases).
#
# Variables (full default / SMOKE=1 default):
#   SRC            HaN-Seg root with case_XX/ folders and OAR_data.csv   / $WORK/hanseg_sample (made if missing)
#   TEST_CASES     held-out case ids, never trained on (required)        / "case_04"
#   DATASET_ID     601 / 991            DATASET_NAME  HaNSeg / HaNSegSmoke
#   TRAINER        nnUNetTrainerNoMirroring / nnUNetTrainerNoMirroring_smoke
#   TARGET_SPACING e.g. "2 1 1" (z y x, mm): nnU-Net's -overwrite_target_spacing, plans nnUNetPlans_2x1x1mm; the
#                  platform variant (python -m model.fit: fits a T4 + 16 GB RAM with 5 folds, no mirroring)
#   FOLDS          "0 1 2 3 4" / "all"       SPLITS  a splits_final.json copied into the preprocessed dataset
#   DEVICE         cuda / cpu                NP      processes for conversion and preprocessing (2: -np 8 on
#                                                    1 mm HaN-Seg CTs may need ~100 GB of RAM)
#   OUT            weights / $WORK/smoke_weights        MAX_MB  700 (5 x ~120 MB 3d_fullres folds + JSON)
#   WORK           work_dirs (nnUNet_raw/_preprocessed/_results under it unless already exported)
#   PYTHON         .venv/bin/python
set -euo pipefail
# shellcheck source=training/recipe_env.sh
source "$(dirname "$0")/recipe_env.sh" hanseg_recipe  # cd to the repository; REPO PYTHON BIN WORK PYTHONPATH log
SMOKE=${SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  SRC=${SRC:-$WORK/hanseg_sample/set_1}; TEST_CASES=${TEST_CASES:-case_04}
  DATASET_ID=${DATASET_ID:-991}; DATASET_NAME=${DATASET_NAME:-HaNSegSmoke}
  TRAINER=${TRAINER:-nnUNetTrainerNoMirroring_smoke}; FOLDS=${FOLDS:-all}; DEVICE=${DEVICE:-cpu}
  OUT=${OUT:-$WORK/smoke_weights}
fi
: "${SRC:?set SRC to the HaN-Seg root (or SMOKE=1)}"
: "${TEST_CASES:?set TEST_CASES to the held-out case ids}"
DATASET_ID=${DATASET_ID:-601}; DATASET_NAME=${DATASET_NAME:-HaNSeg}
TRAINER=${TRAINER:-nnUNetTrainerNoMirroring}; FOLDS=${FOLDS:-"0 1 2 3 4"}; DEVICE=${DEVICE:-cuda}
CONFIG=3d_fullres; NP=${NP:-2}; OUT=${OUT:-$REPO/weights}; MAX_MB=${MAX_MB:-700}
PLANS=nnUNetPlans
SPACING_ARGS=()
if [ -n "${TARGET_SPACING:-}" ]; then
  PLANS="nnUNetPlans_$(echo "$TARGET_SPACING" | tr ' ' 'x')mm"
  read -r -a spacing <<< "$TARGET_SPACING"
  SPACING_ARGS=(-overwrite_target_spacing "${spacing[@]}" -overwrite_plans_name "$PLANS")
fi
export nnUNet_raw=${nnUNet_raw:-$WORK/nnUNet_raw} nnUNet_preprocessed=${nnUNet_preprocessed:-$WORK/nnUNet_preprocessed}
export nnUNet_results=${nnUNet_results:-$WORK/nnUNet_results}
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-$NP}
DS=$(printf "Dataset%03d_%s" "$DATASET_ID" "$DATASET_NAME")
RUN=$nnUNet_results/$DS/${TRAINER}__${PLANS}__$CONFIG

# 0. smoke data (HaN-Seg layout from the shared OpenKBP CTs)
if [ "$SMOKE" = 1 ] && [ ! -f "$SRC/OAR_data.csv" ]; then
  "$PYTHON" -m training.sample_hanseg_layout --out "$(dirname "$SRC")"
fi
# 1. raw dataset: CT + registered T1, label maps, conversion report, label_availability.json
if [ ! -f "$nnUNet_raw/$DS/dataset.json" ]; then
  log "converting $SRC -> $nnUNet_raw/$DS (held out: $TEST_CASES)"
  # shellcheck disable=SC2086
  "$PYTHON" -m training.convert_hanseg --src "$SRC" --out "$nnUNet_raw" --dataset-id "$DATASET_ID" \
    --name "$DATASET_NAME" --workers "$NP" --test-cases $TEST_CASES
fi
# 2. fingerprint, nnU-Net's default plans (optionally at TARGET_SPACING), preprocessing of 3d_fullres
if [ ! -f "$nnUNet_preprocessed/$DS/$PLANS.json" ]; then
  log "planning and preprocessing $PLANS $CONFIG"
  "$BIN/nnUNetv2_plan_and_preprocess" -d "$DATASET_ID" -c "$CONFIG" --verify_dataset_integrity -npfp "$NP" \
    -np "$NP" "${SPACING_ARGS[@]}"
fi
if [ -n "${SPLITS:-}" ]; then
  cp "$SPLITS" "$nnUNet_preprocessed/$DS/splits_final.json"
fi
# 3. the project's trainers must be importable by nnU-Net (./setup.sh --train installs them)
"$PYTHON" - "$TRAINER" <<'PY' || {
import os, sys
import nnunetv2
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
folder = os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer")
sys.exit(recursive_find_python_class(folder, sys.argv[1], "nnunetv2.training.nnUNetTrainer") is None)
PY
  echo "hanseg_recipe: nnU-Net cannot find $TRAINER: run $PYTHON -m training.install_trainers" >&2
  exit 1
}
"$PYTHON" -m training.install_trainers --check >/dev/null 2>&1 || log "WARNING: installed trainers differ from training/trainers.py"
# 4. train (resumes from checkpoint_latest.pth; a finished fold is skipped)
for fold in $FOLDS; do
  if [ -f "$RUN/fold_$fold/checkpoint_final.pth" ]; then
    log "fold $fold finished already"
    continue
  fi
  log "training fold $fold ($TRAINER, $PLANS, $DEVICE)"
  "$BIN/nnUNetv2_train" "$DATASET_ID" "$CONFIG" "$fold" -tr "$TRAINER" -p "$PLANS" -device "$DEVICE" --c
done
# 5. export (checks first, temporary folder, swap; the previous $OUT is kept as $OUT.previous-<time>)
# shellcheck disable=SC2086
"$PYTHON" -m training.export_model --run "$RUN" --folds $FOLDS --out "$OUT" --max-mb "$MAX_MB" \
  --train-command "SRC=$SRC TEST_CASES=\"$TEST_CASES\" TRAINER=$TRAINER FOLDS=\"$FOLDS\" training/hanseg_recipe.sh"
# 6. held-out evaluation through process.py (the case's real MR from SRC); fills the new model card
"$PYTHON" -m training.evaluate_heldout --model "$OUT" --raw "$nnUNet_raw/$DS" --source "$SRC" \
  --work "$WORK/heldout_$DS"
log "done: $OUT (model card $OUT/README.md)"
