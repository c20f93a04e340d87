"""``--shard I/N``: split a cohort over N independent runs (Slurm job arrays, Kubernetes indexed jobs).

Case ``c`` belongs to shard ``int(sha256(c)[:8 bytes]) mod N``: a hash of the case id alone, so the split does not
depend on the order in which the cases are listed, on the machine, or on Python's per-process string hashing, and
N runs with I = 0 .. N-1 cover every case exactly once. I is 0-based, as ``$SLURM_ARRAY_TASK_ID`` (for
``--array=0-(N-1)``) and ``$JOB_COMPLETION_INDEX`` are.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_SHARD_PATTERN = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"--shard {self.index}/{self.count}: need 0 <= I < N")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, case_id: str) -> bool:
        """True if ``case_id`` belongs to this shard."""
        return shard_of(case_id, self.count) == self.index


def parse_shard(text: str) -> Shard:
    """``"I/N"`` as a :class:`Shard`. Raises ValueError naming the option on anything else."""
    match = _SHARD_PATTERN.match(text)
    if not match:
        raise ValueError(f"--shard {text!r}: expected I/N with whole numbers, e.g. 0/4")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_of(case_id: str, count: int) -> int:
    """The shard (0 .. count-1) that ``case_id`` belongs to."""
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def select_shard(items: Iterable[T], shard: Shard | None, case_id: Callable[[T], str]) -> list[T]:
    """The items whose ``case_id(item)`` belongs to ``shard``, in their given order (all when ``shard`` is None)."""
    return [item for item in items if shard is None or shard.holds(case_id(item))]

