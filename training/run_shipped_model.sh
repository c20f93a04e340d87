#!/usr/bin/env bash
# Train (or resume) the shipped CPU model: all 203 OpenKBP cases (34 full + 169 partially labelled; train-pats for
# training, validation-pats held out), CT + synthetic T1, Parotid_L/R merged, 2-D CPU recipe with the partial-label
# (marginal) loss and left-right mirroring, folds 0 and 1, initialised from the previous shipped model.
# The defaults run stage 3 of training/README.md; the shipped model (stage 5) is stage 3 continued for 600 iterations:
#   PRETRAINED=<stage-3 weights> DATASET_ID=504 DATASET_NAME=OpenKBPHaN2D TRAINER=nnUNetTrainerCPU_partial_6ep
# CONFIG=3d_fullres with a 2-D PRETRAINED model starts the 3-D network from it (weights inflated along z; stage 6):
#   PRETRAINED=weights DATASET_ID=504 DATASET_NAME=OpenKBPHaN2D TRAINER=nnUNetTrainerCPU_partial_10ep CONFIG=3d_fullres
#
# Idempotent and resumable: every step is skipped when its output exists; a fold with checkpoint_final.pth and a
# finished validation, or already exported to weights/ by the same trainer, is skipped, an unfinished fold continues from checkpoint_latest.pth (nnU-Net's --c). If the
# local results folder has no checkpoint but training/checkpoints/ holds a committed snapshot, it is restored first.
# Folds run CONCURRENTLY, one torch thread each (faster than two threads each on 2 shared cores; see README.md).
#
#   nohup training/run_shipped_model.sh > work_dirs/logs/run_shipped_model.log 2>&1 &
#
# Environment overrides: FOLDS ("0 1"), TRAINER (nnUNetTrainerCPU_partial), CONFIG (2d), PLANS (nnUNetPlansCPU),
# PRETRAINED (a weights/ folder: nnUNetTrainerCPU_ft and _partial start each fold from its checkpoint_final.pth),
# DATASET_ID (502), DATASET_NAME (OpenKBPHaNPartial), CONVERT_ARGS ("--merge-lr"), WORK,
# PYTHON (.venv/bin/python of the repository), NICE (10), EXPORT=1 (export to weights/
# and run the held-out evaluation when all folds are finished), DRY_RUN=1 (only print the
# training commands; the data steps still run if their outputs are missing).
set -euo pipefail
# shellcheck source=training/recipe_env.sh
source "$(dirname "$0")/recipe_env.sh" run_shipped_model  # cd to the repository; REPO PYTHON BIN WORK PYTHONPATH log
DATASET_ID=${DATASET_ID:-502}
DATASET_NAME=${DATASET_NAME:-OpenKBPHaNPartial}
CONVERT_ARGS=${CONVERT_ARGS:-"--merge-lr"}
FOLDS=${FOLDS:-"0 1"}
TRAINER=${TRAINER:-nnUNetTrainerCPU_partial}
CONFIG=${CONFIG:-2d}
PLANS=${PLANS:-nnUNetPlansCPU}
NICE=${NICE:-10}

export nnUNet_raw=$WORK/nnUNet_raw nnUNet_preprocessed=$WORK/nnUNet_preprocessed nnUNet_results=$WORK/nnUNet_results
export nnUNet_n_proc_DA=${nnUNet_n_proc_DA:-1} HANSEG_TORCH_THREADS=${HANSEG_TORCH_THREADS:-1}
mkdir -p "$WORK/logs"
DS=$(printf "Dataset%03d_%s" "$DATASET_ID" "$DATASET_NAME")

# 1. raw dataset (CT + synthetic T1 registered back; ~2-6 s per case; both shared OpenKBP folders)
if [ ! -f "$nnUNet_raw/$DS/dataset.json" ]; then
  log "converting OpenKBP -> $nnUNet_raw/$DS"
  # shellcheck disable=SC2086
  nice -n "$NICE" "$PYTHON" -m training.convert_openkbp --out "$nnUNet_raw" --dataset-id "$DATASET_ID" \
    --name "$DATASET_NAME" --t1 synthetic --workers 2 $CONVERT_ARGS
fi
# 2. fingerprint, default plans, CPU plans, preprocessing
if [ ! -f "$nnUNet_preprocessed/$DS/nnUNetPlans.json" ]; then
  log "fingerprint + default plans"
  nice -n "$NICE" "$BIN/nnUNetv2_extract_fingerprint" -d "$DATASET_ID" -np 2 --verify_dataset_integrity
  nice -n "$NICE" "$BIN/nnUNetv2_plan_experiment" -d "$DATASET_ID"
fi
if [ ! -f "$nnUNet_preprocessed/$DS/$PLANS.json" ]; then
  "$PYTHON" -m training.cpu_plans -d "$DATASET_ID" --plans-name "$PLANS"
