"""The public in-memory API: ``segment(ct, mr, model) -> Result``, with a model loaded once and reused.

Example::

    import SimpleITK as sitk
    import hanseg

    model = hanseg.Model.load("weights", hanseg.Settings(device="cpu"))
    result = hanseg.segment(sitk.ReadImage("ct.nrrd"), sitk.ReadImage("t1.nrrd"), model)
    sitk.WriteImage(result.labels, "oars.mha")   # uint8, HaN-Seg values 0..30, on the CT's exact grid

No file is read or written here: images in, images out. The command line (``process.py``) reads and writes the
files around it. Images are SimpleITK (x, y, z; mm, LPS); arrays inside are numpy (z, y, x).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from contract.errors import InputError, ModelFolderError
from contract.imageio import validate_scan
from contract.labels import MAX_LABEL
from hanseg.settings import Settings
from preprocessing.channels import MrDecision, prepare_case_channels
from preprocessing.components import keep_largest_components
from preprocessing.head_neck_crop import crop_image, head_neck_box, uncrop_labels
from preprocessing.laterality import split_left_right
from preprocessing.orientation import labels_to_original_orientation, orientation_of, reorient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made a label map: folder name, trainer, configuration, folds and a SHA-256 of the weights
    (of ``plans.json``, ``dataset.json`` and every used fold's checkpoint file, in that order)."""

    name: str
    trainer: str
    configuration: str
    folds: tuple[str, ...]
    weights_sha256: str

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "trainer": self.trainer, "configuration": self.configuration,
                "folds": list(self.folds), "weights_sha256": self.weights_sha256}


class Model:
    """A model folder loaded once (plans, folds' weights, network on its device), reused for every case.

    Build with :meth:`load`. Loading changes no global state (torch threads are the caller's choice).
    """

    def __init__(self, predictor: Any, settings: Settings, identity: ModelIdentity) -> None:
        self.predictor = predictor
        self.settings = settings
        self.identity = identity

    @property
    def folder(self) -> Any:
        """The :class:`model.model_folder.ModelFolder`."""
        return self.predictor.model

    @property
    def device(self) -> str:
        return str(self.predictor.device)

    @classmethod
    def load(cls, model_dir: str | Path | None = None, settings: Settings | None = None) -> Model:
        """Load ``model_dir`` (default: ``settings.model_dir``) for ``settings`` (device, folds, mirroring, tile
        step, fast mode, time budget).

        Raises:
            ModelFolderError: the folder is missing or not a usable nnU-Net v2 model folder.
            ValueError: the device is not available (e.g. ``cuda`` without CUDA).
        """
        from model.device import select_device
        from model.model_folder import load_model_folder
        from model.predictor import Predictor, PredictorOptions

        settings = settings or Settings()
        path = Path(model_dir) if model_dir is not None else settings.model_dir
        folder = load_model_folder(path, list(settings.folds) if settings.folds else None,
                                   trust_model=settings.trust_model)
        predictor = Predictor(
            folder,
            select_device(settings.device),
            PredictorOptions(use_mirroring=settings.use_mirroring, tile_step=settings.tile_step,
                             progress=settings.progress, fast=settings.fast, time_budget=settings.time_budget),
        )
        return cls(predictor, settings, model_identity(folder))


def model_identity(folder: Any) -> ModelIdentity:
    """:class:`ModelIdentity` of a loaded model folder (hashes its files; ~0.1 s per 100 MB)."""
    digest = hashlib.sha256()
    files = [folder.path / "plans.json", folder.path / "dataset.json"]
    files += [fold.path for fold in folder.folds]  # each fold's checkpoint file
    for path in files:
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise ModelFolderError(path, f"cannot read ({err.strerror or err})") from None
    return ModelIdentity(name=folder.path.resolve().name, trainer=folder.trainer_name,
                         configuration=folder.configuration.name, folds=tuple(f.name for f in folder.folds),
                         weights_sha256=digest.hexdigest())


