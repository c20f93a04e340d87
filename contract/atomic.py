"""The one atomic writer: a file at ``path`` is either complete or absent, never partial.

Every output (label maps, QA pictures and tables, run records, transforms, evaluation tables) goes through
:func:`write_atomic`: the writer fills a hidden temporary file in the same folder (same extension, so format-by-
extension writers such as SimpleITK work), the file is flushed to disk and renamed over ``path`` (atomic on POSIX
within one filesystem). On any failure the temporary file is removed.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from contract.errors import OutputError
from contract.output_state import PARTIAL_MARK, file_mode, partial_prefix

log = logging.getLogger(__name__)


def write_atomic(path: str | Path, write: Callable[[Path], object], what: str = "output") -> Path:
    """Call ``write(temporary_path)``, then rename the temporary file to ``path``.

    Args:
        path: the final file.
        write: writes the whole file to the path it is given (exceptions: ``OSError`` or SimpleITK's
            ``RuntimeError`` become :class:`OutputError`; anything else propagates, after the clean-up).
        what: names the output in messages ("output image", "QA output", ...).

    Raises:
        OutputError: ``cannot write <what>: ...`` naming the folder (cannot create it, not writable) or the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(path.parent, f"cannot write {what}: cannot create output folder "
                                       f"({err.strerror or err})") from None
    suffix = "".join(path.suffixes) or ""
    try:
        # the name is cut so that a long output name still leaves room for the temporary one (issue 13)
        fd, tmp_name = tempfile.mkstemp(prefix=partial_prefix(path.name), suffix=f"{PARTIAL_MARK}{suffix}",
                                        dir=path.parent)
    except OSError as err:
        raise OutputError(path.parent, f"cannot write {what}: output folder is not writable "
                                       f"({err.strerror or err})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())  # mkstemp's 0600 would hide the file from other users (issue 13)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (RuntimeError, OSError) as err:
        tmp.unlink(missing_ok=True)
        text = str(err).strip()
        message = text.splitlines()[-1] if text else type(err).__name__
        if isinstance(err, OSError) and err.strerror:
            message = err.strerror
        raise OutputError(path, f"cannot write {what} ({message[:200]})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