fi
DATA_ID=$("$PYTHON" -c "import json,sys; print(json.load(open(sys.argv[1]))['configurations'][sys.argv[2]]['data_identifier'])" \
  "$nnUNet_preprocessed/$DS/$PLANS.json" "$CONFIG")
if [ ! -d "$nnUNet_preprocessed/$DS/$DATA_ID" ]; then
  log "preprocessing $PLANS $CONFIG"
  nice -n "$NICE" "$BIN/nnUNetv2_preprocess" -d "$DATASET_ID" -plans_name "$PLANS" -c "$CONFIG" -np 2
fi
# the partial-label trainer reads the per-case label availability from the preprocessed folder
if [ -f "$nnUNet_raw/$DS/label_availability.json" ]; then
  cp "$nnUNet_raw/$DS/label_availability.json" "$nnUNet_preprocessed/$DS/label_availability.json"
fi
# 3. trainers into the installed nnunetv2 (copy)
"$PYTHON" -m training.install_trainers --check >/dev/null 2>&1 || "$PYTHON" -m training.install_trainers
# 4. restore committed checkpoints where the local run has none
"$PYTHON" -m training.checkpoints restore --results "$nnUNet_results" || true

# 5. train the folds concurrently
RUN_DIR=$nnUNet_results/$DS/${TRAINER}__${PLANS}__${CONFIG}
pids=()
for f in $FOLDS; do
  if [ -f "$RUN_DIR/fold_$f/checkpoint_final.pth" ]; then  # (nnU-Net's final validation may be skipped)
    log "fold $f finished already"
    continue
  fi
  log "training fold $f (continues from checkpoint_latest.pth if present), log $WORK/logs/${DS}_${TRAINER}_${CONFIG}_fold_$f.log"
  if [ -f "$REPO/weights/fold_$f/checkpoint_final.pth" ] && [ ! -f "$RUN_DIR/fold_$f/checkpoint_latest.pth" ] && \
     "$PYTHON" -c "import sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=False); \
sys.exit(0 if c['trainer_name'] == sys.argv[2] and c['init_args']['configuration'] == sys.argv[3] \
and c['init_args']['plans']['dataset_name'] == sys.argv[4] else 1)" \
     "$REPO/weights/fold_$f/checkpoint_final.pth" "$TRAINER" "$CONFIG" "$DS"; then
    log "fold $f: weights/ already holds this trainer's finished fold of $DS (exported); not retrained"
    continue
  fi
  if pgrep -f "nnUNetv2_train $DATASET_ID $CONFIG $f -tr $TRAINER " >/dev/null; then
    log "fold $f is already being trained by another process: not started twice"
    continue
  fi
  init=()
  if [ -n "${PRETRAINED:-}" ]; then  # read by nnUNetTrainerCPU_ft on a fold's first start only
    init=(env "HANSEG_INIT_FROM=$PRETRAINED/fold_$f/checkpoint_final.pth")
  fi
  cmd=("${init[@]+"${init[@]}"}" nice -n "$NICE" "$BIN/nnUNetv2_train" "$DATASET_ID" "$CONFIG" "$f" -tr "$TRAINER"
       -p "$PLANS" -device cpu --c)
  if [ -n "${DRY_RUN:-}" ]; then
    echo "${cmd[@]}"
    continue
  fi
  "${cmd[@]}" >> "$WORK/logs/${DS}_${TRAINER}_${CONFIG}_fold_$f.log" 2>&1 &
  pids+=($!)
  echo "${pids[-1]}" > "$WORK/logs/${DS}_${CONFIG}_fold_$f.pid"
  # the first fold writes nnU-Net's splits_final.json; a second fold started at once read it half-written
  for _ in $(seq 300); do
    [ -s "$nnUNet_preprocessed/$DS/splits_final.json" ] || ! kill -0 "${pids[-1]}" 2>/dev/null && break
    sleep 1
  done
done
status=0
for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" || status=$?; done
log "training done (status $status)"

# 6. optional: export to weights/ and measure on the held-out cases once every fold is finished
if [ "$status" = 0 ] && [ "${EXPORT:-0}" = 1 ] && [ -z "${DRY_RUN:-}" ]; then
  for f in $FOLDS; do [ -f "$RUN_DIR/fold_$f/checkpoint_final.pth" ] || { log "fold $f unfinished: no export"; exit 0; }; done
  # shellcheck disable=SC2086
  "$PYTHON" -m training.export_model --run "$RUN_DIR" --folds $FOLDS --out "$REPO/weights"
  nice -n "$NICE" "$PYTHON" -m training.evaluate_heldout --model "$REPO/weights" --raw "$nnUNet_raw/$DS" \
    --work "$WORK/heldout_eval"
fi
exit $status
