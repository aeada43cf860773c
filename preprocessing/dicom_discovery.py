"""Find DICOM files in any folder tree and group them by study and series (header-only reads).

Every file under the input root ends up in exactly one place: a :class:`SliceHeader` inside a
:class:`SeriesFiles` of a :class:`StudyFiles`, or an :class:`UnreadableFile` (junk, zero-byte,
unreadable, DICOMDIR, no study identifier). Headers of plain files are parsed by the lean reader
(:func:`lean_header`, from the one read that also hashes the file); anything else with
``dcmread(stop_before_pixels=True, specific_tags=...)``. Pixel data are touched only during assembly.

Values that are PHI (PatientID, PatientName, ...) are read here only so that they can be
pseudonymised (PatientID) or scrubbed from free text (the rest); they never leave this stage.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from core import layout

logger = logging.getLogger(__name__)

DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"

# header tags needed for grouping, selection and geometry (Enhanced CT functional groups included)
HEADER_TAGS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "SeriesDescription",
    "SeriesNumber",
    "ConvolutionKernel",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "InstanceNumber",
    "RescaleSlope",
    "RescaleIntercept",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "SamplesPerPixel",
    "GantryDetectorTilt",
    "PixelPaddingValue",
    "PixelPaddingRangeLimit",
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyDescription",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)

# values whose text must never appear in any output (used by the scrubber)
PHI_TAGS: tuple[str, ...] = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyDate",
)


@dataclass(frozen=True)
class SliceHeader:
    """What one file (or one frame of a multi-frame file) tells us before its pixels are read."""

    path: Path  # absolute path
    relative_path: str  # relative to the input root (for messages / manifests)
    frame_index: int | None  # None for single-frame files, else 0-based frame
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    image_type: tuple[str, ...]
    position_mm: tuple[float, float, float] | None  # ImagePositionPatient (LPS)
    orientation: tuple[float, float, float, float, float, float] | None  # IOP (LPS)
    pixel_spacing_mm: tuple[float, float] | None  # (row spacing, column spacing)
    slice_thickness_mm: float | None
    rows: int
    columns: int
    number_of_frames: int
    instance_number: int | None
    rescale_slope: float | None
    rescale_intercept: float | None
    samples_per_pixel: int
    gantry_tilt_deg: float | None
    transfer_syntax: str = ""
    bits_allocated: int = 16
    bits_stored: int = 16
    pixel_representation: int = 0
    padding_value: int | None = None
    padding_limit: int | None = None
    defect: str | None = None  # header inconsistent with the file (quarantine reason); pixels never read


@dataclass
class SeriesFiles:
    """All slices of one series (grouped by SeriesInstanceUID)."""

    series_uid: str
    description: str
    series_number: int | None
    convolution_kernel: str
    slices: list[SliceHeader] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return sorted({s.path for s in self.slices})


@dataclass
class StudyFiles:
    """All series of one study plus the PHI values needed to pseudonymise / scrub it."""

    study_key: str  # value of the configured study key tag, or core.layout.folder_study_key (hashed before output)
    patient_key: str | None  # PatientID (hashed before output)
    study_uid: str = ""  # StudyInstanceUID ("" when absent): for the private identity map only
    accession_number: str = ""  # for the private identity map only
    folder: str = ""  # the study's folder relative to the raw DICOM root (POSIX): for the identity map only
    series: dict[str, SeriesFiles] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)  # every file attributed to the study
    problems: list[str] = field(default_factory=list)  # per-file problems seen during discovery
    phi_terms: set[str] = field(default_factory=set)  # text to scrub from anything written
    file_hashes: dict[Path, str] = field(default_factory=dict)  # SHA-256 per file (scan_dicom_tree(hash_files=True))

    @property
    def n_files(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class UnreadableFile:
    relative_path: str
    reason: str


@dataclass
class Discovery:
    studies: list[StudyFiles]
    unreadable: list[UnreadableFile]
    n_files_seen: int


def _walk_files(root: Path, folder: str = "") -> Iterator[tuple[str, os.stat_result | None]]:
    """Every file under ``root`` (its POSIX path relative to ``root``) with its stat (None when it cannot be
    stat-ed), in ``os.walk`` order (a folder's files by name, then its sub-folders by name; symlinked folders
    are not entered), skipping our own ``.<name>.tmp-*`` files. One ``os.scandir`` per folder: the stat is the
    only per-file system call, and no ``Path`` is built (a no-op run over 10^5 files builds none)."""
    try:
        with os.scandir(os.path.join(root, folder) if folder else root) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return
    folders = []
    for entry in entries:
        try:
            is_folder = entry.is_dir()
        except OSError:
            is_folder = False
        if is_folder:
            if not entry.is_symlink():
                folders.append(entry)
            continue
        if entry.name.startswith(".") and ".tmp-" in entry.name:
            continue
        try:
            stat: os.stat_result | None = entry.stat()
        except OSError:
            stat = None
        yield folder + entry.name, stat
    for sub in folders:
        yield from _walk_files(root, f"{folder}{sub.name}/")


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        items = [float(v) for v in value]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        try:
            items = [float(value)]  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
    return tuple(items) if len(items) == count else None


def _float_or_none(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        try:
            return float(value[0])  # type: ignore[index]
        except Exception:
            return None


def _int_or_none(value: object) -> int | None:
    try:
        return int(value) if value not in (None, "") else None  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _functional(ds, frame_index: int, sequence: str, attribute: str):
    """Value of ``sequence[0].attribute`` from the per-frame group, else the shared group."""
    for group_name, index in (("PerFrameFunctionalGroupsSequence", frame_index), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(group_name)
        if not groups or len(groups) <= index:
            continue
        item = groups[index].get(sequence)
        if item and len(item) and attribute in item[0]:
            return item[0].get(attribute)
    return None


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    return str(value)


def _padding(ds, keyword: str) -> int | None:
    element = ds.get(keyword)
    if element is None:
        return None
    try:
        value = int(element)
    except (TypeError, ValueError):
        try:  # ambiguous US/SS read as raw bytes
            raw = bytes(element)
            signed = (_int_or_none(ds.get("PixelRepresentation")) or 0) == 1
            value = int.from_bytes(raw[:2], "little", signed=signed)
        except Exception:
            return None
    return value


def sop_class_of(ds) -> str:
    """SOPClassUID, falling back to the file meta's MediaStorageSOPClassUID (some exports omit it)."""
    value = str(ds.get("SOPClassUID", "") or "").strip()
    if not value:
        meta = getattr(ds, "file_meta", None)
        value = str(meta.get("MediaStorageSOPClassUID", "") or "").strip() if meta is not None else ""
    return value


