"""The model card ``weights/README.md``: what the shipped model is, how it was trained, how well it does.

Written by ``training.export_model`` (data, OARs, command, time, hardware, training curve summary) with a
placeholder for the held-out table, which ``training.evaluate_heldout`` fills between the markers
``<!-- heldout:begin -->`` / ``<!-- heldout:end -->``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from contract.labels import HANSEG_OAR_NAMES

HELDOUT_BEGIN = "<!-- heldout:begin -->"
HELDOUT_END = "<!-- heldout:end -->"
DEFAULT_TRAIN_COMMAND = "nohup training/run_shipped_model.sh > work_dirs/logs/run_shipped_model.log 2>&1 &"


def _hardware() -> str:
    try:
        import os

        cpus = os.cpu_count()
    except Exception:  # noqa: BLE001
        cpus = None
    return f"{platform.machine()} CPU, {cpus} cores (shared with other jobs), no GPU; torch threads: 1 per fold"


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def curve_markdown(curves: dict[str, Any], every: int = 3) -> str:
    """Markdown table of the training curves: per fold, every ``every``-th epoch and the last one:
    cumulative minutes, mean pseudo Dice and pseudo Dice per label."""
    lines = ["| fold | epoch | iterations | cumulative min | mean pseudo Dice | per label |",
             "|---|---|---|---|---|---|"]
    for fold, c in curves.items():
        secs = c.get("epoch_seconds", [])
        pd = c.get("pseudo_dice_per_label", [])
        mean = c.get("mean_pseudo_dice", [])
        n = len(pd)
        for e in sorted({*range(0, n, every), n - 1} - {-1}):
            minutes = sum(secs[: e + 1]) / 60
            lines.append(f"| {fold.removeprefix('fold_')} | {e} | {(e + 1) * 100} | {minutes:.0f} | "
                         f"{mean[e]:.3f} | " + " / ".join(f"{v:.2f}" for v in pd[e]) + " |")
    return "\n".join(lines)


def is_openkbp(dataset: dict[str, Any]) -> bool:
    """True for a model trained on the OpenKBP conversion (synthetic T1, OpenKBP names mapped)."""
    return "name_mapping" in dataset or dataset.get("t1_channel") == "synthetic"


def data_notes(dataset: dict[str, Any]) -> dict[str, str]:
    """The card's data-dependent sentences: training cases, T1 channel, label mapping, resolution remark, limits."""
    if is_openkbp(dataset):
        return {
            "trained_on": "the OpenKBP `train-pats` (30 cases; each fold trains on 24 and validates on 6, nnU-Net's "
                          "5-fold split); the 4 `validation-pats` were held out and never seen in training.",
            "t1": "**The T1 channel the model was trained with is SYNTHETIC**: a T1-like image generated from the CT "
                  "(`preprocessing/synthetic_t1.py`) under a random rigid transform and field of view, then "
                  "registered back by the inference registration; no real MR exists for these patients.",
            "mapping": " Mapped from OpenKBP names: Larynx -> Larynx_SG (OpenKBP's larynx is roughly Larynx_SG + "
                       "Glottis), Esophagus -> Esophagus_S (OpenKBP's extends further down).",
            "resolution": " (OpenKBP volumes are about 4x coarser than HaN-Seg CTs)",
            "limits": "Trained on 30 low-resolution CTs with clinical contours and a synthetic MR channel: expect a "
                      "drop on real HaN-Seg CT + MR, and nothing at all for the OARs it does not cover.",
        }
    n = dataset.get("numTraining", "?")
    return {
        "trained_on": f"{n} training cases of the raw dataset (`imagesTr`; nnU-Net's folds split them); the cases in "
                      "`imagesTs` were held out at conversion and never seen in training (conversion_report.json).",
        "t1": "The T1 channel is each case's own MR registered onto the CT grid by the inference registration (all "
              "zeros where registration was rejected or there was no MR; conversion_report.json lists them).",
        "mapping": "",
        "resolution": "",
        "limits": f"Trained on {n} cases: check the held-out table below before use; OARs it does not cover are "
                  "never predicted.",
    }


def recipe_note(trainer: str, mirror_axes: Any) -> str:
    """One sentence on the trainer's recipe (training/trainers.py) and the inference mirroring it exported."""
    mirroring = "Inference mirroring disabled." if not mirror_axes else f"Inference mirroring over axes {mirror_axes}."
    if trainer.startswith("nnUNetTrainerCPU"):
        return ("AdamW, warm-up + poly LR, Dice+CE with deep supervision, 66 % foreground oversampling, no mirroring "
                f"(lateralised labels), modality dropout. {mirroring}")
    if trainer.startswith("nnUNetTrainerNoMirroring"):
        smoke = " SMOKE LENGTH (2 epochs x 3 iterations): plumbing only, not a usable model." if "smoke" in trainer \
            else ""
        return ("nnU-Net's default schedule (SGD, poly LR, Dice+CE with deep supervision, default augmentation) with "
                f"modality dropout and NO mirroring in training (lateralised labels).{smoke} {mirroring}")
    return f"nnU-Net trainer `{trainer}` (see training/trainers.py / nnU-Net). {mirroring}"


