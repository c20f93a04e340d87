"""Quality-control picture of one case: CT (and MR) slices with the OAR contours, plus OAR volumes in ml.

``write_qa`` draws axial, coronal and sagittal slices through the centroid of all labelled voxels (the image centre
when there are none), with every OAR outlined in its fixed colour (:data:`OAR_COLOURS`, one per HaN-Seg label) over
a light fill, a legend of all 30 labels with their volumes, orientation letters and a 50 mm scale bar.

- Region shown: all labels plus a 30 mm margin (the body, CT above -500 HU, when there are no labels).
- Aspect: slices are resampled to square display pixels, so the physical aspect ratio is right on anisotropic grids;
  all panels share one mm-per-pixel scale.
- Display convention (radiological): axial seen from the feet (patient right on the left, anterior up), coronal from
  the front (patient right on the left, superior up), sagittal from the patient's left (anterior on the left,
  superior up). The axes are found from the direction matrix, so any axis-aligned orientation displays the same way.
- MR: when given, shown in a second row, sampled onto the CT slices by its physical position (identity transform:
  pass an MR that is registered to, or already resampled onto, the CT).

Drawing uses Pillow only (no matplotlib): runtime dependencies are numpy, SimpleITK and Pillow.

Axis conventions: SimpleITK images are (x, y, z); numpy arrays from SimpleITK are (z, y, x); LPS physical space.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont

from contract.atomic import write_atomic
from contract.labels import HANSEG_LABELS, HANSEG_NAMES_BY_VALUE, HANSEG_OAR_NAMES, MAX_LABEL
from evaluation.geometry import geometry_difference

log = logging.getLogger(__name__)

OAR_COLOURS: dict[str, tuple[int, int, int]] = {
    "A_Carotid_L": (220, 20, 60),
    "A_Carotid_R": (255, 130, 150),
    "Arytenoid": (160, 82, 45),
    "Bone_Mandible": (245, 222, 179),
    "Brainstem": (65, 105, 225),
    "BuccalMucosa": (255, 182, 193),
    "Cavity_Oral": (148, 0, 211),
    "Cochlea_L": (0, 255, 255),
    "Cochlea_R": (150, 255, 255),
    "Cricopharyngeus": (128, 128, 0),
    "Esophagus_S": (210, 105, 30),
    "Eye_AL": (255, 215, 0),
    "Eye_AR": (255, 240, 140),
    "Eye_PL": (34, 139, 34),
    "Eye_PR": (124, 252, 0),
    "Glnd_Lacrimal_L": (255, 0, 255),
    "Glnd_Lacrimal_R": (255, 160, 255),
    "Glnd_Submand_L": (255, 140, 0),
    "Glnd_Submand_R": (255, 200, 120),
    "Glnd_Thyroid": (0, 128, 128),
    "Glottis": (255, 0, 0),
    "Larynx_SG": (0, 191, 255),
    "Lips": (250, 128, 114),
    "OpticChiasm": (173, 255, 47),
    "OpticNrv_L": (30, 144, 255),
    "OpticNrv_R": (135, 206, 250),
    "Parotid_L": (0, 250, 154),
    "Parotid_R": (152, 251, 152),
    "Pituitary": (255, 20, 147),
    "SpinalCord": (255, 255, 0),
}
"""The one colour (RGB) of each HaN-Seg OAR in QA pictures, keyed by the names of :mod:`contract.labels`.
Left/right pairs share a hue (left saturated, right lighter)."""

if set(OAR_COLOURS) != set(HANSEG_OAR_NAMES):  # pragma: no cover - guards edits of either table
    raise RuntimeError("OAR_COLOURS must have exactly one colour per HaN-Seg OAR name")

LABEL_COLOURS: np.ndarray = np.zeros((MAX_LABEL + 1, 3), dtype=np.uint8)
"""Colour lookup table indexed by label value (row 0, background, unused)."""
for _name, _value in HANSEG_LABELS.items():
    LABEL_COLOURS[_value] = OAR_COLOURS[_name]

CT_WINDOW_HU = (40.0, 400.0)
"""CT display window (level, width) in HU: soft tissue."""

BODY_THRESHOLD_HU = -500.0
"""Voxels above this (HU) count as body when choosing the displayed region of a case without labels."""

DISPLAY_MARGIN_MM = 30.0
"""Margin around the labels (or the body) in the displayed region, mm."""

PANEL_PX = 400
"""Each view is drawn in a PANEL_PX x PANEL_PX cell (letterboxed, physical aspect kept)."""
HEADER_PX = 28
CAPTION_PX = 20
MARGIN_PX = 6
LEGEND_WIDTH_PX = 250
LEGEND_LINE_PX = 17
FILL_ALPHA = 0.22
CONTOUR_RADIUS_PX = 1
SCALE_BAR_MM = 50.0

# (name, physical normal axis, physical row axis, row sign, physical column axis, column sign, edge letters
# top/bottom/left/right). Sign +1: moving down (rows) or right (columns) increases that LPS coordinate.
_VIEWS = (
    ("axial", 2, 1, +1, 0, +1, ("A", "P", "R", "L")),
    ("coronal", 1, 2, -1, 0, +1, ("S", "I", "R", "L")),
    ("sagittal", 0, 2, -1, 1, +1, ("S", "I", "A", "P")),
)
_AXIS_NAMES = "xyz"


def qa_image_size(has_mr: bool) -> tuple[int, int]:
    """(width, height) in pixels of the picture :func:`write_qa` draws (fixed layout)."""
    width = MARGIN_PX + 3 * (PANEL_PX + MARGIN_PX) + LEGEND_WIDTH_PX
    rows = 2 if has_mr else 1
    panels = rows * (PANEL_PX + CAPTION_PX + MARGIN_PX)
    legend = LEGEND_LINE_PX * (len(HANSEG_OAR_NAMES) + 2)
    return width, HEADER_PX + max(panels, legend) + MARGIN_PX


def panel_origin(view_index: int, row: int) -> tuple[int, int]:
    """Top-left pixel (x, y) of the cell of view ``view_index`` (0 axial, 1 coronal, 2 sagittal) in row ``row``."""
    return (
        MARGIN_PX + view_index * (PANEL_PX + MARGIN_PX),
        HEADER_PX + row * (PANEL_PX + CAPTION_PX + MARGIN_PX),
    )


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _axis_map(image: sitk.Image) -> tuple[list[int], list[int]]:
    """For each index axis (x, y, z): its nearest LPS physical axis and the sign along it."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    phys = [int(np.argmax(np.abs(direction[:, i]))) for i in range(3)]
    if sorted(phys) != [0, 1, 2]:
        log.warning("oblique direction matrix %s: QA views assume the index axes are x, y, z", direction.ravel())
        phys = [0, 1, 2]
    signs = [1 if direction[phys[i], i] >= 0 else -1 for i in range(3)]
    return phys, signs