# files that are not DICOM but a compressed container of one (first bytes -> what it is)
CONTAINER_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip-compressed file (decompress it first, e.g. gunzip)"),
    (b"PK\x03\x04", "ZIP archive (extract it first)"),
    (b"BZh", "bzip2-compressed file (decompress it first, e.g. bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed file (decompress it first, e.g. unxz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed file (decompress it first, e.g. unzstd)"),
)


def container_problem(path: Path) -> str | None:
    """What a file is when it is a compressed container instead of DICOM (None otherwise)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    for magic, what in CONTAINER_MAGIC:
        if head.startswith(magic):
            return f"{what}, not a DICOM file"
    return None


_PIXEL_DATA_TAGS = (b"\xe0\x7f\x10\x00", b"\x7f\xe0\x00\x10")  # (7FE0,0010) little / big endian


def truncation_problem(ds, path: Path, size: int) -> str | None:
    """A CT image file that ends inside its header: no dataset elements (or no SeriesInstanceUID / Rows)
    and no pixel data element anywhere in the file. Deflated files are not checked (their body is compressed)."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "get", lambda *_: "")("TransferSyntaxUID", "") or "")
    if syntax == DEFLATED_SYNTAX:
        return None
    image = len(ds) == 0 or sop_class_of(ds) in ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")
    if not image or ("SeriesInstanceUID" in ds and "Rows" in ds):
        return None
    try:
        content = path.read_bytes() if size <= 64 << 20 else b""
    except OSError:
        return None
    if not content or any(tag in content for tag in _PIXEL_DATA_TAGS):
        return None
    last = f"; last element {list(ds.keys())[-1]}" if len(ds) else ""
    return (
        f"truncated DICOM file ({size} bytes): it ends inside the header ({len(ds)} data element(s){last}, "
        "no SeriesInstanceUID / Rows, no pixel data); re-copy or re-export it"
    )


# Pixel data sanity, checked on the header BEFORE any allocation / decoding (docs/bad_inputs.md)
MAX_IMAGE_DIMENSION = 8192  # Rows / Columns above this are not a CT slice
MAX_FRAMES_PER_FILE = 20000  # Enhanced CT files hold a series (~1-3000 frames), never more
MAX_DECODED_BYTES_PER_FILE = 4 << 30  # 4 GiB of decoded pixels from one file
MAX_COMPRESSION_RATIO = 5000  # decoded bytes / file bytes for encapsulated (compressed) syntaxes
UNCOMPRESSED_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
DEFLATED_SYNTAX = "1.2.840.10008.1.2.1.99"


def pixel_data_defect(ds, file_size: int | None) -> str | None:
    """Why the header's pixel dimensions cannot match the file (None when plausible).

    Uses only header values and the file size, so a header claiming a billion frames or 60000 x
    60000 pixels over a few kilobytes is rejected in constant time, never decoded or allocated."""
    rows = _int_or_none(ds.get("Rows")) or 0
    columns = _int_or_none(ds.get("Columns")) or 0
    raw_frames = _int_or_none(ds.get("NumberOfFrames"))
    frames = 1 if raw_frames is None else raw_frames
    if raw_frames is not None and raw_frames < 1:
        return f"NumberOfFrames {raw_frames} (must be >= 1)"
    if rows > MAX_IMAGE_DIMENSION or columns > MAX_IMAGE_DIMENSION:
        return f"Rows x Columns {rows} x {columns} above {MAX_IMAGE_DIMENSION} (implausible image size in header)"
    if frames > MAX_FRAMES_PER_FILE:
        return f"NumberOfFrames {frames} above {MAX_FRAMES_PER_FILE} (implausible frame count in header)"
    bits = _int_or_none(ds.get("BitsAllocated")) or 16
    samples = _int_or_none(ds.get("SamplesPerPixel")) or 1
    expected = (rows * columns * frames * samples * bits + 7) // 8
    if expected > MAX_DECODED_BYTES_PER_FILE:
        return (
            f"header claims {expected} bytes of pixel data ({frames} frame(s) "
            f"of {rows} x {columns}), above {MAX_DECODED_BYTES_PER_FILE}"
        )
    if file_size is None or expected == 0:
        return None
    syntax = str(getattr(getattr(ds, "file_meta", None), "get", lambda *_: "")("TransferSyntaxUID", "") or "")
    claim = f"header claims {frames} frame(s) of {rows} x {columns} x {bits} bits = {expected} bytes"
    if syntax in UNCOMPRESSED_SYNTAXES or not syntax:
        if expected > file_size:
            return f"pixel data size inconsistent with header: {claim}, file holds only {file_size} bytes"
    elif syntax != DEFLATED_SYNTAX:  # encapsulated: one item (>= 8 bytes) per frame at least
        if frames * 8 > file_size or expected > file_size * MAX_COMPRESSION_RATIO:
            return f"pixel data size inconsistent with header: {claim} from a {file_size}-byte compressed file"
    elif expected > file_size * MAX_COMPRESSION_RATIO:
        return f"pixel data size inconsistent with header: {claim} from a {file_size}-byte deflated file"
    return None


