"""The user-facing errors' exit codes and stderr lines (contract.errors), shared by process.py and the tools."""

from __future__ import annotations

import pytest

from contract.errors import (
    EXIT_INPUT,
    EXIT_MODEL,
    EXIT_OUTPUT,
    InputError,
    ModelFolderError,
    OutputError,
    error_line,
    exit_code,
)


@pytest.mark.parametrize(("err", "code"), [
    (InputError("ct.mha", "bad"), EXIT_INPUT),
    (OutputError("out", "full"), EXIT_OUTPUT),
    (ModelFolderError("weights", "missing"), EXIT_MODEL),
])
def test_each_error_class_has_its_exit_code(err: Exception, code: int) -> None:
    assert exit_code(err) == code
    assert (EXIT_INPUT, EXIT_OUTPUT, EXIT_MODEL) == (2, 3, 4)


def test_error_line_names_the_model_folder_only_when_asked() -> None:
    err = ModelFolderError("weights", "model folder does not exist")
    assert error_line(err) == "error: weights: model folder does not exist"
    assert error_line(err, name_model_folder=True) == "error: model folder: weights: model folder does not exist"
    assert error_line(InputError(None, "bad flag"), name_model_folder=True) == "error: bad flag"


def test_other_exceptions_have_no_exit_code() -> None:
    with pytest.raises(TypeError):
        exit_code(ValueError("x"))  # type: ignore[arg-type]
