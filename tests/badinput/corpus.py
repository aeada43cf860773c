"""Generators of the bad-input corpus (small, fast): DICOM studies, report CSVs, params files.

Each DICOM case writes one study under its own folder and returns its StudyInstanceUID; the tests
convert the whole corpus in ONE cohort run and look up each study's manifest row.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.preprocessing.dicom_factory import SECONDARY_CAPTURE, new_uid, write_ct_series, write_enhanced_ct


@contextlib.contextmanager
def lenient_pydicom():
    """Let pydicom write values it would reject (NaN, inf, out-of-range), as broken exporters do."""
    import warnings

    from pydicom import config

    previous = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = previous


def edit(files: list[Path], which: str = "all", **values) -> None:
    """Set header values (None deletes) on all files, or on the first one only (which='first')."""
    import pydicom

    with lenient_pydicom():
        for path in files if which == "all" else files[:1]:
            ds = pydicom.dcmread(path)
            for key, value in values.items():
                if value is None:
                    if key in ds:
                        delattr(ds, key)
                else:
                    setattr(ds, key, value)
            ds.save_as(path)


def series(folder: Path, **kwargs):
    kwargs.setdefault("n_slices", 4)
    kwargs.setdefault("rows", 16)
    kwargs.setdefault("columns", 16)
    return write_ct_series(folder, **kwargs)


# --- DICOM cases: folder -> study uid -------------------------------------------------------------


def good(folder: Path) -> str:
    return series(folder).study_uid


def _edited(**values) -> Callable[[Path], str]:
    def build(folder: Path) -> str:
        fixture = series(folder)
        edit(fixture.files, **values)
        return fixture.study_uid

    return build


def _edited_first(**values) -> Callable[[Path], str]:
    def build(folder: Path) -> str:
        fixture = series(folder)
        edit(fixture.files, "first", **values)
        return fixture.study_uid

    return build


def slope_nan_one_slice(folder: Path) -> str:
    return _edited_first(RescaleSlope="NaN")(folder)


def missing_intercept(folder: Path) -> str:  # unsigned data whose intercept was dropped: air at ~0 HU
    fixture = series(folder, intercept=-1024)
    edit(fixture.files, RescaleIntercept=None, RescaleSlope=None)
    return fixture.study_uid


def slope_clipping(folder: Path) -> str:  # slope 100 (in range) turns everything into > 32000 HU
    return _edited(RescaleSlope="100", RescaleIntercept="0")(folder)


def blank_series(folder: Path) -> str:
    return series(folder, hu=np.full((4, 16, 16), -1000, dtype=np.int16)).study_uid


def duplicate_positions(folder: Path) -> str:
    fixture = series(folder)
    import pydicom

    position = list(pydicom.dcmread(fixture.files[1]).ImagePositionPatient)
    edit(fixture.files, "first", ImagePositionPatient=position)
    return fixture.study_uid


def all_same_position(folder: Path) -> str:
    return _edited(ImagePositionPatient=[0.0, 0.0, 0.0])(folder)


def outlier_position(folder: Path) -> str:  # one slice 90 m away: resampling would explode
    fixture = series(folder, n_slices=5)
    import pydicom

    for path in fixture.files:
        ds = pydicom.dcmread(path)
        if ds.InstanceNumber == 1:
            ds.ImagePositionPatient = [-100.0, -120.0, 90000.0]
            ds.save_as(path)
    return fixture.study_uid


def inconsistent_sizes(folder: Path) -> str:
    study = new_uid()
    fixture = series(folder / "a", study_uid=study)
    other = series(
        folder / "b", study_uid=study, rows=20, columns=20, n_slices=1, seed=3, origin=(-100.0, -120.0, -50.0 + 4 * 2.5)
    )
    import pydicom

    ds = pydicom.dcmread(other.files[0])
    ds.SeriesInstanceUID = fixture.series_uid
    ds.save_as(other.files[0])
    return study


def mixed_orientation(folder: Path) -> str:
    return _edited_first(ImageOrientationPatient=[1, 0, 0, 0, 0.9, 0.43589])(folder)


def truncated_file(folder: Path) -> str:
    fixture = series(folder)
    fixture.files[0].write_bytes(fixture.files[0].read_bytes()[:-100])
    return fixture.study_uid


def no_pixel_data(folder: Path) -> str:
    return _edited_first(PixelData=None)(folder)


def undecodable(folder: Path) -> str:
    import pydicom
    from pydicom.encaps import encapsulate

    fixture = series(folder)
    for path in fixture.files:  # claims JPEG baseline, holds garbage fragments
        ds = pydicom.dcmread(path)
        ds.PixelData = encapsulate([os.urandom(64)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
        ds.save_as(path)
    return fixture.study_uid


def non_ct(folder: Path) -> str:
    return series(folder, modality="MR").study_uid


def secondary_capture(folder: Path) -> str:
    return series(folder, sop_class=SECONDARY_CAPTURE, image_type=("DERIVED", "SECONDARY")).study_uid


def localizer(folder: Path) -> str:
    return series(folder, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")).study_uid


def sagittal(folder: Path) -> str:
    return series(folder, orientation=(0, 1, 0, 0, 0, -1)).study_uid


def single_slice(folder: Path) -> str:
    return series(folder, n_slices=1).study_uid


def _enhanced(**values) -> Callable[[Path], str]:
    def build(folder: Path) -> str:
        fixture = write_enhanced_ct(folder / "enhanced.dcm", n_frames=6, rows=12, columns=12)
        edit(fixture.files, **values)
        return fixture.study_uid

    return build


def dims_over_tiny_data(folder: Path) -> str:
    return _edited(Rows=4096, Columns=4096)(folder)


def replace_bytes(path: Path, old: bytes, new: bytes) -> None:
    """Patch a value in place (same length), as a broken exporter writes it (pydicom refuses to)."""
    content = path.read_bytes()
    assert len(old) == len(new) and content.count(old) == 1, (path, old)
    path.write_bytes(content.replace(old, new))


def slope_not_a_number(folder: Path) -> str:  # RescaleSlope 'abc' must not be read as "missing" (= 1)
    fixture = series(folder)
    edit(fixture.files, RescaleSlope="-0.125")
    for path in fixture.files:
        replace_bytes(path, b"-0.125", b"abc   ")
    return fixture.study_uid


def _body_fraction_hu(air_hu: int, body_hu: int, body_radius: float) -> np.ndarray:
    j, i = np.mgrid[0:16, 0:16]
    body = (j - 8) ** 2 + (i - 8) ** 2 < body_radius**2
    plane = np.where(body, body_hu + 12 * j, air_hu + i)
    return np.stack([plane + 5 * k for k in range(4)]).astype(np.int16)


def hu_inverted(folder: Path) -> str:  # positive slope, but air stored at the high end (+1000 HU)
    return series(folder, hu=_body_fraction_hu(1000, -40, 4.0)).study_uid


def fov_inside_body(folder: Path) -> str:  # soft tissue only (real small-FOV exports): a warning, not wrong
    return series(folder, hu=_body_fraction_hu(60, 20, 20.0)).study_uid


def enhanced_frames_below_groups(folder: Path) -> str:  # NumberOfFrames 10 over 20 frames and 20 per-frame items
    fixture = write_enhanced_ct(folder / "enhanced.dcm", n_frames=20, rows=12, columns=12)
    edit(fixture.files, NumberOfFrames=10)
    return fixture.study_uid


def degenerate_orientation(folder: Path) -> str:
    return _edited(ImageOrientationPatient=[1, 0, 0, 1, 0, 0])(folder)


def _same_uid_as_first(folder: Path, *, same_pixels: bool) -> str:
    import shutil

    import pydicom

    fixture = series(folder)
    if same_pixels:  # a second copy of the first file under another name
        shutil.copy(fixture.files[0], folder / "copy_of_IM0001.dcm")
    else:  # another slice given the first slice's SOPInstanceUID
        first = pydicom.dcmread(fixture.files[0])
        other = pydicom.dcmread(fixture.files[1])
        other.SOPInstanceUID = first.SOPInstanceUID
        other.save_as(fixture.files[1])
    return fixture.study_uid


def wrong_vr_encoding(folder: Path) -> str:  # meta says implicit VR, data are explicit: pydicom warns, reads fine
    fixture = series(folder)
    for path in fixture.files:
        replace_bytes(path, b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2\x00\x00\x00")
    return fixture.study_uid


def truncated_header_bytes() -> bytes:
    """The first 200 bytes of a CT file (preamble + file meta only)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return series(Path(folder), n_slices=1).files[0].read_bytes()[:200]