def orientation_problem(orientation: tuple[float, ...] | None) -> str | None:
    """Why an ImageOrientationPatient cannot be used (NaN / inf, not two perpendicular unit vectors), or None."""
    import math

    if orientation is None:
        return None
    if not all(math.isfinite(v) for v in orientation):
        return f"ImageOrientationPatient contains NaN or infinity ({', '.join(f'{v:g}' for v in orientation)})"
    for label, vector in (("row", orientation[:3]), ("column", orientation[3:])):
        norm = math.sqrt(sum(v * v for v in vector))
        if not 0.9 <= norm <= 1.1:
            return f"ImageOrientationPatient {label} direction is not a unit vector (norm {norm:.3g})"
    row, column = orientation[:3], orientation[3:]
    cosine = sum(a * b for a, b in zip(row, column, strict=True)) / (
        math.sqrt(sum(v * v for v in row)) * math.sqrt(sum(v * v for v in column))
    )
    if abs(cosine) > 0.99:
        return (
            f"degenerate ImageOrientationPatient ({', '.join(f'{v:g}' for v in orientation)}): row and column "
            "directions are parallel (expected two perpendicular unit vectors)"
        )
    if abs(cosine) > 1e-3:
        return (
            f"ImageOrientationPatient row and column directions are not perpendicular (cosine {cosine:.3g}, expected 0)"
        )
    return None


# numeric header values: (keyword, what is expected); a present value that is not a number is a defect,
# never "missing" (RescaleSlope 'abc' must not become 1)
NUMERIC_TAGS: tuple[tuple[str, str], ...] = (
    ("RescaleSlope", "a decimal number such as 1"),
    ("RescaleIntercept", "a decimal number such as -1024"),
    ("ImagePositionPatient", "3 decimal numbers (mm)"),
    ("ImageOrientationPatient", "6 decimal numbers (direction cosines)"),
    ("PixelSpacing", "2 decimal numbers (mm)"),
    ("SliceThickness", "a decimal number (mm)"),
    ("GantryDetectorTilt", "a decimal number (degrees)"),
    ("NumberOfFrames", "an integer"),
    ("Rows", "an integer"),
    ("Columns", "an integer"),
    ("BitsAllocated", "an integer"),
    ("BitsStored", "an integer"),
    ("PixelRepresentation", "0 or 1"),
    ("SamplesPerPixel", "an integer"),
)
FUNCTIONAL_NUMERIC_TAGS: tuple[tuple[str, str, str], ...] = (
    ("PixelValueTransformationSequence", "RescaleSlope", "a decimal number such as 1"),
    ("PixelValueTransformationSequence", "RescaleIntercept", "a decimal number such as -1024"),
    ("PlanePositionSequence", "ImagePositionPatient", "3 decimal numbers (mm)"),
    ("PlaneOrientationSequence", "ImageOrientationPatient", "6 decimal numbers (direction cosines)"),
    ("PixelMeasuresSequence", "PixelSpacing", "2 decimal numbers (mm)"),
)


def _not_numeric(value: object) -> bool:
    if value is None or value == "":
        return False
    items = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]  # type: ignore[call-overload]
    for item in items:
        try:
            float(item)
        except (TypeError, ValueError):
            return True
    return False


def _shown(value: object) -> str:
    return repr(_text(value)[:40])


def header_value_defect(ds) -> str | None:
    """A numeric header value that is not a number, or an Enhanced CT whose NumberOfFrames disagrees with
    its per-frame functional groups (None when neither)."""
    for keyword, expected in NUMERIC_TAGS:
        value = ds.get(keyword)
        if _not_numeric(value):
            return f"{keyword} {_shown(value)} is not a number (expected {expected})"
    for group_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for index, group in enumerate(ds.get(group_name) or ()):
            for sequence, keyword, expected in FUNCTIONAL_NUMERIC_TAGS:
                items = group.get(sequence)
                value = items[0].get(keyword) if items and len(items) else None
                if _not_numeric(value):
                    return (
                        f"{keyword} {_shown(value)} in {group_name} item {index + 1} is not a number "
                        f"(expected {expected})"
                    )
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    frames = _int_or_none(ds.get("NumberOfFrames"))
    if per_frame is not None and frames is not None and len(per_frame) != frames:
        return (
            f"NumberOfFrames {frames} but PerFrameFunctionalGroupsSequence holds {len(per_frame)} items "
            "(expected one item per frame: frames would be dropped or invented)"
        )
    return None


