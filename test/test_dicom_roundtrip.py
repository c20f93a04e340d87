"""Round trip on real anatomy: a DICOM CT series of OpenKBP pt_4 (written by SimpleITK's series writer, files in
reversed slice order, RescaleIntercept -1024) -> ``process.py --output-type mha,rtstruct,dicom-seg`` with the
shipped model (weights/, fold 0, no test-time mirroring) -> the RTSTRUCT rasterised back by plastimatch (not our
code), the SEG read back with highdicom, both checked by dicom3tools' dciodvfy, and Parotid_L on the patient's left.
The slow tests repeat it on a coronal series, from .mha input (CT written as DICOM too) and in DICOM dataset mode."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from contract.labels import HANSEG_LABELS, HANSEG_NAMES_BY_VALUE
from evaluation.qa import OAR_COLOURS
from test.conftest import REPO, openkbp_ct_path
from test.dicom_series import OrthancServer, coronal, dciodvfy_errors, plastimatch_masks, run_process, write_series

MODEL = REPO / "weights"
# one fold, no test-time mirroring, one thread: what these tests pin (DICOM reading and writing, geometry, the
# sides of the split pair) does not depend on the ensemble; with the 3-D model TTA doubled each run (~270 s)
FAST_FLAGS = ["--model", str(MODEL), "--folds", "0", "--no-tta", "--threads", "1", "--no-progress"]
MIN_DICE = 0.95


def _main(args: list[str]) -> int:
    """``process.py`` in a fresh interpreter (nothing imports the command line): its exit code."""
    code, errors = run_process(*args)
    assert not errors or code != 0, errors
    return code


@dataclass(frozen=True)
class RoundTrip:
    """One ``process.py`` run on a DICOM CT series and where its outputs are."""

    ct_folder: Path
    ct_image: sitk.Image
    output: Path
    labels: sitk.Image
    rtstruct: Path
    seg: Path
    qa: Path


def run_round_trip(image: sitk.Image, root: Path, **series_options: object) -> RoundTrip:
    ct_folder = root / "in" / "pt_4"
    write_series(image, ct_folder, **series_options)  # type: ignore[arg-type]
    output, qa = root / "out", root / "qa"
    code = _main(["--input", str(ct_folder), "--output", str(output), "--output-type",
                         "mha,rtstruct,dicom-seg", "--qa", str(qa), *FAST_FLAGS])
    assert code == 0
    labels = sitk.ReadImage(str(output / "images" / "head_neck_oar" / "pt_4.mha"))
    return RoundTrip(ct_folder, image, output, labels, output / "dicom" / "pt_4" / "RTSTRUCT.dcm",
                     output / "dicom" / "pt_4" / "SEG.dcm", qa)


@pytest.fixture(scope="module")
def axial(tmp_path_factory: pytest.TempPathFactory) -> RoundTrip:
    ct = sitk.ReadImage(str(openkbp_ct_path("pt_4")))
    return run_round_trip(ct, tmp_path_factory.mktemp("axial"), intercept=-1024, reverse_order=True)


def check_rasterised_by_plastimatch(trip: RoundTrip, work: Path) -> dict[str, float]:
    """plastimatch's masks of every ROI against our label map: Dice per OAR (>= MIN_DICE) and the same slices."""
    masks = plastimatch_masks(trip.rtstruct, trip.ct_folder, work)
    ours = sitk.GetArrayFromImage(trip.labels)
    present = {HANSEG_NAMES_BY_VALUE[int(v)] for v in np.unique(ours) if v}
    assert set(masks) == present
    dice = {}
    for name, mask in masks.items():
        theirs = sitk.GetArrayFromImage(sitk.Resample(mask, trip.labels, sitk.Transform(), sitk.sitkNearestNeighbor,
                                                      0)) > 0
        mine = ours == HANSEG_LABELS[name]
        dice[name] = 2 * np.count_nonzero(theirs & mine) / (np.count_nonzero(theirs) + np.count_nonzero(mine))
        assert np.array_equal(theirs.any(axis=(1, 2)), mine.any(axis=(1, 2))), f"{name}: contours on other slices"
    assert min(dice.values()) >= MIN_DICE, dice
    return dice