def _centroid_and_box(
    ct: np.ndarray, labels: np.ndarray, spacing_xyz: Sequence[float]
) -> tuple[tuple[float, float, float] | None, list[tuple[int, int]]]:
    """Label centroid and display box of (z, y, x) arrays, computed slice by slice (no full-size temporaries).

    Returns:
        The centroid (x, y, z, index units) of the non-zero labels, or None if there are none; and the display box,
        ``[(start, stop)]`` per SimpleITK axis (x, y, z): the bounding box of all labels or, without labels, of the
        voxels above :data:`BODY_THRESHOLD_HU` (projections below 0.2 % of their peak ignored, so stray noise does
        not count), grown by :data:`DISPLAY_MARGIN_MM`; the whole image if nothing qualifies.
    """
    nz, ny, nx = labels.shape
    lab = [np.zeros(nz), np.zeros(ny), np.zeros(nx)]
    body = [np.zeros(nz), np.zeros(ny), np.zeros(nx)]
    for z in range(nz):
        fg = labels[z] != 0
        inside = (ct[z] > BODY_THRESHOLD_HU) | fg
        lab[0][z] = fg.sum()
        if lab[0][z]:
            lab[1] += fg.sum(axis=1)
            lab[2] += fg.sum(axis=0)
        body[0][z] = inside.sum()
        body[1] += inside.sum(axis=1)
        body[2] += inside.sum(axis=0)
    total = lab[0].sum()
    centre = None
    if total:
        cz, cy, cx = ((p * np.arange(p.size)).sum() / total for p in lab)
        centre = (float(cx), float(cy), float(cz))
    box: list[tuple[int, int]] = []
    for axis in range(3):  # SimpleITK axis x, y, z = projection 2, 1, 0
        counts, n = (lab if total else body)[2 - axis], (nx, ny, nz)[axis]
        keep = np.flatnonzero(counts > (0 if total else 0.002 * counts.max())) if counts.max() > 0 else []
        if len(keep) == 0:
            box.append((0, n))
            continue
        grow = int(math.ceil(DISPLAY_MARGIN_MM / float(spacing_xyz[axis])))
        box.append((max(0, int(keep[0]) - grow), min(n, int(keep[-1]) + 1 + grow)))
    return centre, box