def headers_from_dataset(ds, path: Path, relative_path: str, *, file_size: int | None = None) -> list[SliceHeader]:
    """One :class:`SliceHeader` per slice: one for classic images, one per frame for Enhanced CT.

    A header whose pixel dimensions cannot fit the file gives ONE header carrying ``defect`` (so
    the cost stays bounded by the file, not by what NumberOfFrames claims)."""
    defect = pixel_data_defect(ds, file_size) or header_value_defect(ds)
    frames = 1 if defect else (_int_or_none(ds.get("NumberOfFrames")) or 1)
    common = dict(
        path=path,
        relative_path=relative_path,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        sop_class_uid=sop_class_of(ds),
        modality=str(ds.get("Modality", "")).upper(),
        image_type=tuple(str(v).strip().upper() for v in (ds.get("ImageType") or ())),
        rows=_int_or_none(ds.get("Rows")) or 0,
        columns=_int_or_none(ds.get("Columns")) or 0,
        number_of_frames=frames,
        samples_per_pixel=_int_or_none(ds.get("SamplesPerPixel")) or 1,
        gantry_tilt_deg=_float_or_none(ds.get("GantryDetectorTilt")),
        slice_thickness_mm=_float_or_none(ds.get("SliceThickness")),
        transfer_syntax=str(
            getattr(getattr(ds, "file_meta", None), "get", lambda *_: "")("TransferSyntaxUID", "") or ""
        ),
        bits_allocated=_int_or_none(ds.get("BitsAllocated")) or 16,
        bits_stored=_int_or_none(ds.get("BitsStored")) or _int_or_none(ds.get("BitsAllocated")) or 16,
        pixel_representation=_int_or_none(ds.get("PixelRepresentation")) or 0,
        padding_value=_padding(ds, "PixelPaddingValue"),
        padding_limit=_padding(ds, "PixelPaddingRangeLimit"),
        defect=defect,
    )
    enhanced = not defect and (frames > 1 or "PerFrameFunctionalGroupsSequence" in ds)
    if not enhanced:
        return [
            SliceHeader(
                frame_index=None,
                position_mm=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_floats(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
                pixel_spacing_mm=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
                instance_number=_int_or_none(ds.get("InstanceNumber")),
                rescale_slope=_float_or_none(ds.get("RescaleSlope")),
                rescale_intercept=_float_or_none(ds.get("RescaleIntercept")),
                **common,
            )
        ]
    out: list[SliceHeader] = []
    for index in range(frames):
        thickness = _float_or_none(_functional(ds, index, "PixelMeasuresSequence", "SliceThickness"))
        fields = dict(common)
        if thickness is not None:
            fields["slice_thickness_mm"] = thickness
        out.append(
            SliceHeader(
                frame_index=index,
                position_mm=_floats(_functional(ds, index, "PlanePositionSequence", "ImagePositionPatient"), 3),  # type: ignore[arg-type]
                orientation=_floats(
                    _functional(ds, index, "PlaneOrientationSequence", "ImageOrientationPatient")
                    or ds.get("ImageOrientationPatient"),
                    6,
                ),  # type: ignore[arg-type]
                pixel_spacing_mm=_floats(
                    _functional(ds, index, "PixelMeasuresSequence", "PixelSpacing") or ds.get("PixelSpacing"), 2
                ),  # type: ignore[arg-type]
                instance_number=_int_or_none(ds.get("InstanceNumber")),
                rescale_slope=_float_or_none(
                    _functional(ds, index, "PixelValueTransformationSequence", "RescaleSlope") or ds.get("RescaleSlope")
                ),
                rescale_intercept=_float_or_none(
                    _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept")
                    if _functional(ds, index, "PixelValueTransformationSequence", "RescaleIntercept") is not None
                    else ds.get("RescaleIntercept")
                ),
                **fields,  # type: ignore[arg-type]
            )
        )
    return out


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Turn off pydicom's value validation while reading: its warnings quote element values
    (e.g. an invalid date or name), which would put PHI into logs. Restored afterwards."""
    from pydicom import config

    previous = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.IGNORE
    try:
        yield
    finally:
        config.settings.reading_validation_mode = previous


@contextlib.contextmanager
def captured_pydicom_warnings(into: list[str], context: str = ""):
    """Record pydicom's (and its decoder plugins') warnings into ``into`` instead of stderr; any other
    warning is re-issued unchanged. Messages are cut to 200 characters and de-duplicated."""
    import warnings as python_warnings

    caught: list[python_warnings.WarningMessage] = []
    try:
        with python_warnings.catch_warnings(record=True) as caught:  # type: ignore[assignment]
            python_warnings.simplefilter("always")
            yield
    finally:
        for item in caught:
            source = item.filename.replace("\\", "/")
            if not issubclass(item.category, RuntimeWarning) and any(name in source for name in WARNING_SOURCES):
                message = f"pydicom warning{context}: {str(item.message).splitlines()[0][:200]}"
                if message not in into:
                    into.append(message)
            else:
                python_warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


WARNING_SOURCES = ("/pydicom/", "/pylibjpeg", "/openjpeg/", "/libjpeg/", "/gdcm")


# ---- lean header reader -------------------------------------------------------------------------------------
# pydicom costs ~1-3 ms per header (plus ~0.3 s to import); a cohort is mostly header reads. The lean reader
# below parses the few HEADER_TAGS of an ordinary file straight from its bytes (struct, ~50 us) and returns a
# dict that answers ``get`` / ``in`` as pydicom's Dataset does for those keywords. It handles only the plain
# case and returns None for anything else, so pydicom reads the file as before: no preamble, big-endian,
# deflated or unknown transfer syntax, an Enhanced CT functional group (a sequence we need), a VR other than
# the dictionary's for a tag we use, a truncated element, non-ASCII / leading-space / multi-valued text where
# one value is expected, a number pydicom might parse differently, an empty numeric value, unusual character
# sets. tests/preprocessing/test_convert_lean_header.py compares both readers record by record.

_LEAN_TAGS: dict[int, tuple[str, str]] = {
    0x00080005: ("SpecificCharacterSet", "CS"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00080080: ("InstitutionName", "LO"),
    0x00080090: ("ReferringPhysicianName", "PN"),
    0x00081030: ("StudyDescription", "LO"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100010: ("PatientName", "PN"),
    0x00100020: ("PatientID", "LO"),
    0x00100030: ("PatientBirthDate", "DA"),
    0x00180050: ("SliceThickness", "DS"),
    0x00181120: ("GantryDetectorTilt", "DS"),
    0x00181210: ("ConvolutionKernel", "SH"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200011: ("SeriesNumber", "IS"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00280120: ("PixelPaddingValue", "US or SS"),
    0x00280121: ("PixelPaddingRangeLimit", "US or SS"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
}
# a functional group (Enhanced CT) or a DICOMDIR record: pydicom reads those files
_LEAN_GIVE_UP_TAGS = frozenset({0x52009229, 0x52009230, 0x00041220})
# tags whose value may hold several values (pydicom: MultiValue; here: a list)
_LEAN_MULTI = frozenset(
    {"ImageType", "ConvolutionKernel", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"}
)
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL", b"SS"}
    | {b"ST", b"TM", b"UI", b"UL", b"US"}
)
_LEAN_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"}
    | {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 201, 202, 203)}
)
# character sets whose decoding of printable ASCII bytes is ASCII (the lean reader accepts ASCII values only)
_LEAN_CHARSETS = frozenset(
    {"", "ISO_IR 6", "ISO 2022 IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144"}
    | {"ISO_IR 126", "ISO_IR 127", "ISO_IR 138", "ISO_IR 148", "ISO_IR 166", "ISO_IR 192", "GB18030", "GBK"}
)
_PIXEL_TAGS_FROM = 0x7FE00008  # (7FE0,0008) float / (7FE0,0009) double / (7FE0,0010) pixel data: stop_before_pixels
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"-?\d{1,12}")


class _NotLean(Exception):
    """The file is not the plain case: pydicom reads it."""


class LeanHeader(dict):
    """keyword -> value for the HEADER_TAGS present in a file, as pydicom's Dataset.get returns them (str,
    float, int, or a list where pydicom gives a MultiValue); ``file_meta`` likewise."""

    file_meta: dict


def _skip_undefined(data: bytes, pos: int, explicit: bool, end: int) -> int:
    """Position after an undefined-length sequence value starting at ``pos`` (items up to its delimiter)."""
    while True:
        if pos + 8 > end:
            raise _NotLean
        group, element, length = struct.unpack_from("<HHI", data, pos)
        tag = group << 16 | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise _NotLean
        if length != _UNDEFINED:
            pos += length
            continue
        while True:  # an undefined-length item: its elements up to the item delimiter
            if pos + 8 > end:
                raise _NotLean
            group, element = struct.unpack_from("<HH", data, pos)
            if (group << 16 | element) == _ITEM_END:
                pos += 8
                break
            pos = _skip_element(data, pos, explicit, end)
        if pos > end:
            raise _NotLean


def _skip_element(data: bytes, pos: int, explicit: bool, end: int) -> int:
    """Position after the (nested) element at ``pos``."""
    if explicit:
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length = struct.unpack_from("<I", data, pos + 8)[0]
            pos += 12
        elif vr in _SHORT_VRS:
            length = struct.unpack_from("<H", data, pos + 6)[0]
            pos += 8
        else:
            raise _NotLean
        if length == _UNDEFINED:
            return _skip_undefined(data, pos, explicit and vr != b"UN", end)
    else:
        length = struct.unpack_from("<I", data, pos + 4)[0]
        pos += 8
        if length == _UNDEFINED:
            return _skip_undefined(data, pos, False, end)
    pos += length
    if pos > end:
        raise _NotLean
    return pos


def _lean_text(raw: bytes, keyword: str, vr: str) -> object:
    """pydicom's value of a text / number element, or _NotLean where the two readers might differ."""
    text = raw.decode("ascii").rstrip("\x00 ")  # non-ASCII: UnicodeDecodeError (the character set decides)
    if not text:
        return None if vr in ("DS", "IS") else ""  # pydicom: empty numbers are None, empty text ""
    if not text.isprintable():
        raise _NotLean  # control bytes (escape sequences of ISO 2022 ...): pydicom knows them
    if "\\" in text:
        if keyword not in _LEAN_MULTI:
            raise _NotLean  # several values where one is expected: pydicom's MultiValue, str() of it
        parts = text.split("\\")
    else:
        parts = [text]
    if vr == "DS" or vr == "IS":
        parts = [part.strip(" ") for part in parts]  # numbers: pydicom strips the spaces around each value
        pattern = _DECIMAL if vr == "DS" else _INTEGER
        for part in parts:
            if len(part) > 16 or pattern.fullmatch(part) is None:
                raise _NotLean  # empty values, odd numbers: pydicom's own parsing decides
        values: list = [float(part) for part in parts] if vr == "DS" else [int(part) for part in parts]
    else:
        for part in parts:
            if not part or part[0] == " " or part[-1] == " ":
                raise _NotLean  # empty values, spaces around text values: pydicom's stripping rules differ by VR
        values = parts
    return values[0] if len(values) == 1 else values


