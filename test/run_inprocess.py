"""Run ``process.main`` inside the test process: the real command line (argument parsing, case discovery,
error handling, exit codes) without starting a new interpreter, for tests that end before or soon after
inference. Signal handlers and the environment are restored afterwards."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Result:
    returncode: int
    stderr: str
    """The ``error:`` lines printed on stderr followed by the log records."""


def run_main(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture, *args: str | Path,
             env: dict[str, str] | None = None) -> Result:
    import process

    saved_env = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    os.environ.update(env or {})
    capsys.readouterr()
    caplog.clear()
    try:
        with caplog.at_level(logging.INFO):
            code = process.main([*map(str, args), "--no-progress"])
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    return Result(code, caplog.text + "\n".join(errors))
