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
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. Where it applies:

- inference: only while the network runs over the tiles (:func:`freed_memory_kept`, around the predictor's tile
  loop). Afterwards glibc's default policy is back and the free pages are handed back (``malloc_trim``) before the
  export. Process-wide, the policy also kept the freed CT-sized arrays of registration, resampling and export
  (hundreds of MB to GB each) in a fragmenting heap: a 1024 x 1024 x 300 CT then went past an 8 GB memory limit
  (killed in CI on 2026-12-03), so the scope is the tile loop, where the churn is (that CT's peak with the scope:
  4.28 GB, benchmarks/README.md "Large CT");
- training: process-wide (:func:`keep_freed_memory`, in the CPU trainers), where every step is the network's.

It is left alone where the user set any ``MALLOC_*`` variable (theirs wins: ``MALLOC_MMAP_MAX_=65536``, glibc's
default, restores the default policy) and under another C library (musl, macOS: nothing to do). Its cost: within
the scope freed blocks stay mapped and are reused (measured: the sample's peak RSS grows, see benchmarks/README.md),
and :func:`release_freed_memory` hands the free pages back (``test/test_cpu_heap.py`` checks that the RSS drops).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
"""``mallopt`` parameter numbers (glibc ``malloc.h``)."""

TRIM_THRESHOLD_BYTES = 2**31 - 1
"""Freed memory at the heap's top kept mapped up to this many bytes (``mallopt`` takes an ``int``)."""

DEFAULT_MMAP_MAX = 65536
DEFAULT_TRIM_THRESHOLD_BYTES = 128 * 1024
"""glibc's defaults (``malloc.c``: ``DEFAULT_MMAP_MAX``, ``DEFAULT_TRIM_THRESHOLD``), restored when a scope ends.
glibc's dynamic mmap threshold stays off once ``mallopt`` has been called: blocks larger than the threshold reached
so far (at most 32 MiB) are mmap'd again, as before the scope."""

_process_wide = False
"""Whether :func:`keep_freed_memory` applied the policy to the whole process (then a scope leaves it on)."""


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
    """Apply the heap policy of this module to the whole running process (the CPU trainers) unless the
    environment says otherwise.

    Args:
        environ: the environment (default ``os.environ``): any ``MALLOC_*`` variable leaves the allocator as
            glibc set it up from that environment.

    Returns:
        Whether the policy was applied, and why not where it was not.
    """
    global _process_wide
    choice = _apply(environ)
    _process_wide = _process_wide or choice.applied
    return choice


@contextlib.contextmanager
def freed_memory_kept(environ: Mapping[str, str] | None = None) -> Iterator[HeapChoice]:
    """The heap policy for the duration of a ``with`` block (the tile loop of CPU inference), then glibc's default
    policy again and the free pages handed back (:func:`release_freed_memory`), on success and on error alike.

    Where the policy is already on for the whole process (:func:`keep_freed_memory` was called) it stays on.
    ``environ``: as in :func:`keep_freed_memory` (any ``MALLOC_*`` variable: nothing is changed).

    Yields:
        What was applied, for the log.
    """
    if _process_wide:
        yield HeapChoice(True, "")
        return
    choice = _apply(environ)
    try:
        yield choice
    finally:
        libc = _glibc()
        if choice.applied and libc is not None:
            _set_policy(libc, DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD_BYTES)
            release_freed_memory()


def _apply(environ: Mapping[str, str] | None) -> HeapChoice:
    """The policy's ``mallopt`` calls unless a ``MALLOC_*`` variable is set or the C library is not glibc."""
    env = os.environ if environ is None else environ
    user_set = sorted(name for name in env if name.startswith("MALLOC_"))
    if user_set:
        return HeapChoice(False, f"{', '.join(user_set)} set in the environment")
    libc = _glibc()
    if libc is None:
        return HeapChoice(False, "not glibc")
    ok = _set_policy(libc, 0, TRIM_THRESHOLD_BYTES)
    return HeapChoice(ok, "" if ok else "mallopt refused")


def _set_policy(libc: ctypes.CDLL, mmap_max: int, trim_threshold: int) -> bool:
    """Both ``mallopt`` calls; True if glibc took both."""
    return libc.mallopt(M_MMAP_MAX, mmap_max) == 1 and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1


def release_freed_memory() -> bool:
    """Give the free pages of every heap back to the system (glibc ``malloc_trim(0)``: the heap's top and the whole
    free pages inside it); call between cases. Returns whether anything was released (False under another C
    library)."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))
