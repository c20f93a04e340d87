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
from preprocessing.channels import parse_channel_plan

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


def _partial_continuation(initialisation: str, schedule: str) -> str:
    """The recipe sentence of a partial-label continuation trainer (``nnUNetTrainerCPU_partial`` subclasses):
    ``initialisation`` says how the previous model's weights were carried over, ``schedule`` the epochs."""
    return (f"continuation of the previous shipped model (heads matched by label name; {initialisation}): MARGINAL "
            "Dice+CE loss over the labels each case annotates (training/partial_label_loss.py; Shi et al. 2021), deep "
            f"supervision, AdamW peak lr 5e-4, 1-epoch warm-up, poly decay, {schedule}, 66 % foreground "
            "oversampling, modality dropout, mirroring over the patient's left-right axis (legal: Parotid_L/R are one "
            "label in training)")


TRAINER_RECIPES: dict[str, str] = {
    "nnUNetTrainerCPU": "AdamW lr 1e-3, warm-up + poly LR, Dice+CE with deep supervision, 66 % foreground "
                        "oversampling, no mirroring (lateralised labels), modality dropout; 30 epochs x 100 iterations",
    "nnUNetTrainerCPU_ft": "continuation of nnUNetTrainerCPU from its whole network: AdamW peak lr 5e-4, 40 epochs x "
                           "100 iterations, otherwise as nnUNetTrainerCPU",
    "nnUNetTrainerCPU_partial": "continuation of the previous shipped model (heads matched by label name, a merged "
                                "label from the mean of its sides): MARGINAL Dice+CE loss over the labels each case "
                                "annotates (training/partial_label_loss.py; Shi et al. 2021), deep supervision, AdamW "
                                "peak lr 5e-4 with a 1-epoch warm-up and poly decay, 15 epochs x 100 iterations of "
                                "batch 12, 66 % foreground oversampling, modality dropout, mirroring over the "
                                "patient's left-right axis (legal: Parotid_L/R are one label in training)",
    "nnUNetTrainerCPU_partial_6ep": _partial_continuation(
        "input channels matched by recipe, new ones zero-initialised", "6 epochs x 100 iterations of batch 12"),
    "nnUNetTrainerCPU_partial_10ep": _partial_continuation(
        "a 2-D checkpoint continued in a 3-D configuration is inflated along z: each 2-D kernel at the centre z tap, "
        "training/trainers.py inflate_state_dict", "10 epochs x 100 iterations"),
    "nnUNetTrainerCPU_partial_10ep_round2": _partial_continuation(
        "the previous 3-D model's weights as they are", "10 more epochs x 100 iterations"),
    "nnUNetTrainerNoMirroring": "nnU-Net's default schedule (1000 epochs x 250 iterations, SGD lr 1e-2, poly LR, "
                                "Dice+CE with deep supervision, default augmentation) + modality dropout, NO mirroring "
                                "in training or at inference (lateralised labels)",
    "nnUNetTrainerNoMirroring_smoke": "SMOKE LENGTH (2 epochs x 3 iterations) of nnUNetTrainerNoMirroring: checks the "
                                      "plumbing, not a usable model",
}
"""How each trainer of training/trainers.py trains (the card states the recipe of the exported folds)."""


def is_openkbp(dataset: dict[str, Any]) -> bool:
    """True for a model trained on the OpenKBP conversion (synthetic T1, OpenKBP names mapped)."""
    return "name_mapping" in dataset or dataset.get("t1_channel") == "synthetic"


