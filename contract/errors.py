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


EXIT_OK, EXIT_UNEXPECTED, EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL = 0, 1, 2, 3, 4
"""The command lines' exit codes (README "Exit codes and error messages"): 1 is a bug, 2-4 the error classes above."""

UserError = InputError | OutputError | ModelFolderError
"""The project's user-facing errors: one ``error:`` line on stderr and an exit code of their own."""

_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (InputError, EXIT_INPUT), (OutputError, EXIT_OUTPUT), (ModelFolderError, EXIT_MODEL))


def exit_code(err: UserError) -> int:
    """The exit code of a user-facing error: 2 input, 3 output, 4 model folder."""
    for cls, code in _EXIT_CODES:
        if isinstance(err, cls):
            return code
    raise TypeError(f"not a user-facing error: {type(err).__name__}")


def error_line(err: UserError, *, name_model_folder: bool = False) -> str:
    """The one stderr line of a user-facing error: ``error: <message>``; with ``name_model_folder`` a
    :class:`ModelFolderError` reads ``error: model folder: <message>``."""
    prefix = "model folder: " if name_model_folder and isinstance(err, ModelFolderError) else ""
    return f"error: {prefix}{err}"
