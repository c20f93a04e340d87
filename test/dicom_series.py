"""Test DICOM series made from the shared OpenKBP CTs (and head MRs) with SimpleITK's series writer.

This is deliberately NOT the project's own writer (``dicom_io.ct_writer``): it follows SimpleITK's documented
"DicomSeriesFromArray" recipe directly (extract slice k, tag it, ``ImageFileWriter`` with
``KeepOriginalImageUID``), so a bug in our writer cannot hide the same bug in our reader. ITK's GDCM writer
stores ``value - RescaleIntercept`` when a RescaleIntercept tag is set, so a non-zero intercept really changes the
stored pixel values. Variants: any patient orientation (the image's direction matrix; must be a proper rotation,
det +1, as DICOM's slice normal is row x column), files and InstanceNumbers in reversed slice order, a rescale
intercept, a gantry tilt (slice positions sheared along the column direction, GantryDetectorTilt set), and
dropped slices.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from dicom_io.ct_writer import preserved_locale

SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}


def coronal(ct: sitk.Image) -> sitk.Image:
    """The same voxels stored as coronal slices (x, z, -y), exactly (no interpolation): a non-axial series."""
    permuted = sitk.PermuteAxes(ct, [0, 2, 1])
    return sitk.Flip(permuted, [False, False, True])


def write_series(image: sitk.Image, folder: Path, *, modality: str = "CT", description: str = "CT",
                 intercept: float = 0.0, reverse_order: bool = False, tilt_deg: float = 0.0,
                 drop: Iterable[int] = (), study_uid: str | None = None, frame_uid: str | None = None,
                 patient_id: str = "OPENKBP-TEST") -> list[Path]:
    """Write ``image`` (HU for CT) as a single-frame DICOM series in ``folder``; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.linalg.det(direction) > 0, "DICOM needs a right-handed (row, column, normal) frame"
    values = sitk.GetArrayFromImage(image)
    pixels = sitk.GetImageFromArray(np.rint(values).astype(np.int16))
    pixels.CopyInformation(image)
    spacing = image.GetSpacing()
    today = dt.date.today().strftime("%Y%m%d")
    tags = {
        "0008|0016": SOP_CLASSES[modality], "0008|0060": modality, "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|0020": today, "0008|0030": "120000", "0008|0050": "ACC1", "0008|0090": "Test^Referrer",
        "0008|0070": "SimpleITK test writer", "0008|103e": description, "0008|1030": "OpenKBP head and neck",
        "0010|0010": "OpenKBP^Test", "0010|0020": patient_id, "0010|0030": "19700101", "0010|0040": "O",
        "0020|000d": study_uid or generate_uid(), "0020|000e": generate_uid(), "0020|0052": frame_uid or generate_uid(),
        "0020|0010": "1", "0020|0011": "3", "0020|1040": "",
        "0020|0037": "\\".join(f"{v:.10g}" for v in np.concatenate([direction[:, 0], direction[:, 1]])),
        "0028|0030": f"{spacing[1]:.10g}\\{spacing[0]:.10g}", "0018|0050": f"{spacing[2]:.10g}",
        "0028|1052": f"{intercept:g}", "0028|1053": "1", "0028|1054": "HU" if modality == "CT" else "US",
        "0018|0060": "120", "0020|0012": "1", "0018|5100": "HFS", "0020|0060": "",
    }
    if modality == "MR":
        for tag in ("0028|1054", "0018|0060"):
            tags.pop(tag)
    if tilt_deg:
        tags["0018|1120"] = f"{tilt_deg:g}"
    n = image.GetSize()[2]
    shear = math.tan(math.radians(tilt_deg)) * spacing[2]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    dropped = set(drop)
    paths: list[Path] = []
    with preserved_locale():  # GDCM's writer would leave LC_CTYPE at "C" (ASCII text I/O for later tests)
        for k in range(n):
            if k not in dropped:
                paths.append(_write_slice(pixels, image, folder, tags, writer, k, n - k if reverse_order else k + 1,
                                          shear * direction[:, 1]))
    return paths


def _write_slice(pixels: sitk.Image, image: sitk.Image, folder: Path, tags: dict[str, str],
                 writer: sitk.ImageFileWriter, k: int, number: int, shift: np.ndarray) -> Path:
    plane = pixels[:, :, k]
    for tag, value in tags.items():
        plane.SetMetaData(tag, value)
    position = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k))) + k * shift
    plane.SetMetaData("0020|0032", "\\".join(f"{v:.10g}" for v in position))
    plane.SetMetaData("0020|0013", str(number))
    plane.SetMetaData("0008|0018", generate_uid())
    path = folder / f"IM{number:04d}.dcm"
    writer.SetFileName(str(path))
    writer.Execute(plane)
    return path


def require_tool(name: str) -> str:
    """Path of an installed command-line tool; fails (not skips) when missing, so a missing install shows."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").is_file() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run ./setup.sh --test (apt packages dicom3tools, plastimatch, orthanc)")
    return path


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines of dicom3tools' ``dciodvfy`` on one file (an empty list = valid)."""
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def plastimatch_masks(rtstruct: Path, ct_folder: Path, out: Path) -> dict[str, sitk.Image]:
    """Rasterise an RTSTRUCT with plastimatch (an independent reader) on its CT series: ROI name -> mask."""
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([require_tool("plastimatch"), "convert", "--input", str(rtstruct), "--referenced-ct",
                    str(ct_folder), "--output-prefix", str(out), "--prefix-format", "nrrd"],
                   check=True, capture_output=True, timeout=300)
    return {p.stem: sitk.ReadImage(str(p)) for p in sorted(out.glob("*.nrrd"))}


class OrthancServer:
    """A real Orthanc (Debian package) on a loopback port with a temporary config and storage folder; REST only.

    Started by :meth:`start`, stopped by :meth:`stop` (the process this object started, by its id).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> OrthancServer:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "hanseg-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.port, "HttpServerEnabled": True, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomServerEnabled": False, "Plugins": [], "LuaScripts": [],
            "OrthancExplorerEnabled": False, "WebDavEnabled": False, "HttpCompressionEnabled": False,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen([require_tool("Orthanc"), str(self.folder / "orthanc.json")],
                                        stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)

    def get(self, route: str) -> object:
        with urllib.request.urlopen(self.url + route, timeout=30) as response:
            return json.loads(response.read())

    def download(self, route: str, path: Path) -> Path:
        with urllib.request.urlopen(self.url + route, timeout=120) as response:
            path.write_bytes(response.read())
        return path

    def upload(self, path: Path) -> dict:
        request = urllib.request.Request(self.url + "/instances", data=path.read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROCESS = Path(__file__).resolve().parents[1] / "process.py"
EXIT_INPUT = 2


def run_process(*args: str | Path) -> tuple[int, list[str]]:
    """``process.py`` with ``args`` in a fresh interpreter: its exit code and its ``error:`` lines on stderr."""
    result = subprocess.run([sys.executable, str(PROCESS), *map(str, args), "--no-progress"], capture_output=True,
                            text=True, timeout=3000)
    return result.returncode, [line for line in result.stderr.splitlines() if line.startswith("error:")]