def gzipped_dicom_bytes() -> bytes:
    import gzip
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        return gzip.compress(series(Path(folder), n_slices=1).files[0].read_bytes())


@dataclass(frozen=True)
class DicomCase:
    name: str
    build: Callable[[Path], str]
    status: str
    reason: str  # substring of the manifest reason (of a warning for ok)


DICOM_CASES: list[DicomCase] = [
    DicomCase("good_series", good, "ok", ""),
    # rescale
    DicomCase(
        "rescale_slope_zero", _edited(RescaleSlope="0"), "quarantined", "RescaleSlope 0 is not a usable HU transform"
    ),
    DicomCase(
        "rescale_slope_nan", _edited(RescaleSlope="NaN"), "quarantined", "RescaleSlope nan is not a usable HU transform"
    ),
    DicomCase("rescale_slope_nan_one_slice", slope_nan_one_slice, "quarantined", "RescaleSlope nan"),
    DicomCase("rescale_slope_absurd", _edited(RescaleSlope="1e6"), "quarantined", "RescaleSlope 1e+06 is not a usable"),
    DicomCase("rescale_slope_tiny", _edited(RescaleSlope="1e-6"), "quarantined", "RescaleSlope 1e-06 is not a usable"),
    DicomCase("rescale_slope_negative_huge", _edited(RescaleSlope="-5000"), "quarantined", "RescaleSlope -5000"),
    DicomCase(
        "rescale_intercept_inf", _edited(RescaleIntercept="inf"), "quarantined", "RescaleIntercept inf is not a usable"
    ),
    DicomCase("rescale_intercept_nan", _edited(RescaleIntercept="NaN"), "quarantined", "RescaleIntercept nan"),
    DicomCase("rescale_intercept_absurd", _edited(RescaleIntercept="-1e7"), "quarantined", "RescaleIntercept -1e+07"),
    # resulting HU range
    DicomCase(
        "hu_missing_intercept",
        missing_intercept,
        "quarantined",
        "no voxel below -200 HU (no air or fat) and RescaleIntercept missing",
    ),
    DicomCase("hu_no_air_with_intercept", fov_inside_body, "ok", "no voxel below -200 HU"),  # warning only
    DicomCase(
        "hu_intercept_zero_air_at_plus_24",
        _edited(RescaleIntercept="0"),
        "quarantined",
        "implausible HU distribution: 50% of voxels above +500 HU",
    ),
    DicomCase("hu_inverted_air_high", hu_inverted, "quarantined", "implausible HU distribution"),
    DicomCase(
        "rescale_slope_negative_inverted",
        _edited(RescaleSlope="-1", RescaleIntercept="1024"),
        "quarantined",
        "RescaleSlope -1 is negative: HU would be inverted",
    ),
    DicomCase("rescale_slope_not_a_number", slope_not_a_number, "quarantined", "RescaleSlope 'abc' is not a number"),
    DicomCase(
        "bits_allocated_8_over_16_bit_data",
        _edited(BitsAllocated=8, BitsStored=8, HighBit=7),
        "quarantined",
        "too many pixel data bytes: 512, header expects 256",
    ),
    DicomCase(
        "bits_stored_above_allocated",
        _edited(BitsStored=20),
        "quarantined",
        "BitsStored 20 outside 1..BitsAllocated (16)",
    ),
    DicomCase(
        "enhanced_frames_below_per_frame_groups",
        enhanced_frames_below_groups,
        "quarantined",
        "NumberOfFrames 10 but PerFrameFunctionalGroupsSequence holds 20 items",
    ),
    DicomCase("iop_degenerate_parallel", degenerate_orientation, "quarantined", "degenerate ImageOrientationPatient"),
    DicomCase(
        "duplicate_uid_conflicting_pixels",
        lambda folder: _same_uid_as_first(folder, same_pixels=False),
        "quarantined",
        "conflicting duplicate SOPInstanceUID",
    ),
    DicomCase(
        "duplicate_uid_identical_copy",
        lambda folder: _same_uid_as_first(folder, same_pixels=True),
        "ok",
        "IM0001.dcm (ignored)",
    ),
    DicomCase("pydicom_warning_recorded", wrong_vr_encoding, "ok", "pydicom warning while reading the header"),
    DicomCase("hu_mass_clipping", slope_clipping, "quarantined", "implausible HU range"),
    DicomCase("hu_blank_series", blank_series, "quarantined", "under 100 HU of contrast"),
    # geometry values
    DicomCase(
        "ipp_nan",
        _edited_first(ImagePositionPatient=["NaN", "0", "0"]),
        "quarantined",
        "ImagePositionPatient contains NaN or infinity",
    ),
    DicomCase(
        "ipp_inf",
        _edited_first(ImagePositionPatient=["0", "0", "inf"]),
        "quarantined",
        "ImagePositionPatient contains NaN or infinity",
    ),
    DicomCase(
        "ipp_absurd",
        _edited_first(ImagePositionPatient=["0", "0", "1e9"]),
        "quarantined",
        "ImagePositionPatient beyond",
    ),
    DicomCase(
        "iop_nan",
        _edited(ImageOrientationPatient=["1", "0", "NaN", "0", "1", "0"]),
        "quarantined",
        "ImageOrientationPatient contains NaN",
    ),
    DicomCase(
        "iop_zero_vector", _edited(ImageOrientationPatient=[0, 0, 0, 0, 1, 0]), "quarantined", "not a unit vector"
    ),
    DicomCase("pixel_spacing_nan", _edited(PixelSpacing=["NaN", "0.8"]), "quarantined", "PixelSpacing contains NaN"),
    DicomCase(
        "pixel_spacing_zero", _edited(PixelSpacing=["0", "0.8"]), "quarantined", "PixelSpacing (0.0, 0.8) outside"
    ),
    DicomCase("slice_thickness_nan", _edited(SliceThickness="NaN"), "quarantined", "SliceThickness nan"),
    DicomCase("slice_positions_outlier", outlier_position, "quarantined", "resampling would need"),
    # pixel data size vs header (checked before allocation / decoding)
    DicomCase(
        "multiframe_claims_1e8_frames",
        _enhanced(NumberOfFrames=100_000_000),
        "quarantined",
        "above 20000 (implausible frame count in header)",
    ),
    DicomCase(
        "multiframe_claims_more_frames",
        _enhanced(NumberOfFrames=5000),
        "quarantined",
        "pixel data size inconsistent with header",
    ),
    DicomCase("multiframe_zero_frames", _enhanced(NumberOfFrames=0), "quarantined", "NumberOfFrames 0"),
    DicomCase("huge_dimensions", _edited(Rows=60000, Columns=60000), "quarantined", "above 8192"),
    DicomCase(
        "dimensions_over_tiny_data", dims_over_tiny_data, "quarantined", "pixel data size inconsistent with header"
    ),
    # structure (pre-existing behaviour, kept under test)
    DicomCase("missing_pixel_data", no_pixel_data, "quarantined", "no pixel data"),
    DicomCase(
        "missing_geometry",
        _edited(ImagePositionPatient=None, ImageOrientationPatient=None),
        "quarantined",
        "no ImageOrientationPatient / ImagePositionPatient",
    ),
    DicomCase("missing_pixel_spacing", _edited_first(PixelSpacing=None), "quarantined", "without PixelSpacing"),
    DicomCase("duplicate_positions", duplicate_positions, "quarantined", "share a position"),
    DicomCase("all_same_position", all_same_position, "quarantined", "all 4 slices are at the same position"),
    DicomCase("inconsistent_sizes", inconsistent_sizes, "quarantined", "inconsistent image sizes"),
    DicomCase("inconsistent_orientation", mixed_orientation, "quarantined", "inconsistent slice orientation"),
    DicomCase("non_ct_modality", non_ct, "quarantined", "modality MR (not CT)"),
    DicomCase("secondary_capture", secondary_capture, "quarantined", "is not a CT image"),
    DicomCase("localizer_only", localizer, "quarantined", "localizer/scout"),
    DicomCase("sagittal_only", sagittal, "quarantined", "not axial"),
    DicomCase("single_slice", single_slice, "quarantined", "fewer than convert.min_slices=3"),
    DicomCase("truncated_file", truncated_file, "quarantined", "truncated pixel data (cannot decode)"),
    DicomCase("undecodable_compressed", undecodable, "quarantined", "1.2.840.10008.1.2.4.50"),
]