def data_notes(dataset: dict[str, Any]) -> dict[str, str]:
    """The card's data-dependent sentences (held-out cases, T1 channel, name mapping, resolution remark, limits):
    the OpenKBP model's, or those of a model trained on real CT + MR (a HaN-Seg conversion)."""
    if is_openkbp(dataset):
        return {
            "heldout": "The OpenKBP `validation-pats` were held out (imagesTs) and never used for training or tuning.",
            "heldout_short": "OpenKBP validation-pats",
            "t1": "**The T1 channel the model was trained with is SYNTHETIC**: a T1-like image generated from the CT "
                  "(`preprocessing/synthetic_t1.py`) under a random rigid transform and field of view, then "
                  "registered back by the inference registration; no real MR exists for these patients.",
            "mapping": " Mapped from OpenKBP names: Larynx -> Larynx_SG (OpenKBP's larynx is roughly Larynx_SG + "
                       "Glottis), Esophagus -> Esophagus_S (OpenKBP's extends further down).",
            "resolution": " (OpenKBP volumes are about 4x coarser than HaN-Seg CTs; fine structures are coarse)",
            "limits": "Trained on low-resolution CTs with clinical contours of varying style and a synthetic MR "
                      "channel: expect a drop on real HaN-Seg CT + MR",
        }
    return {
        "heldout": "The cases in imagesTs were held out at conversion and never used for training or tuning "
                   "(conversion_report.json).",
        "heldout_short": "held-out cases of the dataset",
        "t1": "The T1 channel is each case's own MR registered onto the CT grid by the inference registration (all "
              "zeros where it was rejected or there was no MR; conversion_report.json lists those cases).",
        "mapping": "",
        "resolution": "",
        "limits": f"Trained on {dataset.get('numTraining', '?')} cases: read the held-out table before use",
    }


def _availability_counts(run: Path) -> tuple[int, int] | None:
    """(cases, partially annotated cases) from the run's ``label_availability.json``, if it can be found."""
    import os

    names = [run.parent.name]
    roots = [os.environ.get("nnUNet_preprocessed"), os.environ.get("nnUNet_raw")]
    for root in filter(None, roots):
        path = Path(root) / names[0] / "label_availability.json"
        if path.is_file():
            record = json.loads(path.read_text())
            n_labels = len(record["labels"]) - 1
            cases = record["cases"]
            return len(cases), sum(1 for v in cases.values() if len(v) < n_labels)
    return None


def write_model_card(out: Path, summary: dict[str, Any], curves: dict[str, Any],
                     train_command: str | None = None) -> Path:
    """Write ``out/README.md`` from the exported folder, the export summary and the training curves.

    The held-out section is reset to "not measured yet": a new export is a new model, and an earlier model's table
    must not survive into its card (``training.evaluate_heldout`` fills it for this model).
    """
    dataset = json.loads((out / "dataset.json").read_text())
    plans = json.loads((out / "plans.json").read_text())
    labels = [n for n in dataset["labels"] if n != "background"]
    split = dataset.get("lr_split") or {}
    oars = [m for n in labels for m in split.get(n, [n])]
    config_name = Path(summary["run"]).name.split("__")[-1]
    config = plans["configurations"][config_name]
    arch = config["architecture"]["arch_kwargs"]
    card = out / "README.md"
    heldout = f"{HELDOUT_BEGIN}\n_Not measured yet: run `python -m training.evaluate_heldout --model weights` " \
              f"(see training/README.md)._\n{HELDOUT_END}"
    trainer = next(iter(summary["folds"].values()), {}).get("trainer") or "nnUNetTrainer"
    notes = data_notes(dataset)
    counts = _availability_counts(Path(summary["run"]))
    n_train = dataset.get("numTraining")
    data_line = (f"{n_train} training cases" + (f", {counts[1]} of them partially annotated (label availability "
                 "per case in label_availability.json; unannotated OARs are unknown to the loss, not background)"
                 if counts else ""))
    channels = ", ".join(f"channel {i} = {r.describe()}" for i, r in enumerate(parse_channel_plan(dataset).recipes))
    lr_text = (f"- **Left/right**: {', '.join(f'{n} = {a} + {b}' for n, (a, b) in split.items())} merged in "
               "training (dataset.json `lr_split`); the pipeline splits them by the patient's mid-sagittal plane "
               "after export (`preprocessing/laterality.py`), so mirroring is on in training and as test-time "
               "augmentation over the left-right axis.\n" if split else
               "- **Left/right**: each side is its own label; no mirroring in training or at inference.\n")
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
    missing = [n for n in HANSEG_OAR_NAMES if n not in oars]
    text = f"""# Model card: HaN-Seg OAR segmentation weights (`weights/`)

nnU-Net v2 results folder (`plans.json`, `dataset.json`, `fold_N/checkpoint_final.pth` with network weights only,
no optimiser state), loaded by the project's predictor (`process.py`, `model/`) or nnU-Net's own
(`nnUNetPredictor.initialize_from_trained_model_folder`, after `python -m training.install_trainers`; nnU-Net's
predictor writes the merged labels unsplit). Size: {summary['size_mb']} MB.

## What it is
- **Data**: {dataset.get('description', '')}
- **Trained on** {data_line}; nnU-Net's 5-fold split of the training cases, folds {', '.join(summary['folds'])}
  exported. {notes['heldout']}
- **Inputs**: {channels}. CT: HU, nnU-Net CT normalisation; T1: on the CT grid, z-scored per image, all zeros when
  there is no usable MR. {notes['t1']} Modality dropout in training (T1 zeroed with
  p = 0.3, CT with p = 0.05) teaches it to work without the MR.
- **OARs covered ({len(oars)} of 30)**: {', '.join(oars)}.{notes['mapping']}
{lr_text}- **Not covered ({len(missing)})**: {', '.join(missing) or 'none'}. The model never predicts them: a HaN-Seg
  submission with this model scores HD95 = inf on those OARs. Train on real HaN-Seg data for those (training/README.md).
- **Resolution**: trained at {' x '.join(f'{s:.2f}' for s in config['spacing'])} mm{notes['resolution']}; inputs
  are resampled to it.

## Network and recipe
- Configuration `{config_name}` of plans `{plans['plans_name']}`: {len(config['patch_size'])}-D
  {config['architecture']['network_class_name'].rsplit('.', 1)[-1]}, patch {config['patch_size']}, features
  {arch['features_per_stage']}, batch {config['batch_size']}; transpose_forward {plans['transpose_forward']}.
- Trainer `{trainer}` (training/trainers.py): {TRAINER_RECIPES.get(trainer, "see training/trainers.py")}.
- **Command**: `{train_command or DEFAULT_TRAIN_COMMAND}` (resumable; details and measured curve in
  training/README.md).
- **Hardware**: {summary.get('hardware') or _hardware()}.

## Training per fold (nnU-Net pseudo Dice on sampled validation patches of the fold's validation cases; with partial
labels only the annotated labels count)
| fold | checkpoint | epochs | train minutes | mean pseudo Dice (last epoch) | per label ({' / '.join(labels)}) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

Curve (iterations = epochs x 100; minutes are each fold's cumulative epoch wall time on the training machine):

{curve_markdown(curves, every=5)}

## {AB_TITLE}
<!-- ab:begin -->
{AB_PLACEHOLDER}
<!-- ab:end -->

## {POSTPROCESSING_TITLE}
<!-- postprocessing:begin -->
{POSTPROCESSING_PLACEHOLDER}
<!-- postprocessing:end -->

## Held-out evaluation ({notes['heldout_short']}; Dice and HD95 per OAR, with and without the T1 channel)
{heldout}

## Limits
- {notes['limits']}, and nothing at all for the {len(missing)} OARs it does not cover.
- Not for clinical use.
"""
    card.write_text(text)
    return card


