"""The A/B table of recipe changes: per-OAR cross-validation Dice of each arm on the SAME cases, paired.

Each arm is a ``training.determine_postprocessing --report`` JSON of one model folder (each case predicted by the
fold that did not train on it, through ``process.py``; raw predictions, no largest-component step). The first arm
is the control; every other arm gets, per OAR, its mean Dice, the paired mean difference to the control over the
cases both scored, and how many of those cases improved / got worse. Only cross-validation cases of the training
split are used: the held-out validation-pats never are (they are for the model card's final table only).

    python -m training.ab_table --arm "CT + T1 (control)" 600 work_dirs/ab/cv_m2_f0.json \\
        --arm "2.5-D: + CT -5/-2.5/+2.5/+5 mm" 600 work_dirs/ab/cv_m25_f0.json [--folds 0] [--card weights] \\
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from contract.labels import HANSEG_LABELS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    """One recipe of the A/B: its name, training iterations per fold, and per-case scores
    (``{case: {oar: {"dice": ..., ...}}}``) on the folds of ``folds``."""

    name: str
    iterations: int
    folds: tuple[str, ...]
    per_case: dict[str, dict[str, dict[str, float]]]

    @classmethod
    def from_report(cls, name: str, iterations: int, path: Path) -> Arm:
        try:
            report = json.loads(Path(path).read_text())
            return cls(name, int(iterations), tuple(str(f) for f in report["folds"]), dict(report["per_case"]))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a training.determine_postprocessing report ({exc})") from None

    def on_folds(self, folds: Sequence[str], validation_cases: Mapping[str, Sequence[str]]) -> Arm:
        """This arm restricted to the validation cases of ``folds`` (``validation_cases``: fold -> its case ids),
        e.g. a model scored on folds 0 and 1 compared with a one-fold arm on fold 0's cases.

        Raises:
            ValueError: if the arm's report did not score one of ``folds``.
        """
        missing = [f for f in folds if f not in self.folds]
        if missing:
            raise ValueError(f"arm {self.name!r} was scored on folds {self.folds}, not on {missing}")
        keep = {c for f in folds for c in validation_cases[f]}
        return Arm(self.name, self.iterations, tuple(folds), {c: s for c, s in self.per_case.items() if c in keep})


def oar_names(arms: Sequence[Arm]) -> list[str]:
    """Every OAR any arm scored, in label order."""
    return sorted({o for a in arms for s in a.per_case.values() for o in s}, key=lambda n: HANSEG_LABELS[n])


def compare(control: Arm, other: Arm, oar: str) -> dict[str, Any]:
    """Paired comparison of ``other`` against ``control`` for one OAR over the cases both scored."""
    cases = sorted(c for c in control.per_case if oar in control.per_case[c] and oar in other.per_case.get(c, {}))
    a = np.array([control.per_case[c][oar]["dice"] for c in cases], dtype=float)
    b = np.array([other.per_case[c][oar]["dice"] for c in cases], dtype=float)
    diff = b - a
    return {"n": len(cases), "control": float(a.mean()) if cases else float("nan"),
            "dice": float(b.mean()) if cases else float("nan"),
            "delta": float(diff.mean()) if cases else float("nan"),
            "better": int((diff > 1e-9).sum()), "worse": int((diff < -1e-9).sum())}


def table(arms: Sequence[Arm]) -> dict[str, Any]:
    """Per arm and OAR the paired comparison with the first arm; the mean of the per-OAR means per arm."""
    if len(arms) < 2:
        raise ValueError("an A/B needs a control and at least one other arm")
    control = arms[0]
    for arm in arms[1:]:
        if arm.folds != control.folds:
            raise ValueError(f"arm {arm.name!r} was scored on folds {arm.folds}, the control on {control.folds}: "
                             "not the same cases")
    names = oar_names(arms)
    rows = {arm.name: {oar: compare(control, arm, oar) for oar in names} for arm in arms}
    means = {arm.name: float(np.mean([rows[arm.name][o]["dice"] for o in names])) for arm in arms}
    return {"folds": list(control.folds), "oars": names, "rows": rows, "mean_of_oar_means": means,
            "iterations": {a.name: a.iterations for a in arms}}


def markdown(result: dict[str, Any]) -> str:
    names, rows = result["oars"], result["rows"]
    arms = list(rows)
    control = arms[0]
    n_cases = {o: rows[control][o]["n"] for o in names}
    lines = [f"Cross-validation cases of fold(s) {', '.join(result['folds'])} (never trained on by the fold that "
             "predicts them; held-out validation-pats not used), through `process.py` (CT only, the model's "
             "test-time augmentation), raw predictions; per OAR the mean Dice over the cases that annotate it "
             f"(n: {', '.join(f'{o} {n_cases[o]}' for o in names)}). Each arm below the first: paired "
             "difference to the first arm on the same cases, and cases better / worse.", "",
             "| change | iterations per fold | " + " | ".join(names) + " | mean of per-OAR means |",
             "|---|---|" + "---|" * len(names) + "---|"]
    for arm in arms:
        cells = []
        for o in names:
            r = rows[arm][o]
            cells.append(f"{r['dice']:.3f}" if arm == control else
                         f"{r['dice']:.3f} ({r['delta']:+.3f}; {r['better']}/{r['worse']})")
        mean = result["mean_of_oar_means"][arm]
        delta = "" if arm == control else f" ({mean - result['mean_of_oar_means'][control]:+.3f})"
        lines.append(f"| {arm} | {result['iterations'][arm]} | " + " | ".join(cells) + f" | {mean:.3f}{delta} |")
    return "\n".join(lines)


def fold_validation_cases(folds: Sequence[str]) -> dict[str, list[str]]:
    """Fold -> its validation case ids in nnU-Net's default split of the shared OpenKBP train-pats (the split
    ``training.determine_postprocessing`` scores)."""
    from training.convert_openkbp import default_sources
    from training.determine_postprocessing import crossval_validation_cases, openkbp_training_cases

    ids = sorted(openkbp_training_cases(default_sources()))
    return {f: crossval_validation_cases(ids, int(f)) for f in folds}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", nargs=3, action="append", required=True, metavar=("NAME", "ITERATIONS", "REPORT"),
                        help="an arm: its name, training iterations per fold, determine_postprocessing --report JSON "
                             "(the first arm is the control)")
    parser.add_argument("--folds", nargs="+", help="compare on these folds' validation cases only (nnU-Net's "
                        "split of the shared train-pats); default: the folds every report scored")
    parser.add_argument("--card", type=Path, help="model folder whose README.md A/B section gets the table")
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        arms = [Arm.from_report(name, int(it), Path(path)) for name, it, path in args.arm]
        if args.folds:
            validation = fold_validation_cases(args.folds)
            arms = [arm.on_folds(args.folds, validation) for arm in arms]
        result = table(arms)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.card:
        from training.model_card import AB_PLACEHOLDER, AB_SECTION, AB_TITLE, ensure_section, fill_section

        ensure_section(args.card, AB_SECTION, AB_TITLE, AB_PLACEHOLDER, before="## Post-processing")
        fill_section(args.card, AB_SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
