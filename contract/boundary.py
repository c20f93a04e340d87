"""The input root is a boundary: every file the algorithm reads lies inside it, and is a regular file.

Checked after following symlinks (``Path.resolve``): the image files found in the input folders, the data files
that detached headers point to (MetaImage ``ElementDataFile``, NRRD ``data file:``), and the folders named by
``inputs.json``. A FIFO, device or socket is refused before it is opened (reading one would block forever).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from contract.errors import InputError

HEADER_SCAN_BYTES = 64 * 1024
"""How much of an image file is scanned for a detached-data reference (headers are a few hundred bytes)."""

_METAIMAGE_DATA_KEY = "elementdatafile"
_NRRD_DATA_KEYS = ("data file", "datafile")


def resolve_inside(path: Path, root: Path, role: str) -> Path:
    """``path`` with symlinks followed, if that lies inside ``root`` (also resolved).

    Raises:
        InputError: naming ``path`` if it resolves outside ``root`` (or cannot be resolved).
    """
    try:
        real = path.resolve(strict=True)
        real_root = root.resolve(strict=True)
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop on older Pythons
        raise InputError(path, f"cannot resolve the {role} path ({getattr(err, 'strerror', None) or err})") from None
    if real != real_root and real_root not in real.parents:
        raise InputError(path, f"{role} resolves to {real}, outside the input folder {real_root}; refused")
    return real


def check_regular_file(path: Path, role: str) -> None:
    """Refuse anything but a regular file (after symlinks): FIFOs, sockets, devices, folders."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise InputError(path, f"cannot open {role} ({err.strerror or err})") from None
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise InputError(path, f"{role} is {kind}; only regular files are read")


def check_input_file(path: Path, root: Path, role: str) -> Path:
    """An input image file: inside ``root``, regular, and every detached data file it names likewise.

    Returns:
        ``path`` unchanged (the reader opens the path the user gave; the check is on where it leads).
    """
    resolve_inside(path, root, role)
    check_regular_file(path, role)
    for data_file in detached_data_files(path):
        resolve_inside(data_file, root, f"{role} data file")
        check_regular_file(data_file, f"{role} data file")
    return path


def _header_lines(path: Path) -> list[str]:
    """The text lines at the start of ``path`` (binary pixel data after them is ignored)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_SCAN_BYTES)
    except OSError as err:
        raise InputError(path, f"cannot read header ({err.strerror or err})") from None
    return head.decode("latin-1").splitlines()


def detached_data_files(path: Path) -> list[Path]:
    """Files a MetaImage (``.mha``/``.mhd``) or NRRD (``.nrrd``/``.nhdr``) header says hold its pixels.

    Relative names are taken from the header's folder, as ITK does. A file list (``LIST``) or a numbered
    pattern (``%d``) is refused: the reader would open files that cannot be checked one by one here.

    Raises:
        InputError: naming ``path`` for a list or pattern of data files.
    """
    name = path.name.lower()
    if name.endswith((".mha", ".mhd")):
        values = [line.split("=", 1)[1].strip() for line in _header_lines(path)
                  if "=" in line and line.split("=", 1)[0].strip().lower() == _METAIMAGE_DATA_KEY]
        local = {"local", ""}
    elif name.endswith((".nrrd", ".nhdr")):
        values = []
        for line in _header_lines(path):
            if not line.strip():
                break  # the blank line ends a NRRD header
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() in _NRRD_DATA_KEYS:
                values.append(value.lstrip("=").strip())
        local = set()
    else:
        return []
    files = []
    for value in values:
        if value.lower() in local:
            continue
        if value.upper().startswith("LIST") or "%" in value or len(value.split()) > 1:
            raise InputError(path, f"header names a list or pattern of data files ({value[:80]!r}); only one "
                                   "data file beside the header, or pixels inside the file, are read")
        data = Path(value)
        files.append(data if data.is_absolute() else path.parent / data)
    return files
