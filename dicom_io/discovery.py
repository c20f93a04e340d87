"""Finding the CT and T1 MR series of a DICOM study: a folder (any depth) or a .zip of DICOM files.

Files are grouped by SeriesInstanceUID. The CT is the one Modality=CT image series (localizers and series of fewer
than 3 slices left out), or the one named by ``--ct-series``; several CT series without a choice are refused,
because picking one (contrast / non-contrast, another reconstruction) silently would segment an image nobody
chose. The MR is the one Modality=MR series, or among several the one whose description says T1, or the one named
by ``--mr-series``; otherwise there is none and the case runs from the CT alone (with a warning).

Only files inside the input are read: symbolic links are not followed, and .zip members are extracted into a
private temporary folder after their names and sizes are checked.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from contract.errors import InputError
from dicom_io.geometry import SliceGeometry, check_series

log = logging.getLogger(__name__)

MAX_ZIP_BYTES = 8 * 1024**3
"""Largest total uncompressed size of a .zip input (a HaN-Seg CT + MR is well under 1 GB)."""

MAX_ZIP_MEMBERS = 100_000
"""Most files in a .zip input."""

NON_DICOM_SUFFIXES = frozenset({".txt", ".json", ".xml", ".md", ".html", ".pdf", ".png", ".jpg", ".jpeg",
                                ".csv", ".ini", ".log", ".exe", ".inf", ".bat", ".sh"})
"""File types skipped without being opened (viewer programs and reports that PACS exports carry)."""

IMAGE_STORAGE_PREFIX = "1.2.840.10008.5.1.4.1.1."
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
T1_PATTERN = re.compile(r"(?<![a-z0-9])t1(?![0-9])", re.IGNORECASE)
"""'T1', 'T1w', 't1_mprage', 'AX T1 FS' but not 'T10' or 'ST1'."""


@dataclass
class DicomSeries:
    """The files of one series (SeriesInstanceUID), their headers, and once checked, their geometry.

    ``paths`` and ``headers`` are in slice order (ascending along the slice normal) after :meth:`check`.
    """

    uid: str
    modality: str
    description: str
    paths: list[Path] = field(default_factory=list)
    headers: list[Dataset] = field(default_factory=list)
    geometry: SliceGeometry | None = None

    @property
    def label(self) -> str:
        """How messages name the series: ``series <UID> ("<description>", CT, 120 files in <folder>)``."""
        folder = os.path.commonpath([str(p.parent) for p in self.paths]) if self.paths else "?"
        description = f'"{self.description}"' if self.description else "no description"
        return f"series {self.uid} ({description}, {self.modality}, {len(self.paths)} files in {folder})"

    @property
    def is_localizer(self) -> bool:
        image_type = [str(v).upper() for v in getattr(self.headers[0], "ImageType", [])] if self.headers else []
        return "LOCALIZER" in image_type or len(self.paths) < 3

    def check(self) -> SliceGeometry:
        """Check the series (:func:`dicom_io.geometry.check_series`) and sort its files into slice order."""
        if self.geometry is None:
            geometry = check_series(self.label, self.paths, self.headers)
            self.paths = [self.paths[i] for i in geometry.order]
            self.headers = [self.headers[i] for i in geometry.order]
            self.geometry = geometry
        return self.geometry


@dataclass(frozen=True)
class DicomStudy:
    """The series chosen for one case."""

    case_id: str
    ct: DicomSeries
    mr: DicomSeries | None


def is_dicom_file(path: Path) -> bool:
    """True if ``path`` has the DICOM Part 10 preamble (``DICM`` at byte 128) or a ``.dcm`` name."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_input(path: Path) -> bool:
    """True if ``path`` is a .zip, or a folder without the platform layout (``images/``) that holds DICOM files."""
    if path.is_file():
        return path.suffix.lower() == ".zip"
    if not path.is_dir() or (path / "images").is_dir():
        return False
    return any(True for _ in dicom_files(path, limit=1))


def dicom_files(root: Path, limit: int | None = None) -> Iterator[Path]:
    """DICOM candidates under ``root`` (any depth, sorted; hidden entries and symbolic links skipped)."""
    found = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(folder, d)))
        for name in sorted(files):
            path = Path(folder) / name
            if name.startswith(".") or path.is_symlink() or path.suffix.lower() in NON_DICOM_SUFFIXES:
                continue
            if is_dicom_file(path):
                yield path
                found += 1
                if limit is not None and found >= limit:
                    return