# files that belong to no study (unreadable.parquet): name -> (bytes or a bytes factory, expected reason substring)
UNREADABLE_CASES: dict[str, tuple[bytes | Callable[[], bytes], str]] = {
    "zero_byte.dcm": (b"", "zero-byte file"),
    "junk.bin": (bytes(range(256)) * 12, "not a"),
    "notes.txt": (b"not a dicom file\n", "not a"),
    "truncated_200_bytes.dcm": (truncated_header_bytes, "truncated DICOM file (200 bytes): it ends inside the header"),
    "gzipped.dcm": (gzipped_dicom_bytes, "gzip-compressed file"),
}


# --- report CSV cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportCase:
    name: str
    content: bytes
    error: str | None = None  # ReportsFileError text (file-level), else per-row statuses
    statuses: tuple[str, ...] = ()


_HEADER = b"study_key,Findings,Impression\n"
_OK = b"S1,No pleural effusion. Lungs are clear.,Normal study.\n"

REPORT_CASES: list[ReportCase] = [
    ReportCase("missing_id_column", b"key,Findings,Impression\n" + _OK, error="missing column(s) ['study_key']"),
    ReportCase("missing_text_columns", b"study_key,Other\nS1,x\n", error="missing column(s)"),
    ReportCase("empty_file", b"", error="empty file (no header row)"),
    ReportCase("header_only", _HEADER, statuses=()),
    ReportCase("empty_text", _HEADER + _OK + b"S2,,\n", statuses=("ok", "empty")),
    ReportCase("empty_id", _HEADER + _OK + b",Heart size normal.,Normal.\n", statuses=("ok", "missing_id")),
    ReportCase("duplicate_ids", _HEADER + _OK + _OK.replace(b"clear", b"hazy"), statuses=("ok", "duplicate_id")),
    ReportCase("wrong_field_count", _HEADER + _OK + b"S3,only findings\n", statuses=("ok", "malformed")),
    ReportCase(
        "non_utf8_bytes",
        _HEADER + _OK + "S4,Nodule in the r\u00e9ght lobe.,Normal.\n".encode("latin-1"),
        statuses=("ok", "ok"),
    ),
    ReportCase(
        "huge_report", _HEADER + b"S5,\"" + b"The lungs are clear. " * 2000 + b"\",Normal.\n", statuses=("truncated",)
    ),
    ReportCase(
        "non_english",
        _HEADER
        + "S6,\u041b\u0451\u0433\u043a\u0438\u0435 \u0431\u0435\u0437 \u043e\u0441\u043e\u0431\u0435\u043d\u043d\u043e\u0441\u0442\u0435\u0439 \u0438 \u043e\u0447\u0430\u0433\u043e\u0432,\u041d\u043e\u0440\u043c\u0430\n".encode(),  # noqa: E501 (one CSV row of Cyrillic text)
        statuses=("non_english",),
    ),
    ReportCase("unterminated_quote", _HEADER + _OK + b"S7,\"never closed,Normal.\n", statuses=("ok", "malformed")),
]


