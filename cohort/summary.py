"""The end of a cohort run: counts, failures grouped by cause, one ``error:`` line per failed case, the exit code."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cohort.outcome import CaseOutcome

EXIT_OK = 0
EXIT_BY_KIND = {"model": 4, "unexpected": 1, "worker_died": 1, "output": 3, "input": 2}
"""The process exit code a failure kind leads to (README "Exit codes"); the most serious kind present wins, in
this order: a model folder that cannot serve, a bug or dead worker, an unwritable output, bad input."""
KIND_LABELS = {"input": "bad input", "output": "output not writable", "model": "bad model folder",
               "unexpected": "unexpected error (a bug)", "worker_died": "worker died"}

HINTS = {"unexpected": " (a bug: its traceback is in the log and in the manifest)"}


@dataclass
class CohortSummary:
    """What one run did. ``failed_before``: latest records of failed cases this run did not retry."""

    total: int
    finished_before: int = 0
    outcomes: list[CaseOutcome] = field(default_factory=list)
    failed_before: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    seconds: float = 0.0
    stopped: bool = False

    @property
    def written_now(self) -> int:
        return sum(o.ok for o in self.outcomes)

    def failures(self) -> list[tuple[str, str, str, str]]:
        """(case, kind, problem, message) of every case that ends this run failed."""
        rows = [(o.case_id, o.error.kind, o.error.problem, o.error.message + HINTS.get(o.error.kind, ""))
                for o in self.outcomes if not o.ok and o.error is not None]
        for case_id, record in self.failed_before.items():
            error = record.get("error") or {}
            rows.append((case_id, str(error.get("kind", "unexpected")), str(error.get("problem", "?")),
                         f"{error.get('message', '?')} (failed in an earlier run; --retry-failed retries it)"))
        return sorted(rows)

    def exit_code(self) -> int:
        kinds = {kind for _, kind, _, _ in self.failures()}
        for kind in EXIT_BY_KIND:
            if kind in kinds:
                return EXIT_BY_KIND[kind]
        return EXIT_OK

    def lines(self) -> list[str]:
        """The summary as printed on stderr; the ``error:`` lines come last."""
        failures = self.failures()
        rate = f" ({60 * len(self.outcomes) / self.seconds:.1f} cases/min)" if self.seconds > 0 and self.outcomes \
            else ""
        lines = [f"cohort: {self.total} cases: {self.written_now + self.finished_before} written "
                 f"({self.written_now} now, {self.finished_before} finished earlier), {len(failures)} failed; "
                 f"{len(self.outcomes)} run in {self.seconds:.1f} s{rate}"
                 + ("; STOPPED early" if self.stopped else "")]
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        for case_id, kind, problem, _ in failures:
            groups[(kind, problem)].append(case_id)
        if groups:
            lines.append("failed cases by cause:")
            for (kind, problem), case_ids in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
                shown = ", ".join(case_ids[:10]) + (f", ... ({len(case_ids) - 10} more)" if len(case_ids) > 10 else "")
                lines.append(f"  {len(case_ids):>5} x {KIND_LABELS.get(kind, kind)}: {problem}: {shown}")
        lines += [f"error: case {case_id}: {message}" for case_id, _, _, message in failures]
        return lines
