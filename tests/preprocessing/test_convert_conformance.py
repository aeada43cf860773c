"""Conformance of `fvlm convert` on real public DICOM (../shared/data; skipped when absent).

See /work/shared/data/SOURCES.md "DICOM facts" for what each fixture is and what is expected.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from preprocessing.dicom_discovery import headers_from_dataset, read_header, scan_dicom_tree
from preprocessing.volume_assembly import AssemblyError, assemble_series

pytestmark = pytest.mark.shared
SALT = "conformance"

LOSSLESS_VARIANTS = [
    "CTImage.dcm_BigEndianExplicitTransferSyntax_1.2.840.10008.1.2.2.dcm",
    "CTImage.dcm_DeflatedExplicitVRLittleEndianTransferSyntax_1.2.840.10008.1.2.1.99.dcm",
    "CTImage.dcm_JPEG2000LosslessOnlyTransferSyntax_1.2.840.10008.1.2.4.90.dcm",
    "CTImage.dcm_JPEGLSLosslessTransferSyntax_1.2.840.10008.1.2.4.80.dcm",
    "CTImage.dcm_JPEGProcess14SV1TransferSyntax_1.2.840.10008.1.2.4.70.dcm",
    "CTImage.dcm_JPEGProcess14TransferSyntax_1.2.840.10008.1.2.4.57.dcm",
    "CTImage.dcm_LittleEndianExplicitTransferSyntax_1.2.840.10008.1.2.1.dcm",
    "CTImage.dcm_LittleEndianImplicitTransferSyntax_1.2.840.10008.1.2.dcm",
    "CTImage.dcm_RLELosslessTransferSyntax_1.2.840.10008.1.2.5.dcm",
]
PROGRESSIVE = [
    "CTImage.dcm_JPEGProcess6_8TransferSyntax_1.2.840.10008.1.2.4.53.dcm",
    "CTImage.dcm_JPEGProcess10_12TransferSyntax_1.2.840.10008.1.2.4.55.dcm",
]


def file_hu(path: Path, **kwargs) -> np.ndarray:
    headers = headers_from_dataset(read_header(path), path, path.name)
    return assemble_series(headers, **kwargs).hu_kji


def copy_tree(sources: list[Path], target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for index, source in enumerate(sources):
        if source.is_dir():
            shutil.copytree(source, target / f"{index}_{source.name}")
        else:
            shutil.copy(source, target / source.name)
    return target


def only_row(summary):
    assert summary.n_studies == 1
    return summary.rows[0]


def test_totalsegmentator_series_lands_on_reference_grid(shared_data: Path, tmp_path: Path, convert_dir) -> None:
    source = shared_data / "totalsegmentator" / "example_ct_dicom"
    summary = convert_dir(source, tmp_path / "out", salt=SALT, min_slices=10)
    row = only_row(summary)
    assert row.status == "ok", row.reason
    ours = nib.load(tmp_path / "out" / row.volume_path)
    reference = nib.as_closest_canonical(nib.load(shared_data / "totalsegmentator" / "example_seg_dicom.nii.gz"))
    assert ours.shape == reference.shape == (512, 512, 20)
    np.testing.assert_allclose(ours.affine, reference.affine, atol=1e-4)
    assert row.spacing == pytest.approx([2.0, 0.9765625, 0.9765625])
    assert row.convolution_kernel.startswith("Br38f")
    assert row.transfer_syntaxes == ["1.2.840.10008.1.2.4.90"]


def test_lossless_transfer_syntaxes_bit_identical(shared_data: Path) -> None:
    folder = shared_data / "cornerstone3d" / "testImages"
    reference = file_hu(folder / "CTImage.dcm")
    for name in LOSSLESS_VARIANTS:
        assert np.array_equal(file_hu(folder / name), reference), name


def test_progressive_jpeg_quarantines_cleanly(shared_data: Path, tmp_path: Path, convert_dir) -> None:
    folder = shared_data / "cornerstone3d" / "testImages"
    for name in PROGRESSIVE:
        with pytest.raises(AssemblyError, match="cannot decode pixel data"):
            file_hu(folder / name)
        summary = convert_dir(
            copy_tree([folder / name], tmp_path / name), tmp_path / f"out-{name}", salt=SALT, min_slices=1
        )
        row = only_row(summary)
        assert row.status == "quarantined"
        assert "cannot decode pixel data" in row.reason and row.reason.startswith("series ")


@pytest.mark.parametrize(
    ("compressed", "uncompressed"),
    [
        ("pydicom_data/693_J2KR.dcm", "pydicom_data/693_UNCR.dcm"),
        ("pydicom/test_files/693_J2KI.dcm", "pydicom_data/693_UNCI.dcm"),
    ],
)
def test_pydicom_j2k_pairs_identical(shared_data: Path, compressed: str, uncompressed: str) -> None:
    assert np.array_equal(file_hu(shared_data / compressed), file_hu(shared_data / uncompressed))


@pytest.mark.parametrize(
    "name",
    [
        "pydicom/test_files/CT_small.dcm",
        "pydicom/test_files/J2K_pixelrep_mismatch.dcm",
        "pydicom_data/bad_sequence.dcm",
        "pydicom_data/explicit_VR-UN.dcm",
        "pylibjpeg_data/JPEG2000/ELSCINT1_JP2vsJ2K.dcm",
        "pylibjpeg_data/JPEG2000Lossless/TOSHIBA_J2K_OpenJPEGv2Regression.dcm",
        "pylibjpeg_data/JPEG2000Lossless/TOSHIBA_J2K_SIZ0_PixRep1.dcm",
        "pylibjpeg_data/JPEG2000Lossless/TOSHIBA_J2K_SIZ1_PixRep0.dcm",
        "pylibjpeg_data/JPEGLS/CT1_JLSN.dcm",
        "cornerstone3d/testImages/CT1_J2KR",
        "cornerstone3d/testImages/CT2_J2KR",
    ],
)
def test_real_ct_slices_decode_to_plausible_hu(shared_data: Path, name: str) -> None:
    hu = file_hu(shared_data / name)
    assert hu.dtype == np.int16 and hu.shape[0] == 1
    assert hu.min() >= -1024 and hu.max() < 4000, (hu.min(), hu.max())  # no wrapped negatives (65535 - ...)
    assert np.median(hu) > -1024 or np.percentile(hu, 95) > -200


def test_signedness_mismatch_cases_agree(shared_data: Path) -> None:
    folder = shared_data / "pylibjpeg_data" / "JPEG2000Lossless"
    assert np.array_equal(
        file_hu(folder / "TOSHIBA_J2K_SIZ1_PixRep0.dcm"), file_hu(folder / "TOSHIBA_J2K_SIZ0_PixRep1.dcm")
    )


@pytest.mark.parametrize(
    "name",
    ["pydicom_data/eCT_Supplemental.dcm", "cornerstone3d/testImages/CT0012.fragmented_no_bot_jpeg_baseline.51.dcm"],
)
def test_enhanced_ct_files_assemble(shared_data: Path, tmp_path: Path, name: str, convert_dir) -> None:
    summary = convert_dir(copy_tree([shared_data / name], tmp_path / "in"), tmp_path / "out", salt=SALT, min_slices=2)
    row = only_row(summary)
    assert row.status == "ok", row.reason
    assert row.shape == [2, 512, 512] and row.spacing[0] == pytest.approx(10.0)
    assert row.n_input_files == 1


def test_dicom2nifti_failing_series_follow_policy(shared_data: Path, tmp_path: Path, convert_dir) -> None:
    failing = shared_data / "dicom2nifti" / "tests" / "data" / "failing"
    expectations = {
        "gantrytilting/001": ("ok", "gantry tilt", 4),
        "sliceincrement/001": ("ok", "non-uniform slice spacing", 5),
        "sliceincrement/002": ("ok", "non-uniform slice spacing", 5),
    }
    for case, (status, warning, slices) in expectations.items():
        summary = convert_dir(failing / case, tmp_path / case / "out", salt=SALT, min_slices=2)
        row = only_row(summary)
        assert row.status == status, (case, row.reason)
        assert row.resampled and any(warning in w for w in row.warnings), row.warnings
        assert row.slices == slices
        affine = np.array(row.affine).reshape(4, 4)[:3, :3]
        gram = affine.T @ affine
        assert np.allclose(gram, np.diag(np.diag(gram)), atol=1e-6)  # orthogonal grid
        strict = convert_dir(failing / case, tmp_path / case / "strict", salt=SALT, min_slices=2, strict=True)
        assert only_row(strict).status == "quarantined" and "strict mode" in only_row(strict).reason
    summary = convert_dir(failing / "notavolume" / "001", tmp_path / "nav", salt=SALT, min_slices=2)
    row = only_row(summary)
    assert row.status == "quarantined" and "not a volume" in row.reason


def test_dicom2nifti_sliceincrement_002_grid_close_to_ground_truth(
    shared_data: Path, tmp_path: Path, convert_dir
) -> None:
    failing = shared_data / "dicom2nifti" / "tests" / "data" / "failing"
    row = only_row(convert_dir(failing / "sliceincrement" / "002", tmp_path / "out", salt=SALT, min_slices=2))
    ours = nib.load(tmp_path / "out" / row.volume_path)
    truth = nib.as_closest_canonical(nib.load(failing / "sliceincrement" / "002_ground_truth.nii.gz"))
    assert ours.shape[2] == truth.shape[2] == 5
    # dicom2nifti's resampled reference is approximate (upstream test skipped): in-plane voxel sizes agree;
    # its slice step is the IPP z increment (0.778 mm), ours the distance along the tilted normal (0.750 mm)
    np.testing.assert_allclose(ours.header.get_zooms()[:2], truth.header.get_zooms()[:2], rtol=1e-4)
    assert ours.header.get_zooms()[2] == pytest.approx(0.778 * np.cos(np.radians(15.5)), rel=0.01)


def test_dcm_qa_ct_localizer_and_dose_pages_never_chosen(shared_data: Path, tmp_path: Path, convert_dir) -> None:
    summary = convert_dir(shared_data / "dcm_qa_ct", tmp_path / "out", salt=SALT, min_slices=1)
    row = only_row(summary)
    assert row.status == "quarantined"
    assert "localizer" in row.reason and "SOP class 1.2.840.10008.5.1.4.1.1.7" in row.reason
    unreadable = {u.relative_path for u in scan_dicom_tree(shared_data / "dcm_qa_ct").unreadable}
    assert {"In/Philips/S21570/S1000/DIRFILE", "In/Philips/S21570/S4010/DIRFILE"} <= unreadable


def test_dcmqi_three_slice_series_converts(shared_data: Path, tmp_path: Path, convert_dir) -> None:
    summary = convert_dir(shared_data / "dcmqi" / "segmentations", tmp_path / "out", salt=SALT, min_slices=3)
    row = only_row(summary)
    assert row.status == "ok", row.reason
    assert row.shape == [3, 512, 512] and row.spacing[0] == pytest.approx(1.0, abs=1e-4)
    import json

    alternatives = json.loads(row.alternatives)
    assert len(alternatives) == 1 and "modality SEG" in alternatives[0]["excluded"]  # the DICOM SEG is never chosen
