"""Header sanity before allocation: a header's claims never cost more than the file it sits in."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
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


def test_non_numeric_header_value_is_a_defect_naming_tag_and_value() -> None:
    from pydicom.dataset import Dataset

    from preprocessing.dicom_discovery import header_value_defect

    ds = Dataset()
    ds.Rows, ds.Columns = 16, 16
    assert header_value_defect(ds) is None
    ds.add_new(0x00281053, "LO", "abc")  # RescaleSlope as a broken exporter writes it
    assert header_value_defect(ds) == "RescaleSlope 'abc' is not a number (expected a decimal number such as 1)"


def test_pixel_bytes_must_match_the_header_both_ways() -> None:
    from pydicom.dataset import Dataset

    from preprocessing.volume_assembly import pixel_bytes_problem

    ds = Dataset()
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 4, 4, 16, 1
    ds.PixelData = bytes(32)
    assert pixel_bytes_problem(ds, "1.2.840.10008.1.2.1") is None
    ds.BitsAllocated = 8  # 16-bit data declared as 8-bit: pydicom would silently read half of it
    assert "too many pixel data bytes: 32, header expects 16" in pixel_bytes_problem(ds, "1.2.840.10008.1.2.1")
    ds.BitsAllocated, ds.PixelData = 16, bytes(20)
    assert "truncated pixel data" in pixel_bytes_problem(ds, "1.2.840.10008.1.2.1")


def test_degenerate_orientation_says_parallel() -> None:
    from preprocessing.dicom_discovery import orientation_problem

    assert orientation_problem((1, 0, 0, 0, 1, 0)) is None
    assert "degenerate ImageOrientationPatient" in orientation_problem((1, 0, 0, 1, 0, 0))
    assert "not perpendicular" in orientation_problem((1, 0, 0, 0.1, 0.995, 0))


def test_compressed_container_is_named(tmp_path: Path) -> None:
    import gzip

    from preprocessing.dicom_discovery import container_problem

    path = tmp_path / "IM0001.dcm"
    path.write_bytes(gzip.compress(b"DICM" * 100))
    assert container_problem(path).startswith("gzip-compressed file")
    path.write_bytes(b"\0" * 132)
    assert container_problem(path) is None


def test_pydicom_warnings_are_recorded_and_others_reissued() -> None:
    import warnings

    import pydicom.filereader

    from preprocessing.dicom_discovery import captured_pydicom_warnings

    recorded: list[str] = []
    with warnings.catch_warnings(record=True) as outer:
        warnings.simplefilter("always")
        with captured_pydicom_warnings(recorded, " while reading"):
            warnings.warn_explicit("odd VR", UserWarning, pydicom.filereader.__file__, 1)
            warnings.warn("numpy-like", RuntimeWarning, stacklevel=1)
    assert recorded == ["pydicom warning while reading: odd VR"]
    assert [str(w.message) for w in outer] == ["numpy-like"]


def _smooth_volume(n: int = 12, size: int = 128) -> np.ndarray:
    k, j, i = np.meshgrid(np.arange(n), np.arange(size), np.arange(size), indexing="ij")
    body = (j - size / 2) ** 2 + (i - size / 2) ** 2 < (0.4 * size) ** 2
    rng = np.random.default_rng(0)
    hu = np.where(body, 40 + 2 * k + j, -1000) + rng.integers(-10, 11, size=k.shape)
    return hu.astype(np.int16)


def test_one_slice_far_from_its_neighbours_is_quarantined() -> None:
    from preprocessing.volume_assembly import _slice_outlier_check

    class Header:
        def __init__(self, index: int) -> None:
            self.relative_path = f"IM{index:04d}.dcm"

    volume = _smooth_volume()
    headers = [Header(index) for index in range(len(volume))]
    assert _slice_outlier_check(volume, headers) == []  # type: ignore[arg-type]
    corrupt = volume.copy()
    corrupt[6, 40:88, 40:88] += 80  # a decoding error over a region of one slice (2304 voxels)
    with pytest.raises(AssemblyError, match=r"IM0006.dcm: slice 7 of 12 is far from its neighbours"):
        _slice_outlier_check(corrupt, headers)  # type: ignore[arg-type]
    lesion = volume.copy()
    lesion[6, 60:63, 60:63] += 300  # a small focal finding on one slice is not an error
    assert _slice_outlier_check(lesion, headers) == []  # type: ignore[arg-type]


def _scipy_outlier_counts(volume: np.ndarray) -> np.ndarray:
    """The slice check's counts as first written (float32 residuals, 2 x 2 means, scipy's uniform_filter)."""
    from scipy import ndimage

    from preprocessing.volume_assembly import SLICE_AGREE_HU, SLICE_OFF_HU, SLICE_SMOOTH

    n = volume.shape[0]
    factor = 2 if min(volume.shape[1:]) >= 256 else 1
    size = max(1, round(SLICE_SMOOTH / factor))
    counts = np.zeros(n, dtype=np.int64)

    def shrink(plane: np.ndarray) -> np.ndarray:
        if factor == 1:
            return plane
        rows, columns = (plane.shape[0] // 2) * 2, (plane.shape[1] // 2) * 2
        even = plane[:rows, :columns]
        return (even[0::2, 0::2] + even[1::2, 0::2] + even[0::2, 1::2] + even[1::2, 1::2]) * np.float32(0.25)

    for k in range(1, n - 1):
        below, current, above = (volume[i].astype(np.float32) for i in (k - 1, k, k + 1))
        agree = np.abs(below - above) < SLICE_AGREE_HU
        residual = current - 0.5 * (below + above)
        residual[~agree] = 0.0
        smoothed = ndimage.uniform_filter(shrink(residual), size)
        covered = ndimage.uniform_filter(shrink(agree.astype(np.float32)), size) > 0.9
        counts[k] = np.count_nonzero((np.abs(smoothed) > SLICE_OFF_HU) & covered) * factor * factor
    return counts


@pytest.mark.parametrize(
    "shape", [(12, 40, 30), (9, 64, 64), (6, 300, 258), (5, 512, 512), (7, 17, 16), (6, 2, 3), (6, 5, 2), (5, 257, 300)]
)
def test_slice_check_counts_equal_the_float_scipy_version(shape: tuple[int, int, int]) -> None:
    from preprocessing.volume_assembly import _slice_outlier_counts

    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        drift = np.cumsum(rng.normal(0, 15, size=shape), axis=0) / 3
        volume = np.rint(drift + rng.integers(-30, 30, size=shape)).astype(np.int16)
        volume[shape[0] // 2, : shape[1] // 2] += np.int16(rng.integers(20, 60))
        volume[1, :4, :4] = 32767  # extremes: no overflow in the integer sums
        volume[2, :4, :4] = -1024
        assert np.array_equal(_slice_outlier_counts(volume), _scipy_outlier_counts(volume))