@contextmanager
def opened_input(path: Path) -> Iterator[Path]:
    """The folder to scan: ``path`` itself, or a .zip extracted into a temporary folder (removed afterwards).

    Raises:
        InputError: naming the .zip if it is unreadable, too large, or has a member outside its root.
    """
    if path.is_dir():
        yield path
        return
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise InputError(path, f"cannot open the .zip ({err})") from None
    with archive, tempfile.TemporaryDirectory(prefix="hanseg-dicom-") as tmp:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > MAX_ZIP_MEMBERS or sum(m.file_size for m in members) > MAX_ZIP_BYTES:
            raise InputError(path, f".zip holds {len(members)} files of "
                             f"{sum(m.file_size for m in members) / 1e9:.1f} GB; the limits are {MAX_ZIP_MEMBERS} "
                             f"files and {MAX_ZIP_BYTES / 1e9:.0f} GB")
        root = Path(tmp).resolve()
        for member in members:
            target = (root / member.filename).resolve()
            if root not in target.parents:
                raise InputError(path, f"member {member.filename!r} would be extracted outside the archive root")
        try:
            archive.extractall(root, members)
        except (OSError, zipfile.BadZipFile, RuntimeError) as err:
            raise InputError(path, f"cannot extract the .zip ({err})") from None
        yield root


def scan_series(root: Path, shown_as: Path | None = None) -> dict[str, DicomSeries]:
    """Every image series under ``root``, keyed by SeriesInstanceUID (headers read without pixel data).

    Args:
        root: folder to scan.
        shown_as: what messages call ``root`` (the .zip a temporary folder was extracted from).

    Raises:
        InputError: naming the file, for a DICOM file that cannot be parsed or lacks the series / instance UIDs.
    """
    series: dict[str, DicomSeries] = {}
    n_files = 0
    for path in dicom_files(root):
        shown = (shown_as / path.relative_to(root)) if shown_as is not None else path
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as err:
            first_sentence = str(err).split(". ")[0][:120]
            raise InputError(shown, f"corrupt or unreadable DICOM file ({type(err).__name__}: "
                             f"{first_sentence})") from None
        sop_class = str(getattr(ds, "SOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            continue
        uid, sop = str(getattr(ds, "SeriesInstanceUID", "")), str(getattr(ds, "SOPInstanceUID", ""))
        if not uid or not sop:
            raise InputError(shown, "corrupt DICOM file: no SeriesInstanceUID / SOPInstanceUID")
        if not sop_class.startswith(IMAGE_STORAGE_PREFIX) or "PixelRepresentation" not in ds:
            log.debug("%s: not an image (SOP class %s), skipped", shown, sop_class)
            continue
        entry = series.setdefault(uid, DicomSeries(uid, str(getattr(ds, "Modality", "")),
                                                   str(getattr(ds, "SeriesDescription", "") or "")))
        entry.paths.append(path)
        entry.headers.append(ds)
        n_files += 1
    log.info("%s: %d DICOM image files in %d series", shown_as or root, n_files, len(series))
    return series


def choose_series(series: dict[str, DicomSeries], where: Path, ct_uid: str | None = None,
                  mr_uid: str | None = None, case_id: str | None = None) -> DicomStudy:
    """The CT and (optional) T1 MR of one case, checked (:meth:`DicomSeries.check`).

    Raises:
        InputError: naming ``where`` when there is no CT series, several without ``ct_uid``, or a requested UID
            is not there; naming the series when it fails its checks.
    """
    for requested, option in ((ct_uid, "--ct-series"), (mr_uid, "--mr-series")):
        if requested is not None and requested not in series:
            raise InputError(where, f"{option} {requested}: no such image series here (found: "
                             f"{_listing(series.values())})")
    if ct_uid is not None:
        ct = series[ct_uid]
        if ct.modality != "CT":
            raise InputError(where, f"--ct-series {ct_uid}: {ct.label} is not a CT")
    else:
        cts = [s for s in series.values() if s.modality == "CT" and not s.is_localizer]
        if not cts:
            raise InputError(where, f"no CT series found (found: {_listing(series.values()) or 'no image series'})")
        if len(cts) > 1:
            raise InputError(where, f"{len(cts)} CT series: {_listing(cts)}; choose one with --ct-series UID")
        ct = cts[0]
    ct.check()
    mr = _choose_mr(series, mr_uid)
    if mr is not None:
        mr.check()
    return DicomStudy(case_id=case_id or where.stem, ct=ct, mr=mr)


def _choose_mr(series: dict[str, DicomSeries], mr_uid: str | None) -> DicomSeries | None:
    if mr_uid is not None:
        mr = series[mr_uid]
        if mr.modality != "MR":
            raise InputError(None, f"--mr-series {mr_uid}: {mr.label} is not an MR")
        return mr
    mrs = [s for s in series.values() if s.modality == "MR" and not s.is_localizer]
    if len(mrs) == 1:
        return mrs[0]
    t1 = [s for s in mrs if T1_PATTERN.search(s.description)]
    if len(t1) == 1:
        log.info("MR: %s (the one of %d MR series described as T1)", t1[0].label, len(mrs))
        return t1[0]
    if mrs:
        log.warning("%d MR series and %s described as T1 (%s): predicting from the CT alone; choose one with "
                    "--mr-series UID", len(mrs), len(t1) or "none", _listing(mrs))
    else:
        log.warning("no MR series: predicting from the CT alone")
    return None


def _listing(series: object) -> str:
    return "; ".join(s.label for s in series)  # type: ignore[attr-defined]