def check_contours_on_their_slices(trip: RoundTrip) -> None:
    """Every contour lies in the plane of the CT slice it references (to 1 micrometre)."""
    ct = {}
    for path in trip.ct_folder.glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ct[ds.SOPInstanceUID] = ds
    rt = pydicom.dcmread(trip.rtstruct)
    n_contours = 0
    for roi in rt.ROIContourSequence:
        for contour in roi.ContourSequence:
            image = ct[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            iop = np.asarray(image.ImageOrientationPatient, dtype=float)
            normal = np.cross(iop[:3], iop[3:])
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            offsets = (points - np.asarray(image.ImagePositionPatient, dtype=float)) @ normal
            assert np.abs(offsets).max() < 1e-3
            n_contours += 1
    assert n_contours > 50


def parotid_sides(trip: RoundTrip) -> dict[str, float]:
    """Mean patient x (LPS: + = patient's left) of each parotid's RTSTRUCT contour points, minus the x of the
    mid-sagittal plane (the centre of the body, HU > -400, on the CT)."""
    body = sitk.GetArrayFromImage(trip.ct_image) > -400
    z, y, x = (c.mean() for c in np.nonzero(body))
    mid_x = trip.ct_image.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))[0]
    rt = pydicom.dcmread(trip.rtstruct)
    names = {roi.ROINumber: roi.ROIName for roi in rt.StructureSetROISequence}
    sides = {}
    for roi in rt.ROIContourSequence:
        name = names[roi.ReferencedROINumber]
        if name.startswith("Parotid"):
            points = np.concatenate([np.asarray(c.ContourData, float).reshape(-1, 3) for c in roi.ContourSequence])
            sides[name] = float(points[:, 0].mean() - mid_x)
    return sides


def seg_labels(seg_path: Path, ct_files: list[Path]) -> sitk.Image:
    """The SEG read back with highdicom as a HaN-Seg label array (z = the order of ``ct_files``), by segment label."""
    seg = hd.seg.segread(seg_path)
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct_files]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, skip_overlap_checks=False)
    to_hanseg = np.zeros(int(pixels.max()) + 1, np.uint8)
    for number in seg.segment_numbers:
        to_hanseg[number] = HANSEG_LABELS[seg.get_segment_description(number).segment_label]
    return sitk.GetImageFromArray(to_hanseg[pixels])


def test_rtstruct_rasterised_by_plastimatch_matches(axial: RoundTrip, tmp_path: Path) -> None:
    dice = check_rasterised_by_plastimatch(axial, tmp_path / "plastimatch")
    assert len(dice) == 7  # the shipped model's 7 OARs, all found on this real CT
    check_contours_on_their_slices(axial)


