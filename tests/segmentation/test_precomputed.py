"""Precomputed masks: real TotalSegmentator outputs and a real DICOM SEG (../shared/data)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from core.anatomy_sets import load_anatomy_set, totalseg_name_to_id
from core.privacy import pseudonym
from segmentation.precomputed import MaskSourceError, PrecomputedBackend, load_mask_source
from segmentation.stats import anatomy_stats

SALT = "test-salt"


def test_multilabel_file_equals_per_class_folder(shared_data: Path) -> None:
    folder = load_mask_source(shared_data / "totalsegmentator" / "example_seg_fast")
    multilabel = load_mask_source(shared_data / "totalsegmentator" / "example_seg_fast.nii.gz")
    assert folder.ids.dtype == np.uint8 and folder.ids.shape == multilabel.ids.shape
    assert np.array_equal(folder.ids, multilabel.ids)
    assert np.allclose(folder.affine, multilabel.affine)
    assert totalseg_name_to_id()["aorta"] == 52 and (folder.ids == 52).any()


def test_ctrate4_grouping_on_a_real_mask(shared_data: Path) -> None:
    mask = nib.load(str(shared_data / "totalsegmentator" / "example_seg.nii.gz"))
    ids_xyz = np.asarray(mask.dataobj)
    stats = anatomy_stats(ids_xyz.transpose(2, 1, 0), "ctrate4", (3.0, 3.0, 3.0))
    lobes = load_anatomy_set("ctrate4").class_ids()["lung"]
    assert stats["lung"].voxels == sum(int((ids_xyz == i).sum()) for i in lobes) > 0
    assert stats["aorta"].voxels == int((ids_xyz == 52).sum()) > 0
    assert stats["lung"].volume_ml == pytest.approx(stats["lung"].voxels * 27 / 1000)
    assert stats["aorta"].cut_by_fov  # the 30-slice crop cuts the aorta at both ends
    assert {"z_first", "z_last"} <= set(stats["aorta"].touches)


def _ct_from_dicom(files: list[Path]) -> tuple[nib.Nifti1Image, dict[str, int]]:
    """3 DICOM slices -> NIfTI in DICOM index order (i = column, j = row, k = slice), RAS affine."""
    datasets = [pydicom.dcmread(str(f)) for f in files]
    row_dir = np.array(datasets[0].ImageOrientationPatient[:3], dtype=float)
    col_dir = np.array(datasets[0].ImageOrientationPatient[3:], dtype=float)
    normal = np.cross(row_dir, col_dir)
    datasets.sort(key=lambda d: float(np.dot(normal, np.array(d.ImagePositionPatient, dtype=float))))
    positions = np.array([d.ImagePositionPatient for d in datasets], dtype=float)
    row_spacing, col_spacing = (float(v) for v in datasets[0].PixelSpacing)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing
    affine_lps[:3, 1] = col_dir * row_spacing
    affine_lps[:3, 2] = positions[1] - positions[0]
    affine_lps[:3, 3] = positions[0]
    hu = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets], axis=-1)
    hu_xyz = hu.transpose(1, 0, 2).astype(np.int16)  # (row, col, slice) -> (col, row, slice)
    image = nib.Nifti1Image(hu_xyz, np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps)
    return image, {d.SOPInstanceUID: k for k, d in enumerate(datasets)}


def test_dicom_seg_liver_lands_on_its_ct_voxels(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / "dcmqi" / "segmentations"
    ct_dicom, slice_of = _ct_from_dicom(sorted((folder / "ct-3slice").glob("*.dcm")))
    volume = nib.as_closest_canonical(ct_dicom)  # what `fvlm convert` writes: RAS canonical
    study_id = "st_dcmqi"
    masks = tmp_path / "masks"
    masks.mkdir()
    shutil.copy(folder / "liver.dcm", masks / f"{study_id}.dcm")
    ids, warnings = PrecomputedBackend(masks, salt=SALT).segment_study(study_id, volume)
    assert ids.shape == volume.shape and ids.dtype == np.uint8
    assert set(np.unique(ids)) == {0, totalseg_name_to_id()["liver"]}

    # independent truth from the SEG frames with pydicom: frame pixel (row r, col c) of the frame that
    # references CT instance s is voxel (c, r, s) of the DICOM-ordered volume
    seg = pydicom.dcmread(str(folder / "liver.dcm"))
    frames = seg.pixel_array
    expected = np.zeros(ct_dicom.shape, dtype=np.uint8)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=False):
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        expected[:, :, slice_of[source_uid]] = (frame.T > 0) * totalseg_name_to_id()["liver"]
    expected_canonical = np.asarray(nib.as_closest_canonical(nib.Nifti1Image(expected, ct_dicom.affine)).dataobj)
    assert expected.sum() > 0
    assert np.array_equal(ids, expected_canonical)


def test_study_matched_by_id_or_by_pseudonymised_key(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "totalsegmentator" / "example_seg.nii.gz"
    raw_key = "1.2.826.0.1.3680043.8.498.12345"
    (tmp_path / "masks").mkdir()
    shutil.copy(source, tmp_path / "masks" / f"{raw_key}.nii.gz")
    shutil.copy(source, tmp_path / "masks" / "st_direct.nii.gz")
    backend = PrecomputedBackend(tmp_path / "masks", salt=SALT)
    keyed = pseudonym(raw_key, SALT, kind="study")
    assert backend.source_for(keyed).name == f"{raw_key}.nii.gz"
    assert backend.source_for("st_direct").name == "st_direct.nii.gz"
    with pytest.raises(MaskSourceError, match="no precomputed mask for study st_other"):
        backend.source_for("st_other")
    # messages never show the raw key
    volume = nib.load(str(shared_data / "totalsegmentator" / "example_ct.nii.gz"))  # 112 slices vs 30
    with pytest.raises(MaskSourceError) as error:
        backend.segment_study(keyed, volume)
    assert "does not cover the volume" in str(error.value) and raw_key not in str(error.value)


def test_mask_on_another_grid_is_resampled_nearest(tmp_path: Path) -> None:
    ids = np.zeros((10, 10, 10), dtype=np.uint8)
    ids[2:6, 3:7, 4:8] = 51
    coarse = nib.Nifti1Image(ids, np.diag([2.0, 2.0, 2.0, 1.0]))
    (tmp_path / "m").mkdir()
    nib.save(coarse, str(tmp_path / "m" / "st_a.nii.gz"))
    fine_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    fine_affine[:3, 3] = -0.5  # same field of view, twice the resolution
    volume = nib.Nifti1Image(np.zeros((20, 20, 20), dtype=np.int16), fine_affine)
    out, warnings = PrecomputedBackend(tmp_path / "m", salt=SALT).segment_study("st_a", volume)
    assert out.shape == (20, 20, 20) and int((out == 51).sum()) == 8 * ids.astype(bool).sum()
    assert out[4:12, 6:14, 8:16].min() == 51 and any("resampled" in w for w in warnings)


def test_unreadable_and_unknown_sources_fail_with_reason(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(MaskSourceError, match="bad.nii.gz: not a readable NIfTI"):
        load_mask_source(tmp_path / "bad.nii.gz")
    folder = tmp_path / "classes"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.ones((2, 2, 2), np.uint8), np.eye(4)), str(folder / "not_an_organ.nii.gz"))
    with pytest.raises(MaskSourceError, match="none of its files"):
        load_mask_source(folder)


def test_dicom_seg_covering_part_of_a_longer_volume(shared_data: Path, tmp_path: Path) -> None:
    """A SEG only holds frames with segments: the slices beyond it are background, not an error."""
    folder = shared_data / "dcmqi" / "segmentations"
    ct_dicom, _ = _ct_from_dicom(sorted((folder / "ct-3slice").glob("*.dcm")))
    volume = nib.as_closest_canonical(ct_dicom)
    data = np.asarray(volume.dataobj)
    longer = nib.Nifti1Image(np.concatenate([data, data[..., :2]], axis=2), volume.affine)  # 2 more slices
    (tmp_path / "masks").mkdir()
    shutil.copy(folder / "liver.dcm", tmp_path / "masks" / "st_long.dcm")
    backend = PrecomputedBackend(tmp_path / "masks", salt=SALT)
    ids, _ = backend.segment_study("st_long", longer)
    reference, _ = PrecomputedBackend(tmp_path / "masks", salt=SALT).segment_study("st_long", volume)
    assert ids.shape == longer.shape and np.array_equal(ids[..., :3], reference) and not ids[..., 3:].any()
    shifted = nib.Nifti1Image(
        data, volume.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 50], [0, 0, 0, 1.0]])
    )
    with pytest.raises(MaskSourceError, match="lies outside the volume"):
        backend.segment_study("st_long", shifted)


def test_mask_of_a_study_without_uid_is_named_by_its_folder_key(tmp_path: Path) -> None:
    """``folder:site1/P01`` (no StudyInstanceUID) is no file name: ``folder__site1__P01.nii.gz`` is its mask."""
    from core.layout import mask_stem_for_study_key

    masks = tmp_path / "masks"
    masks.mkdir()
    ids = np.zeros((4, 4, 3), dtype=np.uint8)
    nib.save(nib.Nifti1Image(ids, np.eye(4)), masks / f"{mask_stem_for_study_key('folder:site1/P01')}.nii.gz")
    study_id = pseudonym("folder:site1/P01", SALT, kind="study")
    assert study_id in PrecomputedBackend(masks, salt=SALT).index()
