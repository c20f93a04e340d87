"""benchmarks.monitor: the peak RSS of a process tree, when it was sampled, and what the process logged before it."""

from __future__ import annotations

import os
import sys

from benchmarks.monitor import run_monitored

CHILD = """
import logging, time
import numpy as np
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
log = logging.getLogger("child")
log.info("start")
time.sleep(0.3)
log.info("allocating 400 MB")
block = np.ones(400 * 2**20, np.uint8)
time.sleep(0.6)
del block
log.info("freed")
time.sleep(0.6)
"""


def test_peak_is_timed_and_named_by_the_log_line_before_it() -> None:
    run = run_monitored([sys.executable, "-c", CHILD], dict(os.environ))
    assert run.returncode == 0, run.stderr
    assert 0.39 <= run.peak_tree_gb < 1.5, run.peak_tree_gb  # numpy + interpreter + the 400 MB block
    assert 0.3 <= run.peak_at_s <= run.seconds
    assert run.log_line_before(run.peak_at_s).endswith("allocating 400 MB")
    assert run.log_line_before(run.seconds).endswith("freed")
    assert run.log_line_before(-1.0) == ""