def lean_header(data: bytes) -> LeanHeader | None:
    """The HEADER_TAGS of a plain DICOM file's bytes (``data``: the whole file, or at least its header), or
    None when pydicom must read it (see the comment above)."""
    try:
        return _lean_header(data)
    except (_NotLean, IndexError, ValueError, UnicodeDecodeError):
        return None
    except Exception:  # struct.error and anything else unexpected: pydicom decides
        return None


_SHORT_HEADER = struct.Struct("<HH2sH").unpack_from
_LONG_LENGTH = struct.Struct("<I").unpack_from
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


def _lean_header(data: bytes) -> LeanHeader | None:
    end = len(data)
    if end < 144 or data[128:132] != b"DICM":
        return None
    short, long_length = _SHORT_HEADER, _LONG_LENGTH
    meta: dict[str, str] = {}
    pos = 132
    previous = -1
    while pos + 8 <= end:  # file meta information: explicit VR little endian, group 0002
        group, element, vr, length = short(data, pos)
        if group != 2:
            break
        tag = group << 16 | element
        if tag <= previous:
            return None
        previous = tag
        if vr in _LONG_VRS:
            length = long_length(data, pos + 8)[0]
            pos += 12
        elif vr in _SHORT_VRS:
            pos += 8
        else:
            return None
        if length == _UNDEFINED or pos + length > end:
            return None
        if tag == 0x00020002 or tag == 0x00020010:
            value = _lean_text(data[pos : pos + length], "", "UI")
            meta["MediaStorageSOPClassUID" if tag == 0x00020002 else "TransferSyntaxUID"] = str(value)
        pos += length
    syntax = meta.get("TransferSyntaxUID", "")
    if syntax not in _LEAN_SYNTAXES or meta.get("MediaStorageSOPClassUID", "") == DICOMDIR_SOP_CLASS:
        return None
    explicit = syntax != "1.2.840.10008.1.2"
    header = LeanHeader()
    header.file_meta = meta
    wanted, give_up, long_vrs, short_vrs = _LEAN_TAGS, _LEAN_GIVE_UP_TAGS, _LONG_VRS, _SHORT_VRS
    previous = -1
    while pos < end:
        if pos + 8 > end:
            return None
        group, element, vr, length = short(data, pos)
        tag = group << 16 | element
        if tag <= previous or group == 2:
            return None
        if tag >= _PIXEL_TAGS_FROM:
            if tag not in _PIXEL_TAGS or (explicit and vr in long_vrs and pos + 12 > end):
                return None  # elements after the image tags, or a cut pixel element header: pydicom decides
            break
        previous = tag
        if not explicit:
            length = long_length(data, pos + 4)[0]
            pos += 8
        elif vr in short_vrs:
            pos += 8
        elif vr in long_vrs:
            if pos + 12 > end:
                return None
            length = long_length(data, pos + 8)[0]
            pos += 12
        else:
            return None  # not an explicit VR (an implicit dataset under an explicit syntax): pydicom copes
        if length == _UNDEFINED:
            if tag in wanted or tag in give_up:
                return None
            pos = _skip_undefined(data, pos, explicit and vr != b"UN", end)
            continue
        if pos + length > end:
            return None
        known = wanted.get(tag)
        if known is None:
            if tag in give_up:
                return None
            pos += length
            continue
        keyword, expected = known
        actual = vr.decode("ascii") if explicit else expected
        if expected == "US or SS":
            if not explicit:
                representation = header.get("PixelRepresentation")
                if representation not in (0, 1):
                    return None
                actual = "SS" if representation == 1 else "US"
            if actual not in ("US", "SS"):
                return None
        elif actual != expected:
            return None
        if actual == "US" or actual == "SS":
            if length == 0:
                header[keyword] = None  # pydicom: an empty number is None
            elif length == 2:
                header[keyword] = int.from_bytes(data[pos : pos + 2], "little", signed=actual == "SS")
            else:
                return None
        else:
            header[keyword] = _lean_text(data[pos : pos + length], keyword, actual)
        pos += length
    charset = header.get("SpecificCharacterSet", "")
    if not isinstance(charset, str) or charset not in _LEAN_CHARSETS:
        return None
    if "SeriesInstanceUID" not in header or "Rows" not in header:
        return None  # truncated or not an image: pydicom's reading decides what it is
    if not header.get("SOPClassUID") and not meta.get("MediaStorageSOPClassUID"):
        return None
    return header