@dataclass
class Result:
    """One segmented case.

    Attributes:
        labels: ``uint8`` HaN-Seg label map (0..30) with the CT's exact size, spacing, origin and direction.
        record: the run record (:mod:`hanseg.record`): model identity, settings, MR decision, timings, volumes.
        mr: what happened to the MR (:class:`preprocessing.channels.MrDecision`, with the rigid CT->MR transform).
        oriented_ct, oriented_labels, mr_on_ct: the CT, labels and registered MR on the grid the model saw (the
            CT in the model's orientation), kept only with ``keep_model_grid=True`` (for QA pictures).
    """

    labels: sitk.Image
    record: dict[str, Any]
    mr: MrDecision
    oriented_ct: sitk.Image | None = None
    oriented_labels: sitk.Image | None = None
    mr_on_ct: sitk.Image | None = None
    timings: dict[str, float] = field(default_factory=dict)


def segment(ct: sitk.Image, mr: sitk.Image | None = None, model: Model | str | Path | None = None,
            settings: Settings | None = None, deadline: float | None = None, case_id: str = "case",
            mr_source: str = "T1 MR", keep_model_grid: bool = False, ct_source: str | None = None) -> Result:
    """Segment the organs at risk of one case, in memory.

    Args:
        ct: the planning CT (HU), any pixel type, any direction matrix.
        mr: the T1 MR, or None (predicted from the CT alone, as under the model's modality dropout).
        model: a :class:`Model` (load once, reuse), a model folder path, or None (``settings.model_dir``).
        settings: used to load the model when ``model`` is not a :class:`Model` (default :class:`Settings`); with
            a loaded model, its own settings apply (different ones raise ValueError rather than being ignored).
        deadline: ``time.monotonic()`` by which the case must be done (the time budget); None: the model's
            ``time_budget`` from now, if it has one.
        case_id: names the case in logs and in the record.
        mr_source: names the MR in messages (e.g. its file).
        ct_source: names the CT in messages (e.g. its file; None: in memory).
        keep_model_grid: also return the images on the model's grid (for QA).

    Raises:
        InputError: the CT is not a usable 3-D scan (path in the message: None).
        ModelFolderError: the model folder cannot be used.
    """
    from hanseg.record import build_record

    if not isinstance(model, Model):
        model = Model.load(model, settings)
    elif settings is not None and settings.inference_dict() != model.settings.inference_dict():
        raise ValueError("segment(): these settings differ from the loaded model's; pass them to Model.load")
    predictor = model.predictor
    timings: dict[str, float] = {}
    started = time.perf_counter()
    ct = validate_scan(ct, ct_source, "CT")
    check_model_grid(ct, ct_source, predictor.model)
    oriented = ct
    if model.settings.reorient:
        oriented = reorient(ct, predictor.model.orientation)
        if oriented is not ct:
            log.info("CT stored in %s orientation: permuted to the model's %s for prediction, labels permuted back",
                     orientation_of(ct), predictor.model.orientation)
    timings["validate_and_orient"] = time.perf_counter() - started
    stage = time.perf_counter()
    crop = predictor.model.head_neck_crop  # declared by the model folder; undone voxel for voxel below
    box = head_neck_box(oriented, crop) if crop is not None else None
    work = oriented if box is None else crop_image(oriented, box)
    channels = prepare_case_channels(work, mr, predictor.model.channel_plan, mr_source)
    decision = channels.decision
    timings["mr_channel"] = time.perf_counter() - stage
    stage = time.perf_counter()
    preprocessed = predictor.preprocess(channels.arrays, work.GetSpacing())
    timings["preprocess"] = time.perf_counter() - stage
    if not _all_finite(preprocessed.data):
        raise InputError(ct_source, "the network input is not finite after preprocessing (NaN/inf)")
    mr_on_ct = channels.mr_on_ct if keep_model_grid else None
    del channels  # the registered MR (0.8 GB on a HaN-Seg CT) is not needed for the ensemble and export
    from model.predictor import PredictionReport

    report = PredictionReport()
    stage = time.perf_counter()
    labels = predictor.predict_preprocessed(preprocessed, deadline, report)
    timings["predict_and_export"] = time.perf_counter() - stage
    del preprocessed
    if box is not None:
        labels = uncrop_labels(labels, box, sitk.GetArrayViewFromImage(oriented).shape)
    labels = split_left_right(labels, oriented, predictor.lateral_splits)  # merged L/R labels of lr_split models
    kept_largest = predictor.model.largest_component  # post-processing declared by the model folder
    labels, removed = keep_largest_components(labels, kept_largest.values())
    image = to_label_image(labels_to_original_orientation(labels, oriented, ct), ct)
    timings["total"] = time.perf_counter() - started
    volumes = oar_volumes_ml(labels, ct.GetSpacing())
    record = build_record(case_id, model, decision, report, timings, volumes)
    names = {v: n for n, v in kept_largest.items()}
    record["largest_component"] = {"oars": list(kept_largest), "removed_voxels": {names[v]: n for v, n in
                                                                                 removed.items()}}
    log.info("case %s segmented in %.1f s: %d OARs labelled", case_id, timings["total"], len(volumes))
    record["few_oars_warning"] = warn_if_few_oars(case_id, len(volumes), predictor.model.num_classes - 1)
    return Result(labels=image, record=record, mr=decision,
                  oriented_ct=oriented if keep_model_grid else None,
                  oriented_labels=to_label_image(labels, oriented) if keep_model_grid else None,
                  mr_on_ct=mr_on_ct, timings=timings)