def test_seg_reads_back_voxel_for_voxel(axial: RoundTrip) -> None:
    ct_files = sorted(axial.ct_folder.glob("*.dcm"),
                      key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    ct = [pydicom.dcmread(p, stop_before_pixels=True) for p in ct_files]  # axial: slice z follows patient z
    assert np.array_equal(sitk.GetArrayFromImage(seg_labels(axial.seg, ct_files)),
                          sitk.GetArrayFromImage(axial.labels))
    seg = hd.seg.segread(axial.seg)
    description = seg.get_segment_description(seg.segment_numbers[0])
    assert description.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert description.algorithm_identification[0].AlgorithmName == "HaN-Seg OAR segmentation"
    assert seg.StudyInstanceUID == ct[0].StudyInstanceUID and seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    parotid_l = next(seg.get_segment_description(n) for n in seg.segment_numbers
                     if seg.get_segment_description(n).segment_label == "Parotid_L")
    assert parotid_l.segmented_property_type.value == "45289007"  # SNOMED CT parotid gland
    modifier = parotid_l.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeValue == "7771000"  # SNOMED CT left


def test_outputs_pass_dciodvfy(axial: RoundTrip) -> None:
    assert dciodvfy_errors(axial.rtstruct) == []
    assert dciodvfy_errors(axial.seg) == []


def test_rtstruct_holds_what_a_planning_system_needs(axial: RoundTrip) -> None:
    rt = pydicom.dcmread(axial.rtstruct)
    ct = pydicom.dcmread(next(axial.ct_folder.glob("*.dcm")), stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "AccessionNumber",
                    "ReferringPhysicianName", "FrameOfReferenceUID"):
        assert rt.data_element(keyword).value == ct.data_element(keyword).value, keyword
    assert rt.SeriesInstanceUID != ct.SeriesInstanceUID and rt.Modality == "RTSTRUCT"
    assert rt.ApprovalStatus == "UNAPPROVED" and "review" in rt.SeriesDescription.lower()
    assert rt.SoftwareVersions and rt.ManufacturerModelName == "HaN-Seg OAR segmentation"
    referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == ct.SeriesInstanceUID and len(referenced.ContourImageSequence) == 128
    colours = {roi.ReferencedROINumber: tuple(int(v) for v in roi.ROIDisplayColor) for roi in rt.ROIContourSequence}
    for roi, observation in zip(rt.StructureSetROISequence, rt.RTROIObservationsSequence):
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC" and observation.RTROIInterpretedType == "ORGAN"
        assert colours[roi.ROINumber] == OAR_COLOURS[roi.ROIName]
        assert all(c.ContourGeometricType == "CLOSED_PLANAR" for c in rt.ROIContourSequence[roi.ROINumber - 1]
                   .ContourSequence)


def test_left_parotid_on_patient_left_with_flipped_slice_order(axial: RoundTrip) -> None:
    sides = parotid_sides(axial)
    assert sides["Parotid_L"] > 10 and sides["Parotid_R"] < -10, sides


def test_qa_still_written_for_dicom_input(axial: RoundTrip) -> None:
    assert any(axial.qa.glob("pt_4*.png"))


@pytest.mark.slow
def test_coronal_series_round_trip(tmp_path: Path) -> None:
    """A non-axial series (coronal slices, no interpolation): plastimatch Dice, contours in the coronal slice
    planes, Parotid_L on the left, and the same labels as the axial run."""
    ct = sitk.ReadImage(str(openkbp_ct_path("pt_4")))
    trip = run_round_trip(coronal(ct), tmp_path)
    check_rasterised_by_plastimatch(trip, tmp_path / "plastimatch")
    check_contours_on_their_slices(trip)
    sides = parotid_sides(trip)
    assert sides["Parotid_L"] > 10 and sides["Parotid_R"] < -10, sides
    assert dciodvfy_errors(trip.rtstruct) == [] and dciodvfy_errors(trip.seg) == []


@pytest.mark.slow
def test_same_labels_as_the_nifti_run(axial: RoundTrip, tmp_path: Path) -> None:
    """The DICOM path changes nothing: the label map equals the run on the original NIfTI CT, voxel for voxel."""
    case = tmp_path / "in" / "images" / "ct"
    case.mkdir(parents=True)
    sitk.WriteImage(sitk.ReadImage(str(openkbp_ct_path("pt_4"))), str(case / "pt_4.mha"))
    assert _main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *FAST_FLAGS]) == 0
    nifti_run = sitk.ReadImage(str(tmp_path / "out" / "images" / "head_neck_oar" / "pt_4.mha"))
    assert np.array_equal(sitk.GetArrayFromImage(nifti_run), sitk.GetArrayFromImage(axial.labels))


@pytest.mark.slow
def test_mha_input_gets_a_dicom_ct_and_self_consistent_outputs(tmp_path: Path) -> None:
    case = tmp_path / "in" / "images" / "ct"
    case.mkdir(parents=True)
    ct = sitk.ReadImage(str(openkbp_ct_path("pt_4")))
    sitk.WriteImage(ct, str(case / "pt_4.mha"))
    out = tmp_path / "out"
    assert _main(["--input", str(tmp_path / "in"), "--output", str(out), "--output-type",
                         "rtstruct,dicom-seg", *FAST_FLAGS]) == 0
    assert not (out / "images" / "head_neck_oar" / "pt_4.mha").exists()  # mha not asked for
    folder = out / "dicom" / "pt_4"
    ct_dicom = sorted((folder / "CT").glob("*.dcm"))
    assert len(ct_dicom) == 128 and dciodvfy_errors(ct_dicom[0]) == []
    rt, seg = pydicom.dcmread(folder / "RTSTRUCT.dcm"), pydicom.dcmread(folder / "SEG.dcm")
    ct_header = pydicom.dcmread(ct_dicom[0], stop_before_pixels=True)
    assert rt.StudyInstanceUID == seg.StudyInstanceUID == ct_header.StudyInstanceUID
    assert rt.FrameOfReferenceUID == seg.FrameOfReferenceUID == ct_header.FrameOfReferenceUID
    labels = seg_labels(folder / "SEG.dcm", ct_dicom)  # CT_0001.dcm ... follow the image's z
    labels.CopyInformation(ct)
    assert 5 <= len(np.unique(sitk.GetArrayViewFromImage(labels))) - 1 <= 7
    trip = RoundTrip(folder / "CT", ct, out, labels, folder / "RTSTRUCT.dcm", folder / "SEG.dcm", tmp_path)
    check_rasterised_by_plastimatch(trip, tmp_path / "plastimatch")
    check_contours_on_their_slices(trip)
    assert dciodvfy_errors(trip.rtstruct) == [] and dciodvfy_errors(trip.seg) == []


