"""Command line: ``python -m evaluation --pred DIR --gt DIR --out DIR`` and ``python -m evaluation compare ...``.

Exit status 0 on success, 1 on bad input or unwritable output (one-line message on stderr), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from contract.errors import InputError, OutputError
from evaluation.metrics import DEFAULT_TOLERANCE_MM

log = logging.getLogger("evaluation")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM, metavar="MM",
                        help="surface-Dice tolerance in mm (default %(default)s)")
    parser.add_argument("--allow-missing", action="store_true",
                        help="score only the cases that have a prediction instead of failing")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level of the comparison")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def _evaluate_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation",
        description="Score HaN-Seg OAR label maps against ground truth: DSC, HD95 (mm), surface Dice, per case and "
        "per OAR. 'python -m evaluation compare --help' for the paired comparison of two prediction sets.",
    )
    parser.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps, one per case")
    parser.add_argument("--gt", type=Path, required=True,
                        help="ground truth: HaN-Seg case folders (case_XX/case_XX_OAR_<Name>.seg.nrrd) or label maps")
    parser.add_argument("--out", type=Path, required=True, help="output folder for the tables")
    parser.add_argument("--compare", type=Path, metavar="DIR2",
                        help="second prediction folder: evaluated into OUT/compare_B/, paired Wilcoxon tests "
                        "of --pred (A) against it (B) written to OUT/comparison.*")
    parser.add_argument("--qa", action="store_true", help="also write QA pictures and volumes into OUT/qa/")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="where to find the CTs for --qa when the ground truth has none (label-map layout)")
    _common(parser)
    return parser


def _compare_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation compare",
        description="Paired per-OAR Wilcoxon signed-rank tests (DSC, HD95) of prediction set A against B. A and B "
        "are prediction folders (evaluated against --gt into OUT/A and OUT/B) or output folders of an earlier "
        "evaluation (holding metrics_per_case.json).",
    )
    parser.add_argument("--a", type=Path, required=True, help="prediction folder or evaluation output folder A")
    parser.add_argument("--b", type=Path, required=True, help="prediction folder or evaluation output folder B")
    parser.add_argument("--gt", type=Path, help="ground truth (needed when A or B is a prediction folder)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--name-a", help="name of A in the table (default: its folder name)")
    parser.add_argument("--name-b", help="name of B in the table (default: its folder name)")
    _common(parser)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _rows_for(source: Path, gt: Path | None, out: Path, args: argparse.Namespace) -> list:
    from evaluation.evaluate import evaluate_folder, load_rows

    results = source / "metrics_per_case.json"
    if results.is_file():
        log.info("reading earlier results %s", results)
        return load_rows(results)
    if gt is None:
        raise InputError(source, "holds no metrics_per_case.json; give --gt to evaluate it as a prediction folder")
    evaluation = evaluate_folder(source, gt, out, tolerance_mm=args.tolerance, allow_missing=args.allow_missing)
    return [r for c in evaluation.cases for r in c.oars]


def _run_compare(a: Path, b: Path, gt: Path | None, out: Path, out_a: Path, out_b: Path, name_a: str, name_b: str,
                 args: argparse.Namespace) -> None:
    from evaluation.compare import compare_rows, format_comparison, write_comparison

    if not 0 < args.alpha < 1:
        raise InputError(None, f"--alpha must be between 0 and 1, got {args.alpha}")
    rows_a = _rows_for(a, gt, out_a, args)
    rows_b = _rows_for(b, gt, out_b, args)
    tests = compare_rows(rows_a, rows_b, args.alpha)
    if not tests:
        raise InputError(None, f"{a} and {b} have no (case, OAR) pair scored in both; nothing to compare")
    write_comparison(tests, out, name_a, name_b, args.alpha, {"A": str(a), "B": str(b)})
    print(format_comparison(tests, name_a, name_b, args.alpha))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    compare_mode = bool(argv) and argv[0] == "compare"
    args = (_compare_parser() if compare_mode else _evaluate_parser()).parse_args(argv[1:] if compare_mode else argv)
    _setup_logging(args)
    try:
        if compare_mode:
            name_a = args.name_a or args.a.name or "A"
            name_b = args.name_b or args.b.name or "B"
            if name_a == name_b:
                name_a, name_b = f"A ({name_a})", f"B ({name_b})"
            _run_compare(args.a, args.b, args.gt, args.out, args.out / "A", args.out / "B", name_a, name_b, args)
        else:
            from evaluation.evaluate import evaluate_folder, format_table

            evaluation = evaluate_folder(
                args.pred, args.gt, args.out, tolerance_mm=args.tolerance, allow_missing=args.allow_missing,
                qa_dir=args.out / "qa" if args.qa else None, images_dir=args.images,
            )
            print(format_table(evaluation.summary, len(evaluation.cases), evaluation.tolerance_mm, evaluation.cases))
            if args.compare is not None:
                name_a, name_b = args.pred.name or "A", args.compare.name or "B"
                if name_a == name_b:
                    name_a, name_b = f"A ({name_a})", f"B ({name_b})"
                print()
                _run_compare(args.out, args.compare, args.gt, args.out, args.out, args.out / "compare_B",
                             name_a, name_b, args)
    except (InputError, OutputError) as err:
        print(f"evaluation: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
