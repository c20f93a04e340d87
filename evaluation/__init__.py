"""Evaluation of HaN-Seg organ-at-risk label maps: DSC, HD95, surface Dice, paired Wilcoxon comparison, QA pictures.

Kept import-light on purpose (``process.py`` imports :mod:`evaluation.qa` at run time): import the submodules
you need, e.g. ``from evaluation.qa import write_qa`` or ``from evaluation.metrics import compute_oar_metrics``.

Command line: ``python -m evaluation --help`` (see ``evaluation/README.md``).
"""