def label_volumes_ml(labels: sitk.Image) -> dict[str, float]:
    """Volume in ml of every HaN-Seg label present in ``labels`` (name -> ml), in label order.

    Raises:
        ValueError: if the image holds values outside 0..30.
    """
    array = sitk.GetArrayViewFromImage(labels)
    counts = np.zeros(MAX_LABEL + 1, dtype=np.int64)
    for z in range(array.shape[0]):
        sl = array[z]
        if sl.min() < 0 or sl.max() > MAX_LABEL:
            bad = sorted({int(v) for v in np.unique(sl) if v < 0 or v > MAX_LABEL})
            raise ValueError(f"label map holds values outside 0..{MAX_LABEL}: {bad[:10]}")
        counts += np.bincount(sl.astype(np.int64).ravel(), minlength=MAX_LABEL + 1)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    return {HANSEG_NAMES_BY_VALUE[v]: float(counts[v] * voxel_ml) for v in range(1, MAX_LABEL + 1) if counts[v]}


def _oriented_slice(
    array: np.ndarray, index_axis_normal: int, k: int, phys: Sequence[int], signs: Sequence[int], view: tuple,
    box: Sequence[tuple[int, int]] | None = None,
) -> np.ndarray:
    """2-D slice of a (z, y, x) array at index ``k`` along SimpleITK axis ``index_axis_normal``, in display order.

    ``box`` (``(start, stop)`` per SimpleITK axis x, y, z) crops the in-plane axes first.
    """
    _, _, row_phys, row_sign, col_phys, col_sign, _ = view
    inv = {p: i for i, p in enumerate(phys)}
    np_normal = 2 - index_axis_normal
    sl = np.take(array, k, axis=np_normal)
    remaining = [ax for ax in (0, 1, 2) if ax != np_normal]
    if box is not None:
        (a0, a1), (b0, b1) = box[2 - remaining[0]], box[2 - remaining[1]]
        sl = sl[a0:a1, b0:b1]
    if remaining.index(2 - inv[row_phys]) == 1:
        sl = sl.T
    if signs[inv[row_phys]] * row_sign < 0:
        sl = sl[::-1, :]
    if signs[inv[col_phys]] * col_sign < 0:
        sl = sl[:, ::-1]
    return np.ascontiguousarray(sl)


