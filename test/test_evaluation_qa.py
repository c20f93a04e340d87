"""QA pictures: real PNG files opened and checked for size, overlay colours, physical aspect and orientation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from contract.errors import OutputError
from contract.labels import HANSEG_LABELS, HANSEG_OAR_NAMES
from devkit.data import SHARED_SKIP_REASON, openkbp_cases_dir
from evaluation.qa import LABEL_COLOURS, OAR_COLOURS, PANEL_PX, panel_origin, qa_image_size, write_qa
from test.test_evaluation_support import synthetic_ct

REPO = Path(__file__).resolve().parents[1]
OPENKBP = openkbp_cases_dir()

SPACING = (0.7, 0.7, 3.0)  # x, y, z mm: strongly anisotropic
SHAPE_ZYX = (30, 100, 100)
CUBE = (slice(10, 20), slice(28, 71), slice(28, 71))  # 10 x 3.0 = 30 mm, 43 x 0.7 = 30.1 mm


def volume(array: np.ndarray, direction=None, origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def labels_array() -> np.ndarray:
    lab = np.zeros(SHAPE_ZYX, np.uint8)
    lab[CUBE] = HANSEG_LABELS["Brainstem"]
    # Parotids left and right of the cube, symmetric: index x grows towards the patient's left (LPS, identity).
    lab[12:18, 40:60, 80:92] = HANSEG_LABELS["Parotid_L"]
    lab[12:18, 40:60, 8:20] = HANSEG_LABELS["Parotid_R"]
    return lab


def panel(png: np.ndarray, view: int, row: int = 0) -> np.ndarray:
    x0, y0 = panel_origin(view, row)
    return png[y0: y0 + PANEL_PX, x0: x0 + PANEL_PX]


def load_png(path: Path) -> np.ndarray:
    """(height, width, 3) uint8 pixels of a PNG, file closed."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


def colour_mask(pixels: np.ndarray, name: str) -> np.ndarray:
    return np.all(pixels == np.asarray(OAR_COLOURS[name], np.uint8), axis=-1)


@pytest.fixture
def case() -> tuple[sitk.Image, sitk.Image]:
    return volume(synthetic_ct(SHAPE_ZYX)), volume(labels_array())


def test_png_size_colours_and_volumes(case, tmp_path: Path) -> None:
    ct, labels = case
    paths = write_qa(ct, labels, tmp_path / "qa", "case_07")
    assert [p.name for p in paths] == ["case_07_qa.png", "case_07_volumes.json"]
    png = load_png(paths[0])
    assert png.shape[:2][::-1] == qa_image_size(has_mr=False)
    for view in range(3):
        pixels = panel(png, view)
        assert colour_mask(pixels, "Brainstem").sum() > 20, view
        assert (pixels.max(axis=-1) > 0).mean() > 0.1  # the CT is drawn
        for absent in ("Glottis", "Pituitary", "OpticChiasm"):
            assert colour_mask(pixels, absent).sum() == 0
    axial = panel(png, 0)
    assert colour_mask(axial, "Parotid_L").sum() > 10 and colour_mask(axial, "Parotid_R").sum() > 10
    data = json.loads(paths[1].read_text())
    voxel_ml = 0.7 * 0.7 * 3.0 / 1000
    assert data["volumes_ml"]["Brainstem"] == pytest.approx(43 * 43 * 10 * voxel_ml)
    assert data["volumes_ml"]["Parotid_L"] == pytest.approx(6 * 20 * 12 * voxel_ml)
    assert set(data["volumes_ml"]) == {"Brainstem", "Parotid_L", "Parotid_R"}
    assert len(data["absent"]) == 27 and data["unit"] == "ml"


@pytest.mark.parametrize("view", [0, 1, 2])
def test_physical_aspect_ratio_on_anisotropic_grid(case, tmp_path: Path, view: int) -> None:
    """A 30 mm cube on a 0.7 x 0.7 x 3.0 mm grid is drawn square in every view."""
    ct, labels = case
    png = load_png(write_qa(ct, labels, tmp_path, "c")[0])
    ys, xs = np.nonzero(colour_mask(panel(png, view), "Brainstem"))
    width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    assert width == pytest.approx(height, rel=0.06), (width, height)
    # Common scale: the largest extent (z, 90 mm) fills the panel, so 30 mm is about a third of it.
    assert width == pytest.approx(PANEL_PX * 30 / 90, rel=0.08)