MIN_OAR_FRACTION = 0.25
"""A map labelling fewer than this fraction of the model's OARs gets a warning (exit code unchanged)."""


def warn_if_few_oars(case_id: str, n_oars: int, model_oars: int) -> bool:
    """Log a warning naming the likely causes when the map has no OAR or far fewer than the model's count.

    Decision (README "Empty or sparse maps"): the map is still written and the exit code stays 0; an empty map is
    a valid answer for a scan that does not show the head and neck, and the warning (also in the run record as
    ``few_oars_warning``) is what a reviewer sees. Returns True if it warned."""
    if n_oars >= max(1, MIN_OAR_FRACTION * model_oars):
        return False
    log.warning("case %s: only %d of the model's %d OARs labelled%s; likely causes: the CT does not cover the head "
                "and neck, is not in Hounsfield units, or is noise / a phantom; check the map before use",
                case_id, n_oars, model_oars, " (empty map)" if n_oars == 0 else "")
    return True


def _all_finite(tensor: Any) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())


def check_model_grid(ct: sitk.Image, ct_source: str | None, model: Any) -> None:
    """Refuse, before resampling, a CT whose model-grid working set exceeds ``MAX_MODEL_GRID_GIB``."""
    from model.preprocess import MAX_MODEL_GRID_GIB, model_grid_gib, model_grid_shape

    shape = model_grid_shape(sitk.GetArrayViewFromImage(ct).shape, ct.GetSpacing(), model)
    gib = model_grid_gib(shape, model)
    if gib > MAX_MODEL_GRID_GIB:
        raise InputError(ct_source, f"on the model's grid (spacing {model.configuration.spacing} mm) this CT would "
                                    f"be {' x '.join(map(str, shape))} voxels, about {gib:.1f} GiB; at most "
                                    f"{MAX_MODEL_GRID_GIB:g} GiB")


def to_label_image(labels: np.ndarray, ct: sitk.Image) -> sitk.Image:
    """The label array as a uint8 image carrying the CT's exact size, spacing, origin and direction."""
    if labels.dtype != np.uint8 or labels.shape != sitk.GetArrayViewFromImage(ct).shape:
        raise AssertionError(f"label map {labels.dtype} {labels.shape} does not match the CT")
    if labels.max(initial=0) > MAX_LABEL:
        raise AssertionError(f"label value {labels.max()} outside 0..{MAX_LABEL}")
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(ct)
    return image


def oar_volumes_ml(labels: np.ndarray, spacing_xyz: tuple[float, ...]) -> dict[str, float]:
    """Volume in millilitres of every OAR present in a HaN-Seg label array (numpy z, y, x; spacing in mm)."""
    from contract.labels import HANSEG_NAMES_BY_VALUE

    counts = np.bincount(labels.ravel(), minlength=MAX_LABEL + 1)
    voxel_ml = float(np.prod(spacing_xyz)) / 1000.0
    return {HANSEG_NAMES_BY_VALUE[v]: round(float(counts[v]) * voxel_ml, 4)
            for v in range(1, MAX_LABEL + 1) if counts[v]}
