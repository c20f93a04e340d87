"""User-facing errors: one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with a case's input files that the user must fix.

    ``str(err)`` is the one-line message shown on stderr: ``<path>: <problem>``.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class OutputError(Exception):
    """The output could not be written (permissions, full disk, ...). Nothing partial is left behind."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelFolderError(Exception):
    """The model folder is missing, incomplete or not in nnU-Net v2's results format."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