def test_orientation_follows_the_direction_matrix(case, tmp_path: Path) -> None:
    """Patient left (LPS +x) is on the viewer's right in axial and coronal views, whatever the storage order."""
    ct, labels = case
    png = load_png(write_qa(ct, labels, tmp_path, "identity")[0])
    for view in (0, 1):
        pixels = panel(png, view)
        left_x = np.nonzero(colour_mask(pixels, "Parotid_L"))[1].mean()
        right_x = np.nonzero(colour_mask(pixels, "Parotid_R"))[1].mean()
        assert left_x > right_x
    # The same physical volume stored with the x axis reversed (direction -x) gives the same axial picture.
    flip_dir = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    origin = ((SHAPE_ZYX[2] - 1) * SPACING[0], 0.0, 0.0)
    ct_f = volume(sitk.GetArrayFromImage(ct)[:, :, ::-1].copy(), flip_dir, origin)
    lab_f = volume(labels_array()[:, :, ::-1].copy(), flip_dir, origin)
    png_f = load_png(write_qa(ct_f, lab_f, tmp_path, "flipped")[0])
    assert np.array_equal(panel(png_f, 0), panel(png, 0))
    assert np.array_equal(panel(png_f, 1), panel(png, 1))


def test_mr_row_on_the_ct_grid_and_far_away(case, tmp_path: Path) -> None:
    ct, labels = case
    mr = sitk.Cast(ct, sitk.sitkFloat32) + 1000.0
    png = load_png(write_qa(ct, labels, tmp_path, "mr", mr=mr)[0])
    assert png.shape[:2][::-1] == qa_image_size(has_mr=True)
    assert colour_mask(panel(png, 0, row=1), "Brainstem").sum() > 20
    far = sitk.Image(mr)
    far.SetOrigin((1000.0, 0.0, 0.0))  # an unregistered MR: no overlap, drawn as a note instead
    png = load_png(write_qa(ct, labels, tmp_path, "far", mr=far)[0])
    assert colour_mask(panel(png, 0, row=1), "Brainstem").sum() == 0


def test_empty_labels_and_bad_inputs(case, tmp_path: Path) -> None:
    ct, labels = case
    empty = volume(np.zeros(SHAPE_ZYX, np.uint8))
    png_path, json_path = write_qa(ct, empty, tmp_path, "empty")
    assert load_png(png_path).shape[:2][::-1] == qa_image_size(False)
    assert json.loads(json_path.read_text())["volumes_ml"] == {}
    shifted = sitk.Image(labels)
    shifted.SetOrigin((0.0, 0.0, 1.5))
    with pytest.raises(ValueError, match="not on the CT grid"):
        write_qa(ct, shifted, tmp_path, "x")
    bad = labels_array()
    bad[0, 0, 0] = 31
    with pytest.raises(ValueError, match="outside 0..30"):
        write_qa(ct, volume(bad), tmp_path, "x")


def test_colour_table_is_complete_and_distinct() -> None:
    assert list(OAR_COLOURS) == list(HANSEG_OAR_NAMES)
    assert len(set(OAR_COLOURS.values())) == len(HANSEG_OAR_NAMES)
    for name, value in HANSEG_LABELS.items():
        assert tuple(LABEL_COLOURS[value]) == OAR_COLOURS[name]


@pytest.mark.skipif(not OPENKBP.is_dir(), reason=SHARED_SKIP_REASON)
def test_real_ct_picture(tmp_path: Path) -> None:
    case = sorted(p for p in OPENKBP.iterdir() if (p / "oar_labels.nii.gz").is_file())[0]
    ct = sitk.ReadImage(str(case / "ct.nii.gz"))
    raw = sitk.ReadImage(str(case / "oar_labels.nii.gz"))
    mapping = {1: "Brainstem", 2: "SpinalCord", 3: "Parotid_R", 4: "Parotid_L", 5: "Esophagus_S", 6: "Larynx_SG",
               7: "Bone_Mandible"}
    lut = np.zeros(256, np.uint8)
    for k, name in mapping.items():
        lut[k] = HANSEG_LABELS[name]
    labels = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(raw)])
    labels.CopyInformation(raw)
    png_path, json_path = write_qa(ct, labels, tmp_path, case.name)
    png = load_png(png_path)
    seen = {name for name in mapping.values() if any(colour_mask(panel(png, v), name).any() for v in range(3))}
    assert len(seen) >= 4, seen
    assert set(json.loads(json_path.read_text())["volumes_ml"]) == set(mapping.values())


def test_unwritable_output_folder_is_an_output_error(case, tmp_path: Path) -> None:
    ct, labels = case
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write QA output"):
        write_qa(ct, labels, blocker / "qa", "x")
