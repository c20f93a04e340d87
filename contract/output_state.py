"""The output folder's state is deliberate: checked before inference, cleaned of what an interrupted run left.

- The output name must fit the file system (checked before the minutes of inference, not after).
- Temporary files of the atomic writer are ``.<name, cut to 100 chars>.<random>.partial<ext>``: short enough
  whatever the case name, and recognisable, so that those a SIGKILL left behind are removed at the next start
  (SIGTERM/SIGINT remove their own: see :func:`install_signal_handlers`).
- The platform output folder holds exactly one image: another image already there is an error (nothing of the
  user's is deleted); the output may not lie inside the input.
- Files get the normal permissions the umask gives (``mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import logging
import os
import signal
import types
from pathlib import Path

from contract.errors import OutputError

log = logging.getLogger(__name__)

PARTIAL_MARK = ".partial"
"""Temporary output files (contract.atomic) are hidden and carry this mark: ``.<name>.<random>.partial<ext>``."""
TEMP_NAME_CHARS = 100
"""At most this much of the output name goes into its temporary file's name."""


def partial_prefix(output_name: str) -> str:
    """The start of every temporary file's name written for the output file ``output_name``."""
    return f".{output_name[:TEMP_NAME_CHARS]}."
DEFAULT_NAME_MAX = 255


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: unwinds like KeyboardInterrupt so that every ``finally`` / cleanup runs."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


def _raise_interrupted(signum: int, _frame: types.FrameType | None) -> None:
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT raise :class:`Interrupted` (the writer then removes its temporary file)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _raise_interrupted)


def file_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def name_max(folder: Path) -> int:
    """Longest file name (bytes) the file system of ``folder`` (or its nearest existing parent) accepts."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return DEFAULT_NAME_MAX


def check_output_name(path: Path) -> None:
    """Refuse an output file name the file system cannot hold (before any work is done)."""
    length, limit = len(os.fsencode(path.name)), name_max(path.parent)
    if length > limit:
        raise OutputError(path, f"output file name is {length} bytes, the file system allows {limit}; shorten the "
                                "CT file name")


def remove_stale_partials(folder: Path, output_name: str | None = None) -> list[Path]:
    """Remove temporary files that an earlier, killed run left in ``folder``: those of the output ``output_name``,
    or every one (``None``: a folder this run alone writes, such as the platform's single-image output folder).

    In dataset mode only the case's own: other workers (Ray actors, shards) write other cases into the same folder
    at the same time, and their temporary files are live."""
    removed = []
    prefix = "." if output_name is None else partial_prefix(output_name)
    if folder.is_dir():
        for entry in folder.iterdir():
            if is_partial(entry) and entry.name.startswith(prefix) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry)
    if removed:
        log.warning("removed %d stale temporary file(s) of an interrupted run in %s", len(removed), folder)
    return removed


def is_partial(path: Path) -> bool:
    return path.name.startswith(".") and PARTIAL_MARK in path.name


def check_output_not_in_input(input_root: Path, output_root: Path) -> None:
    """Refuse an output root inside the input root (a rerun would read its own results as input)."""
    real_in = input_root.resolve()
    real_out = output_root.resolve()
    if real_out == real_in or real_in in real_out.parents:
        raise OutputError(output_root, f"output folder is inside the input folder {input_root}; choose another")


def check_single_image_folder(folder: Path, output_name: str) -> None:
    """The platform output folder may hold no image but ours (the contract is exactly one).

    Raises:
        OutputError: naming the folder and the other files.
    """
    if not folder.is_dir():
        return
    others = sorted(p.name for p in folder.iterdir() if p.name != output_name and not is_partial(p))
    if others:
        raise OutputError(folder, f"already holds {', '.join(others[:5])}; the output folder must hold exactly one "
                                  "image (empty it first)")