def fill_section(out: Path, name: str, markdown: str) -> None:
    """Replace the section between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->`` of ``out/README.md``.

    Raises:
        ValueError: if the card lacks the markers.
    """
    card = out / "README.md"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = card.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{card} has no {name} markers")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    card.write_text(f"{head}{begin}\n{markdown.strip()}\n{end}{tail}")


def ensure_section(out: Path, name: str, title: str, placeholder: str,
                   before: str = "## Held-out evaluation") -> None:
    """Add the section ``## {title}`` with ``name`` markers and ``placeholder`` to ``out/README.md`` if the card
    predates it (before the ``before`` heading, else at the end); a card that has it is left as it is."""
    card = out / "README.md"
    text = card.read_text()
    if f"<!-- {name}:begin -->" in text:
        return
    section = f"## {title}\n<!-- {name}:begin -->\n{placeholder}\n<!-- {name}:end -->\n\n"
    text = text.replace(before, section + before, 1) if before in text else text + "\n" + section
    card.write_text(text)


def fill_heldout(out: Path, markdown: str) -> None:
    """Replace the held-out section of ``out/README.md`` with ``markdown``."""
    fill_section(out, "heldout", markdown)


AB_SECTION = "ab"
AB_TITLE = "A/B: each recipe change against its control (cross-validation, same fold, same iterations)"
AB_PLACEHOLDER = "Not measured for this model (`python -m training.ab_table` fills it)."
POSTPROCESSING_SECTION = "postprocessing"
POSTPROCESSING_TITLE = "Post-processing (largest connected component per OAR; dataset.json `largest_component`)"
POSTPROCESSING_PLACEHOLDER = ("Not determined: `python -m training.determine_postprocessing --model weights --write` "
                              "decides it on cross-validation cases.")