# --- params.yaml cases ----------------------------------------------------------------------------

PARAMS_CASES: list[tuple[str, str, str]] = [  # (name, yaml text, expected error substring)
    ("unknown_key", "convert:\n  workerz: 2\n", "key 'convert.workerz'"),
    ("wrong_type", "convert:\n  min_slices: many\n", "key 'convert.min_slices'"),
    ("bad_yaml", "convert: [unclosed\n", "not valid YAML"),
    ("profile_overrides", "profiles:\n  demo:\n    train: {steps: 3}\n", "profiles are no longer merged"),
    ("top_level_list", "- a\n- b\n", "top level must be a mapping"),
    ("out_of_range", "model:\n  text:\n    vocab_min_patients: 0\n", "key 'model.text.vocab_min_patients'"),
    # closed sets and ranges a stage would reject later (as data) are refused at load, naming key and value
    (
        "series_preference_unknown",
        "convert:\n  series_preference: [fattest]\n",
        "key 'convert.series_preference.0': Input should be 'thinnest', 'soft_tissue_kernel', 'most_slices' or "
        "'largest_coverage' (got 'fattest')",
    ),
    (
        "spacing_negative",
        "grid:\n  spacing_zyx_mm: [-8, 4, 4]\n",
        "key 'grid.spacing_zyx_mm.0': Input should be greater than 0 (got -8)",
    ),
    (
        "crop_zero",
        "grid:\n  crop_zyx: [0, 64, 96]\n",
        "key 'grid.crop_zyx.0': Input should be greater than or equal to 1 (got 0)",
    ),
    ("window_reversed", "grid:\n  hu_window: [300, -100]\n", "hu_window must be (low, high) with low < high"),
    ("split_ratio_above_one", "split:\n  train: 1.5\n  val: -0.25\n  test: -0.25\n", "key 'split.train'"),
    ("port_out_of_range", "services:\n  prefect_port: 70000\n", "key 'services.prefect_port'"),
    ("batch_size_zero", "train:\n  batch_size: 0\n", "key 'train.batch_size'"),
    ("patch_zero", "model:\n  vision:\n    patch_zyx: [0, 16, 16]\n", "key 'model.vision.patch_zyx.0'"),
]
