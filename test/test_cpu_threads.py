"""The default thread count: usable cores (affinity, cgroup quota) minus the cores other processes keep busy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.cpu_threads import (
    affinity_cores,
    busy_between,
    busy_cores,
    cgroup_quota_cores,
    cpu_times,
    default_threads,
    usable_cores,
)

SPIN = "while True:\n    pass\n"


def _spinner(cpu: int) -> subprocess.Popen:
    """A CPU-bound process pinned to ``cpu`` (a real competitor, as on a shared clinic server)."""
    proc = subprocess.Popen([sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\n{SPIN}"])
    time.sleep(0.5)  # let it start spinning
    return proc


@pytest.fixture
def two_cores():
    cores = affinity_cores()
    if len(cores) < 2:
        pytest.skip(f"needs 2 usable cores, this process has {len(cores)}")
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, set(cores[:2]))
    yield cores[:2]
    os.sched_setaffinity(0, before)


def test_cgroup_quota_is_read_in_cores(tmp_path: Path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert cgroup_quota_cores(cpu_max) == 1.5
    cpu_max.write_text("max 100000\n")
    assert cgroup_quota_cores(cpu_max) is None
    assert cgroup_quota_cores(tmp_path / "missing") is None
    cpu_max.write_text("garbage\n")
    assert cgroup_quota_cores(cpu_max) is None


def test_a_quota_caps_the_threads_and_skips_the_load_measurement(tmp_path: Path, two_cores):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("100000 100000\n")  # docker --cpus 1
    choice = default_threads(cpu_max=cpu_max)
    assert (choice.threads, choice.usable, choice.busy) == (1, 1, None)
    cpu_max.write_text("500000 100000\n")  # a quota above the affinity set: the affinity set counts
    assert usable_cores(cpu_max) == 2


def test_busy_between_counts_cores_worth_of_busy_time():
    before = {0: (100, 1000), 1: (500, 1000)}
    after = {0: (200, 1100), 1: (500, 1100)}  # cpu 0 fully busy, cpu 1 idle
    assert busy_between(before, after) == pytest.approx(1.0)
    assert busy_between(before, {0: (150, 1100), 1: (550, 1100)}) == pytest.approx(1.0)  # two half-busy CPUs


def test_proc_stat_is_parsed_per_cpu(tmp_path: Path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  9 9 9 9 9 9 9 9 0 0\ncpu0 10 1 5 80 4 0 0 0 0 0\ncpu1 1 1 1 1 1 1 1 1 0 0\nintr 5\n")
    assert cpu_times({0}, stat) == {0: (16, 100)}
    assert busy_cores([0], 0.0, tmp_path / "missing") is None


def test_a_spinning_process_is_measured_as_one_busy_core(two_cores):
    spinner = _spinner(two_cores[0])
    try:
        busy = busy_cores([two_cores[0]], window_s=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.8


def test_the_default_leaves_the_core_another_process_is_busy_on(two_cores, tmp_path: Path):
    """Two usable cores, one of them spinning for another process: one thread (whatever else runs on the second
    core, usable - busy rounds to at most 1)."""
    spinner = _spinner(two_cores[0])
    try:
        choice = default_threads(window_s=0.5, cpu_max=tmp_path / "no-quota")
    finally:
        spinner.kill()
        spinner.wait()
    assert choice.usable == 2 and choice.busy is not None and choice.busy >= 0.8
    assert choice.threads == 1, choice.describe()
