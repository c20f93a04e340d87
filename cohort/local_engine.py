"""The embedded engine: every case in this process, one after another, with the model loaded once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from cohort.job import RunnerSpec
from cohort.outcome import CaseOutcome, run_case_safely
from contract.inputs import CaseInputs

log = logging.getLogger(__name__)

OnOutcome = Callable[[CaseOutcome], bool]
"""Called with each case's outcome as it comes; returns False to stop starting new cases."""


class LocalEngine:
    """Runs the cases sequentially in the calling process."""

    name = "local"

    def __init__(self, runner: RunnerSpec) -> None:
        self.runner = runner

    def run(self, cases: Sequence[CaseInputs], output_root: Path, on_outcome: OnOutcome) -> None:
        """Build the case function (loads the model: raises ModelFolderError) and run every case."""
        if not cases:
            return
        segment = self.runner.build()
        for case in cases:
            if not on_outcome(run_case_safely(segment, case, output_root)):
                log.warning("stopping: no further cases are started")
                return