def write_model_card(out: Path, summary: dict[str, Any], curves: dict[str, Any],
                     train_command: str | None = None) -> Path:
    """Write ``out/README.md`` from the export summary and training curves; keep an existing held-out table."""
    dataset = json.loads((out / "dataset.json").read_text())
    plans = json.loads((out / "plans.json").read_text())
    labels = [n for n in dataset["labels"] if n != "background"]
    config_name = Path(summary["run"]).name.split("__")[-1]
    config = plans["configurations"][config_name]
    arch = config["architecture"]["arch_kwargs"]
    card = out / "README.md"
    heldout = f"{HELDOUT_BEGIN}\n_Not measured yet: run `python -m training.evaluate_heldout --model weights` " \
              f"(see training/README.md)._\n{HELDOUT_END}"
    if card.exists():
        old = card.read_text()
        if HELDOUT_BEGIN in old and HELDOUT_END in old:
            heldout = old[old.index(HELDOUT_BEGIN): old.index(HELDOUT_END) + len(HELDOUT_END)]

    rows = []
    for fold, info in summary["folds"].items():
        c = curves.get(f"fold_{fold}", {})
        secs = sum(c.get("epoch_seconds", []))
        mean = c.get("mean_pseudo_dice", [])
        pd = c.get("pseudo_dice_per_label", [])
        last = pd[-1] if pd else []
        rows.append(
            f"| {fold} | {info['source']}{'' if info['finished'] else ' (UNFINISHED)'} | {info['epochs_done']} | "
            f"{secs / 60:.0f} | {_fmt(mean[-1] if mean else None)} | "
            + " / ".join(f"{v:.2f}" for v in last) + " |"
        )
    missing = [n for n in HANSEG_OAR_NAMES if n not in labels]
    notes = data_notes(dataset)
    trainer = next(iter(summary["folds"].values()), {}).get("trainer") or "nnUNetTrainerCPU"
    mirror_axes = summary.get("mirror_axes")
    text = f"""# Model card: HaN-Seg OAR segmentation weights (`weights/`)

nnU-Net v2 results folder (`plans.json`, `dataset.json`, `fold_N/checkpoint_final.pth` with network weights only,
no optimiser state), loaded by the project's predictor (`process.py`, `model/`) or nnU-Net's own
(`nnUNetPredictor.initialize_from_trained_model_folder`, after `python -m training.install_trainers`).
Size: {summary['size_mb']} MB.

## What it is
- **Data**: {dataset.get('description', '')}
- **Trained on** {notes['trained_on']}
- **Inputs**: channel 0 = CT (HU, nnU-Net CT normalisation), channel 1 = T1 on the CT grid (z-scored per image;
  all zeros when there is no usable MR). {notes['t1']} Modality dropout in training
  (T1 zeroed with p = 0.3, CT with p = 0.05) teaches it to work without the MR.
- **OARs covered ({len(labels)} of 30)**: {', '.join(labels)}.{notes['mapping']}
- **Not covered ({len(missing)})**: {', '.join(missing) or 'none'}. The model never predicts them: a HaN-Seg
  submission with this model scores HD95 = inf on those OARs. Train on real HaN-Seg data for those (training/README.md).
- **Resolution**: trained at {' x '.join(f'{s:.2f}' for s in config['spacing'])} mm{notes['resolution']}; inputs
  are resampled to it.

## Network and recipe
- Configuration `{config_name}` of plans `{plans['plans_name']}`: {len(config['patch_size'])}-D
  {config['architecture']['network_class_name'].rsplit('.', 1)[-1]}, patch {config['patch_size']}, features
  {arch['features_per_stage']}, batch {config['batch_size']}; transpose_forward {plans['transpose_forward']}
  (axial slices).
- Trainer `{trainer}` (training/trainers.py): {recipe_note(trainer, mirror_axes)}
- **Command**: `{train_command or DEFAULT_TRAIN_COMMAND}` (resumable; details and measured curve in
  training/README.md).
- **Hardware**: {summary.get('hardware') or _hardware()}.

## Training per fold (nnU-Net pseudo Dice on sampled validation patches of the fold's validation cases)
| fold | checkpoint | epochs | train minutes | mean pseudo Dice (last epoch) | per label ({' / '.join(labels)}) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Curve (iterations = epochs x 100; minutes are wall time on the shared machine, both folds training at once):

{curve_markdown(curves, every=5)}

## Held-out evaluation (held-out cases; Dice and HD95 per OAR, with and without the T1 channel)
{heldout}

## Limits
- {notes['limits']}
- Not for clinical use.
"""
    card.write_text(text)
    return card


def fill_heldout(out: Path, markdown: str) -> None:
    """Replace the held-out section of ``out/README.md`` with ``markdown``."""
    card = out / "README.md"
    text = card.read_text()
    if HELDOUT_BEGIN not in text or HELDOUT_END not in text:
        raise ValueError(f"{card} has no held-out markers")
    head, rest = text.split(HELDOUT_BEGIN, 1)
    _, tail = rest.split(HELDOUT_END, 1)
    card.write_text(f"{head}{HELDOUT_BEGIN}\n{markdown.strip()}\n{HELDOUT_END}{tail}")