@pytest.mark.slow
def test_dicom_dataset_mode(tmp_path: Path) -> None:
    """A folder of two DICOM studies (one zipped): one label map and one RTSTRUCT per study."""
    import shutil

    data = tmp_path / "studies"
    for case in ("pt_4", "pt_17"):
        write_series(sitk.ReadImage(str(openkbp_ct_path(case))), data / case, patient_id=case)
    shutil.make_archive(str(data / "pt_17"), "zip", data / "pt_17")
    shutil.rmtree(data / "pt_17")
    out = tmp_path / "out"
    assert _main(["--input", str(data), "--output", str(out), "--output-type", "mha,rtstruct",
                         *FAST_FLAGS]) == 0
    for case in ("pt_4", "pt_17"):
        assert (out / f"{case}.mha").is_file()
        rt = pydicom.dcmread(out / "dicom" / case / "RTSTRUCT.dcm")
        assert rt.PatientID == case and len(rt.StructureSetROISequence) >= 5


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def stored_in_orthanc(axial: RoundTrip, orthanc: OrthancServer) -> dict[str, str]:
    """The CT series, the RTSTRUCT and the SEG uploaded through Orthanc's REST API: modality -> Orthanc series id."""
    series: dict[str, str] = {}
    for path in [*sorted(axial.ct_folder.glob("*.dcm")), axial.rtstruct, axial.seg]:
        answer = orthanc.upload(path)
        assert answer["Status"] in ("Success", "AlreadyStored")
        series[orthanc.get(f"/series/{answer['ParentSeries']}")["MainDicomTags"].get("Modality", "?")] = \
            answer["ParentSeries"]
    return series


def test_orthanc_indexes_rtstruct_and_seg_under_the_ct_study(orthanc: OrthancServer,
                                                             stored_in_orthanc: dict[str, str]) -> None:
    assert set(stored_in_orthanc) == {"CT", "RTSTRUCT", "SEG"}
    studies = orthanc.get("/studies")
    assert len(studies) == 1
    assert sorted(orthanc.get(f"/studies/{studies[0]}")["Series"]) == sorted(stored_in_orthanc.values())
    assert len(orthanc.get(f"/series/{stored_in_orthanc['CT']}")["Instances"]) == 128
    for modality in ("RTSTRUCT", "SEG"):
        assert orthanc.get(f"/series/{stored_in_orthanc[modality]}")["ParentStudy"] == studies[0]


@pytest.mark.slow
def test_ct_downloaded_from_orthanc_runs_again_with_the_same_result(axial: RoundTrip, orthanc: OrthancServer,
                                                                   stored_in_orthanc: dict[str, str],
                                                                   tmp_path: Path) -> None:
    archive = orthanc.download(f"/series/{stored_in_orthanc['CT']}/archive", tmp_path / "pt_4.zip")
    out = tmp_path / "out"
    assert _main(["--input", str(archive), "--output", str(out), "--output-type", "mha,rtstruct",
                         *FAST_FLAGS]) == 0
    again = sitk.ReadImage(str(out / "images" / "head_neck_oar" / "pt_4.mha"))
    assert np.array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(axial.labels))
    assert again.GetOrigin() == axial.labels.GetOrigin() and again.GetDirection() == axial.labels.GetDirection()
    first, second = (pydicom.dcmread(p) for p in (axial.rtstruct, out / "dicom" / "pt_4" / "RTSTRUCT.dcm"))
    assert [r.ROIName for r in first.StructureSetROISequence] == [r.ROIName for r in second.StructureSetROISequence]
    assert second.StudyInstanceUID == first.StudyInstanceUID
