"""Keep freed tensor memory in the process heap (glibc), so CPU inference and training stop re-faulting it.

Why: a 3-D activation of the shipped network is tens of MB (32 x 80 x 96 x 96 float32 = 94 MB per tile). glibc's
``malloc`` serves blocks that large with a fresh ``mmap`` and returns them with ``munmap`` on ``free``, so every
layer of every tile asks the kernel for new zeroed pages and page-faults them in again: measured here, a quarter of
the CPU time of a 3-D training run was kernel time (``stime`` 1,317 s against ``utime`` 3,982 s). Serving those
blocks from the heap and not trimming it keeps the pages mapped from one tile to the next; the freed blocks are
reused for the next tile's tensors of the same sizes. ``benchmarks/cpu_heap.py`` measures the effect on the sample
run (wall, CPU user / system time, peak RSS) side by side.

The policy is two ``mallopt`` calls (``M_MMAP_MAX`` = 0: no ``mmap`` for large blocks; ``M_TRIM_THRESHOLD`` = 2 GiB:
keep freed memory up to that much at the heap's top), the same as the environment variables
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. It is applied once per process at start-up, where the
torch threads are set (``cohort.case_files.apply_threads``, the CPU trainers). It is left alone where the user
set any ``MALLOC_*`` variable (theirs wins: ``MALLOC_MMAP_MAX_=65536``, glibc's default, restores the default
policy) and under another C library (musl, macOS: nothing to do). Its cost: freed memory is not given back to the
system before the process ends: within a case the freed blocks are reused (measured: the sample's peak RSS 1.02 GB
-> 1.26-1.63 GB, varying with how the blocks fragment), and :func:`release_freed_memory` hands the free pages
back between cases (``malloc_trim``; ``test/test_cpu_heap.py`` checks that the RSS drops), so freed memory does
not carry from one case of a cohort to the next (a long cohort's RSS is not measured yet).
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
"""``mallopt`` parameter numbers (glibc ``malloc.h``)."""

TRIM_THRESHOLD_BYTES = 2**31 - 1
"""Freed memory at the heap's top kept mapped up to this many bytes (``mallopt`` takes an ``int``)."""


@dataclass(frozen=True)
class HeapChoice:
    """What :func:`keep_freed_memory` did, for the log."""

    applied: bool
    reason: str

    def describe(self) -> str:
        return ("freed tensor memory kept in the heap (glibc mallopt: no mmap for large blocks, no trimming)"
                if self.applied else f"glibc's default allocation policy ({self.reason})")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """This process's C library if it is glibc (it has ``gnu_get_libc_version``), else None. Looked up once, in the
    symbols already loaded (``dlopen(NULL)``): no library search, and it is the allocator this process uses."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> HeapChoice:
    """Apply the heap policy of this module to the running process unless the environment says otherwise.

    Args:
        environ: the environment (default ``os.environ``): any ``MALLOC_*`` variable leaves the allocator as
            glibc set it up from that environment.

    Returns:
        Whether the policy was applied, and why not where it was not.
    """
    env = os.environ if environ is None else environ
    user_set = sorted(name for name in env if name.startswith("MALLOC_"))
    if user_set:
        return HeapChoice(False, f"{', '.join(user_set)} set in the environment")
    libc = _glibc()
    if libc is None:
        return HeapChoice(False, "not glibc")
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    return HeapChoice(ok, "" if ok else "mallopt refused")


def release_freed_memory() -> bool:
    """Give the free pages of every heap back to the system (glibc ``malloc_trim(0)``: the heap's top and the whole
    free pages inside it); call between cases. Returns whether anything was released (False under another C
    library)."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
