"""Run ``process.main`` inside the test process: the real command line (argument parsing, case discovery,
error handling, exit codes) without starting a new interpreter, for tests that end before or soon after
inference. Signal handlers and the environment are restored afterwards."""

from __future__ import annotations

import functools
import logging
import os
import runpy
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest


@functools.cache
def _process_main():  # noqa: ANN202
    """process.main, loaded from the file (the command line is the top of the stack: nothing imports it as a
    module, test/test_layout.py)."""
    return runpy.run_path(str(Path(__file__).resolve().parents[1] / "process.py"), run_name="process_inprocess")["main"]


@dataclass(frozen=True)
class Result:
    returncode: int
    stderr: str
    """The ``error:`` lines printed on stderr followed by the log records."""


def run_main(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, *args: str | Path,
             env: dict[str, str] | None = None) -> Result:
    main = _process_main()
    saved_env = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    os.environ.update(env or {})
    capsys.readouterr()
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO):
            code = main([*map(str, args), "--no-progress"])
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    return Result(code, caplog.text + "\n".join(errors))