def _window(values: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (values.astype(np.float32) - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _contours(labels: np.ndarray, radius: int = CONTOUR_RADIUS_PX) -> np.ndarray:
    """Pixels of non-zero labels that have a differently labelled pixel within ``radius`` (2-D, display grid)."""
    h, w = labels.shape
    padded = np.pad(labels, radius, mode="edge")
    edge = np.zeros(labels.shape, dtype=bool)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                edge |= padded[radius + dy: radius + dy + h, radius + dx: radius + dx + w] != labels
    return edge & (labels != 0)


def _render_panel(gray: np.ndarray, labels: np.ndarray | None, size_px: tuple[int, int]) -> Image.Image:
    """Resize a display-ordered grey slice (uint8) and its labels to ``size_px`` (w, h) and overlay the contours."""
    base = Image.fromarray(gray, mode="L").resize(size_px, Image.Resampling.BILINEAR)
    rgb = np.repeat(np.asarray(base, dtype=np.float32)[..., None], 3, axis=2)
    if labels is not None:
        lab = np.asarray(Image.fromarray(labels, mode="L").resize(size_px, Image.Resampling.NEAREST))
        inside = lab != 0
        colours = LABEL_COLOURS[lab].astype(np.float32)
        rgb[inside] = (1.0 - FILL_ALPHA) * rgb[inside] + FILL_ALPHA * colours[inside]
        edge = _contours(lab)
        rgb[edge] = colours[edge]
    return Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def _atomic_save(path: Path, write: Callable[[str], None]) -> None:
    """Call ``write(temporary_path)`` then rename the file to ``path`` (:func:`contract.atomic.write_atomic`)."""
    write_atomic(path, lambda tmp: write(str(tmp)), what="QA output")


def write_qa(
    ct: sitk.Image, labels: sitk.Image, out_dir: Path, case_id: str, mr: sitk.Image | None = None
) -> list[Path]:
    """Write ``<case_id>_qa.png`` (CT/MR slices with OAR contours) and ``<case_id>_volumes.json`` into ``out_dir``.

    Args:
        ct: the CT (HU), any axis-aligned orientation.
        labels: HaN-Seg label map (values 0..30) on the CT grid.
        out_dir: output folder (created if needed).
        case_id: used in the file names and the picture title.
        mr: optional MR in the CT's physical space (registered, or already on the CT grid); drawn as a second row,
            sampled onto the CT slices with linear interpolation (display only).

    Returns:
        ``[png_path, json_path]``.

    Raises:
        ValueError: if ``labels`` is not on the CT grid or holds values outside 0..30; ct/labels not 3-D.
        OutputError: if ``out_dir`` cannot be created or written (no partial file is left).
    """
    if ct.GetDimension() != 3 or labels.GetDimension() != 3:
        raise ValueError(f"CT and labels must be 3-D images, got {ct.GetDimension()}-D and {labels.GetDimension()}-D")
    difference = geometry_difference(labels, ct)
    if difference is not None:
        raise ValueError(f"{case_id}: the label map is not on the CT grid ({difference})")
    out_dir = Path(out_dir)
    volumes = label_volumes_ml(labels)

    ct_arr = sitk.GetArrayViewFromImage(ct)
    lab_arr = sitk.GetArrayViewFromImage(labels)
    size = np.asarray(ct.GetSize())
    spacing = np.asarray(ct.GetSpacing(), dtype=float)
    phys, signs = _axis_map(ct)
    inv = {p: i for i, p in enumerate(phys)}
    centre, box = _centroid_and_box(ct_arr, lab_arr, spacing)
    position = list(centre) if centre is not None else [(n - 1) / 2.0 for n in size]
    slice_index = [int(min(max(round(position[i]), 0), size[i] - 1)) for i in range(3)]
    extent_mm = np.asarray([(hi - lo) * spacing[i] for i, (lo, hi) in enumerate(box)])
    mm_per_px = float(extent_mm.max()) / PANEL_PX
    world = ct.TransformContinuousIndexToPhysicalPoint([float(v) for v in slice_index])

    font, small = _font(13), _font(12)
    width, height = qa_image_size(mr is not None)
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    title = (
        f"{case_id}   CT {tuple(int(s) for s in size)} voxels, spacing {tuple(round(float(s), 3) for s in spacing)} mm"
        f"   window L{CT_WINDOW_HU[0]:g}/W{CT_WINDOW_HU[1]:g}   {len(volumes)} OARs"
        + ("" if centre is not None else "   (no labels: image centre)")
    )
    draw.text((MARGIN_PX, 6), title, fill=(255, 255, 255), font=font)

    level, window_width = CT_WINDOW_HU
    mr_slices = _mr_slices(ct, mr, slice_index, box, phys, signs) if mr is not None else None
    mr_range = _robust_range(mr_slices) if mr_slices is not None else None
    for v, view in enumerate(_VIEWS):
        name, normal, row_phys, _, col_phys, _, letters = view
        n_axis = inv[normal]
        k = slice_index[n_axis]
        disp = (
            max(1, round(extent_mm[inv[col_phys]] / mm_per_px)), max(1, round(extent_mm[inv[row_phys]] / mm_per_px))
        )
        lab_slice = _oriented_slice(lab_arr, n_axis, k, phys, signs, view, box).astype(np.uint8)
        ct_slice = _window(_oriented_slice(ct_arr, n_axis, k, phys, signs, view, box),
                           level - window_width / 2, level + window_width / 2)
        rows = [(ct_slice, "CT")]
        if mr_slices is not None:
            rows.append((_window(mr_slices[v], *mr_range) if mr_range else None, "MR"))  # type: ignore[misc]
        for r, (gray, modality) in enumerate(rows):
            x0, y0 = panel_origin(v, r)
            ox, oy = x0 + (PANEL_PX - disp[0]) // 2, y0 + (PANEL_PX - disp[1]) // 2
            if gray is None:
                draw.text((x0 + 10, y0 + PANEL_PX // 2), "MR does not overlap this CT slice", fill=(200, 200, 200),
                          font=small)
            else:
                canvas.paste(_render_panel(gray, lab_slice, disp), (ox, oy))
                _orientation_letters(draw, (ox, oy, ox + disp[0], oy + disp[1]), letters, small)
            caption = (f"{modality} {name}  {_AXIS_NAMES[normal]} = {world[normal]:.1f} mm "
                       f"(index {_AXIS_NAMES[n_axis]} = {k})")
            draw.text((x0, y0 + PANEL_PX + 3), caption, fill=(220, 220, 220), font=small)
            if v == 0 and r == 0:
                bar = SCALE_BAR_MM / mm_per_px
                by = oy + disp[1] - 8
                draw.line([(ox + 8, by), (ox + 8 + bar, by)], fill=(255, 255, 255), width=2)
                draw.text((ox + 8, by - 14), f"{SCALE_BAR_MM:g} mm", fill=(255, 255, 255), font=small)
    _legend(draw, volumes, font, small)

    png_path = out_dir / f"{case_id}_qa.png"
    json_path = out_dir / f"{case_id}_volumes.json"
    _atomic_save(png_path, lambda tmp: canvas.save(tmp, format="PNG", optimize=True))
    record = {
        "case_id": case_id,
        "unit": "ml",
        "voxel_volume_ml": float(np.prod(spacing)) / 1000.0,
        "size_xyz": [int(s) for s in size],
        "spacing_xyz_mm": [float(s) for s in spacing],
        "volumes_ml": volumes,
        "absent": [n for n in HANSEG_OAR_NAMES if n not in volumes],
        "slice_index_xyz": slice_index,
        "picture": png_path.name,
    }

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    _atomic_save(json_path, write_json)
    log.info("wrote %s and %s", png_path, json_path)
    return [png_path, json_path]


def _mr_slices(
    ct: sitk.Image, mr: sitk.Image, slice_index: Sequence[int], box: Sequence[tuple[int, int]], phys: Sequence[int],
    signs: Sequence[int],
) -> list[np.ndarray]:
    """The MR sampled on the three displayed (cropped) CT slices (linear, identity transform, 0 outside)."""
    if mr.GetDimension() != 3 or mr.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("the MR must be a 3-D scalar image")
    inv = {p: i for i, p in enumerate(phys)}
    out = []
    for view in _VIEWS:
        n_axis = inv[view[1]]
        region = [slice(lo, hi) for lo, hi in box]
        region[n_axis] = slice(slice_index[n_axis], slice_index[n_axis] + 1)
        reference = ct[tuple(region)]
        sampled = sitk.Resample(mr, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        out.append(_oriented_slice(sitk.GetArrayFromImage(sampled), n_axis, 0, phys, signs, view))
    return out


def _robust_range(slices: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """1st-99th percentile of the non-zero MR values on the displayed slices, or None if all are zero."""
    values = np.concatenate([s[s != 0].ravel() for s in slices])
    if values.size == 0:
        return None
    low, high = np.percentile(values, [1.0, 99.0])
    return float(low), float(high if high > low else low + 1.0)


def _orientation_letters(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], letters: Sequence[str],
                         font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    x0, y0, x1, y1 = box
    top, bottom, left, right = letters
    colour = (255, 255, 120)
    draw.text(((x0 + x1) // 2 - 3, y0 + 2), top, fill=colour, font=font)
    draw.text(((x0 + x1) // 2 - 3, y1 - 14), bottom, fill=colour, font=font)
    draw.text((x0 + 3, (y0 + y1) // 2 - 6), left, fill=colour, font=font)
    draw.text((x1 - 10, (y0 + y1) // 2 - 6), right, fill=colour, font=font)


def _legend(draw: ImageDraw.ImageDraw, volumes: dict[str, float],
            font: ImageFont.ImageFont | ImageFont.FreeTypeFont, small: ImageFont.ImageFont | ImageFont.FreeTypeFont
            ) -> None:
    x0 = MARGIN_PX + 3 * (PANEL_PX + MARGIN_PX)
    y = HEADER_PX
    draw.text((x0, y), "label  OAR  volume (ml)", fill=(255, 255, 255), font=font)
    y += LEGEND_LINE_PX + 2
    for name in HANSEG_OAR_NAMES:
        value = HANSEG_LABELS[name]
        colour = OAR_COLOURS[name]
        present = name in volumes
        box = [x0, y + 2, x0 + 12, y + 14]
        if present:
            draw.rectangle(box, fill=colour)
            text = f"{value:2d} {name}  {volumes[name]:.1f}"
            text_colour = (235, 235, 235)
        else:
            draw.rectangle(box, outline=colour)
            text = f"{value:2d} {name}  -"
            text_colour = (120, 120, 120)
        draw.text((x0 + 18, y + 1), text, fill=text_colour, font=small)
        y += LEGEND_LINE_PX