def read_header(path: Path):
    """Header-only read; a file without the DICM preamble is retried with ``force=True``."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
    except InvalidDicomError:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS), force=True)


def scan_dicom_tree(
    input_dir: str | os.PathLike[str],
    *,
    study_key_tag: str = "StudyInstanceUID",
    workers: int = 1,
    key_root: str | os.PathLike[str] | None = None,
    hash_files: bool = False,
    index_path: str | os.PathLike[str] | None = None,
) -> Discovery:
    """Walk ``input_dir``; group readable DICOM image files by study key and SeriesInstanceUID.

    ``workers`` > 1 reads the headers in that many processes when more than ``DISCOVERY_POOL_MIN_FILES`` are
    to be read (the lean reader takes ~0.1 ms per file, pydicom ~1-3 ms); the files are filed in walk order
    either way, so the result is the same.

    ``key_root``: the raw DICOM root that folder study keys (files without ``study_key_tag``) and the
    studies' ``folder`` are relative to (default ``input_dir``); ``fvlm predict`` on one study folder of the
    raw tree passes the raw root, so the study gets the key convert gave it.

    ``hash_files``: also hash each file's content (``StudyFiles.file_hashes``; convert's ``source_hash``).
    ``index_path``: a :class:`preprocessing.file_index.FileIndex` file (implies ``hash_files``): files whose
    stat data are unchanged since the run that stored them are neither read nor hashed again.
    """
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input directory not found: {root}")
    base = _folder_base(root, key_root)
    studies: dict[str, StudyFiles] = {}
    unreadable: list[UnreadableFile] = []
    seen_instances: dict[str, str] = {}
    walked = list(_walk_files(root))
    records = _indexed_records(root, walked, study_key_tag, workers, hash_files, index_path)
    for stored in records:
        record = replace(stored)  # filing rebinds fields; the indexed record stays as read
        if record.keyless:
            record.study_key = layout.folder_study_key(base / Path(record.relative).parent)
        _file_record(record, studies, unreadable, seen_instances, study_key_tag)
    for study in studies.values():
        study.folder = _common_folder(base, root, study.files)
    ordered = sorted(studies.values(), key=lambda s: s.study_key)
    logger.info("discovered %d studies in %d files (%d unreadable)", len(ordered), len(walked), len(unreadable))
    return Discovery(studies=ordered, unreadable=unreadable, n_files_seen=len(walked))


def _folder_base(root: Path, key_root: str | os.PathLike[str] | None) -> Path:
    """``root`` relative to ``key_root`` (``.`` when they are the same folder)."""
    if key_root is None:
        return Path(".")
    try:
        return root.resolve().relative_to(Path(key_root).resolve())
    except ValueError:
        raise ValueError(f"{root} is not inside the raw DICOM root {key_root}") from None


def _common_folder(base: Path, root: Path, files: list[Path]) -> str:
    """The deepest folder (relative to the raw root, POSIX) holding all of ``files`` (string work only:
    ``Path.relative_to`` per file was a third of a no-op run)."""
    import posixpath

    top = str(root)
    prefix = "" if top == "." else top.rstrip(os.sep) + os.sep
    base_posix = base.as_posix()
    parents = set()
    for path in files:
        text = str(path)
        relative = text[len(prefix) :] if text.startswith(prefix) else path.relative_to(root).as_posix()
        folder = posixpath.dirname(relative.replace(os.sep, "/"))
        parents.add(base_posix if not folder else folder if base_posix == "." else f"{base_posix}/{folder}")
    ordered = sorted(parents)
    if not ordered:
        return base_posix
    common = posixpath.commonpath(ordered) or "."
    if len(ordered) > 1 and common in (".", base_posix):
        # one study spread over sibling export folders (a UID shared across them): name them, not their
        # parent, so `fvlm lookup` says where the study is
        depth = 0 if common == "." else common.count("/") + 1
        tops = sorted({"/".join(folder.split("/")[: depth + 1]) for folder in ordered})
        return ", ".join(tops[:5]) + (f", ... ({len(tops)} folders)" if len(tops) > 5 else "")
    return common


def _indexed_records(
    root: Path,
    walked: list[tuple[str, os.stat_result | None]],
    study_key_tag: str,
    workers: int,
    hash_files: bool,
    index_path: str | os.PathLike[str] | None,
) -> list[FileRecord]:
    """One record per walked file, in walk order: from the index when the file's stat data are unchanged,
    else read (and hashed) now; the index is updated and saved."""
    if index_path is None:
        return list(_read_files(root, [root / relative for relative, _ in walked], study_key_tag, workers, hash_files))
    from preprocessing.file_index import FileIndex, index_fingerprint, stat_key

    index = FileIndex.load(Path(index_path), index_fingerprint(root, study_key_tag, (Path(__file__),)))
    records: list[FileRecord | None] = []
    missing: list[int] = []
    keys = []
    for position, (relative, stat) in enumerate(walked):
        key = stat_key(stat) if stat is not None else None
        record = index.lookup(relative, key) if key is not None else None
        if record is None:
            missing.append(position)
        records.append(record)
        keys.append(key)
    fresh = _read_files(root, [root / walked[position][0] for position in missing], study_key_tag, workers, True)
    for position, record in zip(missing, fresh, strict=True):
        records[position] = record
        key = keys[position]
        if key is not None:
            index.store(walked[position][0], key, record)
    index.save({relative for relative, _ in walked})
    logger.info("file index: %d of %d files unchanged, %d read", index.hits, len(walked), len(missing))
    return records  # type: ignore[return-value]


DISCOVERY_CHUNK = 256  # files per worker task
# below this many files to read, a spawned pool costs more (an interpreter and the imports per worker, ~0.3-0.5 s
# each, more where pydicom is needed) than it saves: the lean reader takes ~0.1 ms per file (read, parse, hash),
# so 2 workers save ~1 s of wall time at 20,000 files and always cost CPU; measured in docs/convert.md
DISCOVERY_POOL_MIN_FILES = 20000


def _read_files(
    root: Path, paths: list[Path], study_key_tag: str, workers: int, hash_files: bool = False
) -> Iterator[FileRecord]:
    """:func:`_read_one` over ``paths`` in order, in ``workers`` processes when there is enough to share."""
    chunks = [paths[i : i + DISCOVERY_CHUNK] for i in range(0, len(paths), DISCOVERY_CHUNK)]
    if not paths:  # a no-op run over known files: not even pydicom is imported
        return
    if workers <= 1 or len(paths) <= DISCOVERY_POOL_MIN_FILES:
        yield from _read_chunk(root, paths, study_key_tag, hash_files)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from core.processes import die_with_parent

    context = multiprocessing.get_context("spawn")  # safe next to threads (Prefect) and torch
    with ProcessPoolExecutor(
        max_workers=min(workers, len(chunks)), mp_context=context, initializer=die_with_parent
    ) as pool:
        n = len(chunks)
        for records in pool.map(_read_chunk, [root] * n, chunks, [study_key_tag] * n, [hash_files] * n):
            yield from records


def _read_chunk(root: Path, paths: list[Path], study_key_tag: str, hash_files: bool = False) -> list[FileRecord]:
    with _pydicom_when_needed() as quiet:
        _CHUNK.hash_files, _CHUNK.quiet = hash_files, quiet
        try:
            records = [_read_one(root, path, study_key_tag) for path in paths]
        finally:
            _CHUNK.hash_files, _CHUNK.quiet = False, _no_op
    if hash_files:
        from core.io import sha256_file

        for record in records:
            if record.unreadable is None and not record.sha256:
                try:
                    record.sha256 = sha256_file(record.path)
                except OSError:
                    pass  # convert hashes again and reports the error
    return records


@contextlib.contextmanager
def _pydicom_when_needed():
    """:func:`quiet_pydicom` around the reads, entered only once a file needs pydicom (a tree of plain files
    never imports it); yields the function that enters it."""
    with contextlib.ExitStack() as stack:
        entered: list[bool] = []

        def quiet() -> None:
            if not entered:
                stack.enter_context(quiet_pydicom())
                entered.append(True)

        yield quiet


LEAN_READ_MAX_BYTES = 64 << 20  # files up to this size are read once: lean header + content hash from one read


def _no_op() -> None:
    return None


# what the chunk being read wants of _read_one (per thread): hash the content it read, enter quiet_pydicom
_CHUNK = threading.local()
_CHUNK.hash_files, _CHUNK.quiet = False, _no_op


@dataclass
class FileRecord:
    """What one file contributes to the discovery (picklable: read in a worker, filed in the parent)."""

    path: Path
    relative: str
    unreadable: str | None = None  # reason: the file is listed as unreadable, nothing else is used
    study_key: str = ""
    keyless: bool = False
    patient: str | None = None
    study_uid: str = ""
    accession_number: str = ""
    phi_terms: tuple[str, ...] = ()
    instance: str = ""
    headers: list[SliceHeader] | None = None
    header_error: str | None = None
    series_uid: str = ""
    description: str = ""
    series_number: int | None = None
    kernel: str = ""
    read_warnings: tuple[str, ...] = ()  # pydicom's warnings while reading the header (to the manifest)
    sha256: str = ""  # the file's content hash (scan_dicom_tree(hash_files=True)); "" when not hashed


def _read_one(root: Path, path: Path, study_key_tag: str) -> FileRecord:
    """Read one file's header: where it belongs and its slices (or why it is unreadable). The lean reader
    first (from one read of the file, whose hash is then taken from the same bytes when the chunk hashes);
    pydicom when it declines (entering the chunk's quiet_pydicom first, :func:`_pydicom_when_needed`)."""
    hash_files = getattr(_CHUNK, "hash_files", False)
    relative = path.relative_to(root).as_posix()
    try:
        size = path.stat().st_size
    except OSError as error:
        return FileRecord(path, relative, f"cannot stat file: {error.strerror or type(error).__name__}")
    if size == 0:
        return FileRecord(path, relative, "zero-byte file")
    content = b""
    if size <= LEAN_READ_MAX_BYTES:
        try:
            with open(path, "rb") as handle:
                content = handle.read()
        except OSError:
            content = b""  # pydicom's read below reports it as before
    lean = lean_header(content) if content else None
    if lean is not None:
        record = _record_from_header(lean, path, relative, study_key_tag, size, [])
        if hash_files and record.unreadable is None:
            import hashlib

            record.sha256 = hashlib.sha256(content).hexdigest()
        return record
    del content
    getattr(_CHUNK, "quiet", _no_op)()
    read_warnings: list[str] = []
    try:
        with captured_pydicom_warnings(read_warnings, " while reading the header"):
            ds = read_header(path)
    except PermissionError:
        return FileRecord(path, relative, "permission denied (cannot read file)")
    except Exception as error:  # pydicom raises many types on junk
        return FileRecord(
            path, relative, container_problem(path) or f"not a readable DICOM file ({type(error).__name__})"
        )
    media_class = str(getattr(getattr(ds, "file_meta", None), "get", lambda *_: "")("MediaStorageSOPClassUID", ""))
    if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        return FileRecord(path, relative, "DICOMDIR index file (skipped; images are found by walking the tree)")
    if not sop_class_of(ds):
        reason = container_problem(path) or "not a DICOM image (no SOPClassUID; cannot attribute to a study)"
        return FileRecord(path, relative, reason)
    truncated = truncation_problem(ds, path, size)
    if truncated:
        return FileRecord(path, relative, truncated)
    return _record_from_header(ds, path, relative, study_key_tag, size, read_warnings)


def _record_from_header(ds, path: Path, relative: str, study_key_tag: str, size: int, read_warnings: list[str]):
    """The record of a read header (a pydicom Dataset or a :class:`LeanHeader`: both answer ``get``)."""
    key_value = ds.get(study_key_tag)
    study_key = str(key_value).strip() if key_value not in (None, "") else ""
    keyless = not study_key
    if keyless:  # anonymised exports blank the UID: group by folder (scan_dicom_tree rebases it on the raw root)
        study_key = layout.folder_study_key(Path(relative).parent)
    phi_terms: list[str] = []
    for tag in PHI_TAGS:
        value = ds.get(tag)
        if value not in (None, ""):
            phi_terms.append(str(value))
            if tag in ("PatientName", "ReferringPhysicianName"):
                phi_terms.extend(part for part in str(value).replace("^", " ").split() if len(part) >= 3)
    record = FileRecord(
        path,
        relative,
        study_key=study_key,
        keyless=keyless,
        patient=str(ds.get("PatientID", "")).strip() or None,
        study_uid=str(ds.get("StudyInstanceUID", "") or "").strip(),
        accession_number=str(ds.get("AccessionNumber", "") or "").strip(),
        phi_terms=tuple(phi_terms),
        instance=str(ds.get("SOPInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")).strip() or f"no-series-uid:{Path(relative).parent}",
        description=str(ds.get("SeriesDescription", "") or ""),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        kernel=_text(ds.get("ConvolutionKernel")),
    )
    try:
        record.headers = headers_from_dataset(ds, path, relative, file_size=size)
    except Exception as error:
        record.header_error = f"unusable header ({type(error).__name__})"
    record.read_warnings = tuple(read_warnings)
    return record


def _sibling(record: FileRecord, relative: str) -> Path:
    """The path of another file under the same input root as ``record``."""
    root = str(record.path)[: len(str(record.path)) - len(record.relative)]
    return Path(root) / relative


def duplicate_conflict(path: Path, other: Path) -> str | None:
    """Why two files with one SOPInstanceUID are not copies of one image (None: same bytes or same pixels).

    A re-encoded copy (another transfer syntax) has other bytes but the same pixels; only then is one of
    them safely ignored."""
    try:
        if path.stat().st_size == other.stat().st_size and path.read_bytes() == other.read_bytes():
            return None
    except OSError as error:
        return f"cannot compare them ({error.strerror or type(error).__name__})"
    import numpy as np
    import pydicom

    try:
        with quiet_pydicom(), captured_pydicom_warnings([]):
            pixels = [pydicom.dcmread(p, force=True).pixel_array for p in (path, other)]
    except Exception as error:
        return f"their pixel data cannot be compared ({type(error).__name__})"
    if pixels[0].shape == pixels[1].shape and np.array_equal(pixels[0], pixels[1]):
        return None
    return "hold different pixel data (which one is right is unknown: remove or re-export one)"


def _file_record(
    record: FileRecord,
    studies: dict[str, StudyFiles],
    unreadable: list[UnreadableFile],
    seen_instances: dict[str, str],
    study_key_tag: str,
) -> None:
    """File one read header under its study / series (or as unreadable)."""
    if record.unreadable is not None:
        unreadable.append(UnreadableFile(record.relative, record.unreadable))
        return
    study = studies.get(record.study_key)
    if study is None:
        study = studies[record.study_key] = StudyFiles(
            study_key=record.study_key,
            patient_key=record.patient,
            study_uid=record.study_uid,
            accession_number=record.accession_number,
        )
        if record.keyless:
            study.problems.append(f"no {study_key_tag} in headers: files of this folder grouped as one study")
    study.phi_terms.update(record.phi_terms)
    study.phi_terms.add(record.study_key)
    study.files.append(record.path)
    if record.sha256:
        study.file_hashes[record.path] = record.sha256
    for warning in record.read_warnings:  # once per study and message (the first file named)
        if not any(problem.endswith(f": {warning}") for problem in study.problems):
            study.problems.append(f"{record.relative}: {warning}")
    instance = record.instance
    if instance and instance in seen_instances:
        first = seen_instances[instance]
        conflict = duplicate_conflict(record.path, _sibling(record, first))
        if conflict is None:
            study.problems.append(f"{record.relative}: duplicate copy of {first} (ignored)")
            return
        if record.headers is None:
            study.problems.append(f"{record.relative}: {record.header_error}")
            return
        defect = f"conflicting duplicate SOPInstanceUID: {record.relative} and {first} share one but {conflict}"
        record.headers = [replace(header, defect=defect) for header in record.headers]
    elif instance:
        seen_instances[instance] = record.relative
    if record.headers is None:
        study.problems.append(f"{record.relative}: {record.header_error}")
        return
    series = study.series.get(record.series_uid)
    if series is None:
        series = study.series[record.series_uid] = SeriesFiles(
            series_uid=record.series_uid,
            description=record.description,
            series_number=record.series_number,
            convolution_kernel=record.kernel,
        )
    series.slices.extend(record.headers)


def discover_studies(
    input_dir: str | os.PathLike[str],
    *,
    study_key_tag: str = "StudyInstanceUID",
    key_root: str | os.PathLike[str] | None = None,
) -> list[StudyFiles]:
    """The studies under ``input_dir`` (see :func:`scan_dicom_tree` for the unreadable files too)."""
    return scan_dicom_tree(input_dir, study_key_tag=study_key_tag, key_root=key_root).studies
