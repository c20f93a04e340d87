"""The heap policy (model/cpu_heap.py): applied on glibc, large freed blocks then stay mapped (no page faults on
reuse); within a scope (the predictor's tile loop) only, glibc's default policy back after it; left alone where the
user set a ``MALLOC_*`` variable. Each allocator check runs in a fresh interpreter,
so that this test process's allocator stays as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.cpu_heap import _glibc, keep_freed_memory

REPO = Path(__file__).resolve().parents[1]

# A 3-D convolution's forward and backward passes a few times (tensors of a few to tens of MB, the shipped network's
# pattern at a smaller size): the minor page faults of the passes after the first, and the RSS before and after
# release_freed_memory.
WORKLOAD = """
import json, resource, sys
import torch
from model.cpu_heap import freed_memory_kept, keep_freed_memory, release_freed_memory
torch.set_num_threads(1)
net = torch.nn.Sequential(torch.nn.Conv3d(2, 16, 3, padding=1), torch.nn.LeakyReLU(), torch.nn.Conv3d(16, 8, 1))
x = torch.randn(1, 2, 40, 64, 64)
def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
def step():
    net.zero_grad()
    net(x).square().mean().backward()
def faults_of_passes():
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
result = {}
def kept_after_free_mb():
    # a 512 MB block (larger than any hole the passes left in the heap), written, then freed: how much stays resident
    start = rss_mb()
    block = torch.ones(2**27)
    del block
    return rss_mb() - start
if sys.argv[1] == "scope":
    with freed_memory_kept() as choice:
        result["applied"] = choice.applied
        result["faults"] = faults_of_passes()
        result["rss"] = rss_mb()
        result["kept_in_scope"] = kept_after_free_mb()
    result["rss_after_scope"] = rss_mb()
    result["kept_after_scope"] = kept_after_free_mb()
else:
    result["applied"] = keep_freed_memory().applied if sys.argv[1] == "policy" else None
    result["faults"] = faults_of_passes()
    result["rss"] = rss_mb()
    result["released"] = release_freed_memory()
    result["rss_released"] = rss_mb()
print(json.dumps(result))
"""

needs_glibc = pytest.mark.skipif(_glibc() is None, reason="the heap policy is glibc's mallopt; this C library has none")


def _workload(arm: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", WORKLOAD, arm], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@needs_glibc
def test_policy_stops_the_page_fault_churn_and_release_gives_the_memory_back() -> None:
    default, policy = _workload("default"), _workload("policy")
    assert policy["applied"] is True
    # glibc's default maps and unmaps the large blocks afresh in every pass: measured ~3x the faults
    assert policy["faults"] * 2 < default["faults"], (policy, default)
    # between cases the freed blocks go back to the system: the RSS drops by at least one freed activation
    assert policy["released"] is True
    assert policy["rss_released"] < policy["rss"] - 5, policy


@needs_glibc
def test_a_scope_keeps_freed_memory_inside_only_and_gives_it_back() -> None:
    default, scope = _workload("default"), _workload("scope")
    assert scope["applied"] is True
    assert scope["faults"] * 2 < default["faults"], (scope, default)
    # inside the scope a freed 512 MB block stays resident; the scope's end hands the free pages back, and after it
    # glibc's default is back: the same block goes back to the system when freed
    assert scope["kept_in_scope"] > 400, scope
    assert scope["rss_after_scope"] < scope["rss"] + scope["kept_in_scope"] - 400, scope
    assert scope["kept_after_scope"] < 50, scope


def test_a_malloc_variable_of_the_user_wins() -> None:
    choice = keep_freed_memory({"MALLOC_ARENA_MAX": "2", "PATH": "/usr/bin"})
    assert not choice.applied
    assert "MALLOC_ARENA_MAX" in choice.describe()


@needs_glibc
def test_applied_without_malloc_variables() -> None:
    # mallopt on this (test) process: harmless, the policy only changes where freed memory lives
    choice = keep_freed_memory({"PATH": "/usr/bin"})
    assert choice.applied, choice.describe()
    assert "kept in the heap" in choice.describe()
