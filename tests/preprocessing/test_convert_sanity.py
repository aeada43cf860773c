"""Header sanity before allocation: a header's claims never cost more than the file it sits in."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from preprocessing.dicom_discovery import pixel_data_defect, scan_dicom_tree
from preprocessing.volume_assembly import AssemblyError, assemble_series
from tests.badinput.corpus import edit, series, write_enhanced_ct


def _slices(root: Path):
    study = scan_dicom_tree(root).studies[0]
    return next(iter(study.series.values())).slices


def test_billion_frame_claim_gives_one_defective_header_fast(tmp_path: Path) -> None:
    fixture = write_enhanced_ct(tmp_path / "in" / "enhanced.dcm", n_frames=4, rows=8, columns=8)
    edit(fixture.files, NumberOfFrames=1_000_000_000)
    started = time.perf_counter()
    slices = _slices(tmp_path / "in")
    assert time.perf_counter() - started < 5
    assert len(slices) == 1 and "NumberOfFrames 1000000000 above" in (slices[0].defect or "")
    with pytest.raises(AssemblyError, match="implausible frame count"):
        assemble_series(slices)


def test_huge_dimensions_never_allocated(tmp_path: Path) -> None:
    fixture = series(tmp_path / "in")
    edit(fixture.files, Rows=8000, Columns=8000)  # 4 x 128 MB claimed over ~1 kB files
    slices = _slices(tmp_path / "in")
    assert all("pixel data size inconsistent with header" in (s.defect or "") for s in slices)
    with pytest.raises(AssemblyError, match="file holds only"):
        assemble_series(slices)


def test_pixel_data_defect_thresholds() -> None:
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.Rows, ds.Columns, ds.BitsAllocated = 512, 512, 16
    assert pixel_data_defect(ds, 512 * 512 * 2 + 1000) is None
    assert "file holds only 1000 bytes" in pixel_data_defect(ds, 1000)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.70"  # JPEG lossless: ratios up to 5000 are fine
    assert pixel_data_defect(ds, 2000) is None
    assert "compressed file" in pixel_data_defect(ds, 40)
    ds.NumberOfFrames = 0
    assert "NumberOfFrames 0" in pixel_data_defect(ds, 10_000)


def test_nan_position_quarantines_without_resampling(tmp_path: Path) -> None:
    fixture = series(tmp_path / "in", n_slices=6)
    edit(fixture.files, "first", ImagePositionPatient=["NaN", "0", "0"])
    with pytest.raises(AssemblyError, match="ImagePositionPatient contains NaN"):
        assemble_series(_slices(tmp_path / "in"))
