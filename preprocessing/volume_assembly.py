"""Slices -> one int16 HU volume with its affine (slice by slice into a preallocated array).

Geometry (DICOM LPS): a pixel at column ``i``, row ``j`` of a slice lies at
``IPP + i * dc * r + j * dr * c`` where ``r, c`` are the row / column direction cosines of
ImageOrientationPatient and ``(dr, dc) = PixelSpacing``. Slices are ordered by the projection of
ImagePositionPatient on the slice normal ``n = r x c`` (never by InstanceNumber). The array built
here is ``hu[k, j, i]`` (slice, row, column); the index->world affine is for the (i, j, k) order
that NIfTI stores on disk, converted to RAS by flipping the first two world axes.

A gantry tilt shows up as slice positions sheared against the normal; missing slices as uneven
steps. Both are resampled onto an orthogonal, uniform grid (linear, outside -> air) with a warning,
or raise :class:`AssemblyError` in strict mode.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from preprocessing.dicom_discovery import SliceHeader, captured_pydicom_warnings, orientation_problem

logger = logging.getLogger(__name__)

AIR_HU = -1024
MAX_HU = 32767
POSITION_TOLERANCE_MM = 0.01
ORIENTATION_TOLERANCE = 1e-3
J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class AssemblyError(ValueError):
    """A series that cannot become a volume; the message is a quarantine reason a person can act on."""


# Value / geometry sanity (every threshold is listed in docs/bad_inputs.md)
MIN_ABS_SLOPE = 1e-3  # |RescaleSlope| outside [1e-3, 1e3] cannot give CT numbers from 8..16-bit data
MAX_ABS_SLOPE = 1e3
MAX_ABS_INTERCEPT = 1e5  # |RescaleIntercept| above 1e5 HU is far outside any CT scale
MAX_ABS_POSITION_MM = 1e5  # ImagePositionPatient beyond +-100 m is a corrupt header
MAX_PIXEL_SPACING_MM = 100.0  # PixelSpacing / SliceThickness in (0, 100] mm
MAX_VOLUME_BYTES = 8 << 30  # the int16 volume (slices x rows x columns x 2) at most 8 GiB
MAX_RESAMPLE_FACTOR = 4  # uniform resampling may produce at most 4 n + 16 slices
HU_CLIP_SUSPECT = 31000  # above the extended CT scale (30710 HU): wrong rescale / mis-signed data
MAX_CLIPPED_FRACTION = 0.01  # quarantine when more than 1 % of voxels are above HU_CLIP_SUSPECT
MIN_HU_CEILING = -200  # a CT volume holds air or fat somewhere: min HU above this = suspect intercept
MIN_HU_RANGE = 100  # max - min below 100 HU: blank series or a crushed rescale
HIGH_HU = 500  # CT is mostly air, fat and soft tissue: more than half of the voxels above +500 HU is inverted
MAX_HIGH_FRACTION = 0.5  # (air at the high end) or mis-scaled data
AIR_PRESENT_HU = -900  # a volume with some air (<= -900 HU) ...
MAX_LOW_PERCENTILE_HU = -400  # ... whose 1st percentile is above -400 HU has its air crushed or inverted (warning)
ALLOWED_BITS_ALLOCATED = (8, 16, 32)
# one decoded slice far from its neighbours (corrupt codestream): r = slice - mean of its two neighbours where
# they agree within SLICE_AGREE_HU, smoothed over SLICE_SMOOTH x SLICE_SMOOTH voxels (noise averages out, a
# decoding error spread over a region does not); "off" voxels: |smoothed r| > SLICE_OFF_HU. Quarantine when
# off voxels are >= SLICE_QUARANTINE_FRACTION of the slice and >= SLICE_QUARANTINE_VOXELS, a warning from
# SLICE_WARN_FRACTION and SLICE_WARN_VOXELS on; both only when the fraction is >= SLICE_ISOLATION x both
# neighbours' and the series median's. Measured in docs/bad_inputs.md.
SLICE_AGREE_HU = 30.0
SLICE_OFF_HU = 20.0
SLICE_SMOOTH = 7
SLICE_QUARANTINE_FRACTION = 0.005
SLICE_QUARANTINE_VOXELS = 1000
SLICE_WARN_FRACTION = 0.002
SLICE_WARN_VOXELS = 500
SLICE_ISOLATION = 10.0


def _finite(values) -> bool:
    return values is not None and all(math.isfinite(float(v)) for v in values)


def _value_checks(slices: list[SliceHeader]) -> None:
    """Rescale slope / intercept of every slice: finite, non-zero and in a plausible range."""
    for s in slices:
        if s.defect:
            raise AssemblyError(f"{s.relative_path}: {s.defect}")
        slope = 1.0 if s.rescale_slope is None else float(s.rescale_slope)
        intercept = 0.0 if s.rescale_intercept is None else float(s.rescale_intercept)
        if not math.isfinite(slope) or not MIN_ABS_SLOPE <= abs(slope) <= MAX_ABS_SLOPE:
            raise AssemblyError(
                f"{s.relative_path}: RescaleSlope {slope:g} is not a usable HU transform "
                f"(must be finite with |slope| in [{MIN_ABS_SLOPE:g}, {MAX_ABS_SLOPE:g}])"
            )
        if slope < 0:
            raise AssemblyError(
                f"{s.relative_path}: RescaleSlope {slope:g} is negative: HU would be inverted (air at the high end); "
                "expected a positive slope"
            )
        if not math.isfinite(intercept) or abs(intercept) > MAX_ABS_INTERCEPT:
            raise AssemblyError(
                f"{s.relative_path}: RescaleIntercept {intercept:g} is not a usable HU transform "
                f"(must be finite, |intercept| <= {MAX_ABS_INTERCEPT:g})"
            )
        bits_problem = _bits_problem(s)
        if bits_problem:
            raise AssemblyError(f"{s.relative_path}: {bits_problem}")


def _bits_problem(s: SliceHeader) -> str | None:
    """BitsAllocated / BitsStored / PixelRepresentation consistent with each other (pixel bytes: at decode)."""
    if s.bits_allocated not in ALLOWED_BITS_ALLOCATED:
        return f"BitsAllocated {s.bits_allocated} (expected one of {', '.join(map(str, ALLOWED_BITS_ALLOCATED))})"
    if not 1 <= s.bits_stored <= s.bits_allocated:
        return f"BitsStored {s.bits_stored} outside 1..BitsAllocated ({s.bits_allocated})"
    if s.pixel_representation not in (0, 1):
        return f"PixelRepresentation {s.pixel_representation} (expected 0 unsigned or 1 signed)"
    return None


def _geometry_value_checks(slices: list[SliceHeader]) -> None:
    """NaN / inf / absurd values in the geometry tags (before any arithmetic on them)."""
    for s in slices:
        problem = orientation_problem(s.orientation)
        if problem:
            raise AssemblyError(f"{s.relative_path}: {problem}")
        for name, values in (("ImagePositionPatient", s.position_mm), ("PixelSpacing", s.pixel_spacing_mm)):
            if values is not None and not _finite(values):
                raise AssemblyError(
                    f"{s.relative_path}: {name} contains NaN or infinity ({', '.join(f'{v:g}' for v in values)})"
                )
        if s.position_mm is not None and max(abs(v) for v in s.position_mm) > MAX_ABS_POSITION_MM:
            raise AssemblyError(
                f"{s.relative_path}: ImagePositionPatient beyond +-{MAX_ABS_POSITION_MM:g} mm (corrupt header)"
            )
        if s.pixel_spacing_mm is not None and not all(0 < v <= MAX_PIXEL_SPACING_MM for v in s.pixel_spacing_mm):
            raise AssemblyError(
                f"{s.relative_path}: PixelSpacing {s.pixel_spacing_mm} outside (0, {MAX_PIXEL_SPACING_MM:g}] mm"
            )
        thickness = s.slice_thickness_mm
        if thickness is not None and (
            not math.isfinite(thickness) or thickness < 0 or thickness > MAX_PIXEL_SPACING_MM
        ):
            raise AssemblyError(
                f"{s.relative_path}: SliceThickness {thickness:g} is NaN, "
                f"infinite or outside [0, {MAX_PIXEL_SPACING_MM:g}] mm"
            )


def _hu_range_checks(volume: np.ndarray, slices: list[SliceHeader]) -> list[str]:
    """The assembled HU values must look like CT (contrast, no mass clipping; air or fat somewhere).

    No air / fat at all quarantines only when RescaleIntercept is missing (stored values taken as HU);
    with an intercept present it is a warning (real small-FOV / test exports exist, e.g. cornerstone3d
    CT0012 at -14..1199 HU)."""
    low, high = int(volume.min()), int(volume.max())
    if high - low < MIN_HU_RANGE:
        raise AssemblyError(
            f"implausible HU range {low}..{high} (under {MIN_HU_RANGE} HU of contrast): blank series or wrong rescale"
        )
    warnings: list[str] = []
    if low > MIN_HU_CEILING:
        message = f"implausible HU range {low}..{high}: no voxel below {MIN_HU_CEILING} HU (no air or fat)"
        if any(s.rescale_intercept is None for s in slices):
            raise AssemblyError(f"{message} and RescaleIntercept missing: stored values are not HU")
        warnings.append(f"{message}: wrong RescaleIntercept or a field of view inside the body?")
    if high > HU_CLIP_SUSPECT:
        fraction = float(np.count_nonzero(volume > HU_CLIP_SUSPECT)) / volume.size
        if fraction > MAX_CLIPPED_FRACTION:
            raise AssemblyError(
                f"implausible HU range {low}..{high}: {100 * fraction:.1f}% of voxels above {HU_CLIP_SUSPECT} HU "
                "(wrong RescaleSlope/Intercept or mis-signed pixel data)"
            )
    high_fraction = float(np.count_nonzero(volume > HIGH_HU)) / volume.size
    if high_fraction > MAX_HIGH_FRACTION:
        raise AssemblyError(
            f"implausible HU distribution: {100 * high_fraction:.0f}% of voxels above +{HIGH_HU} HU "
            f"(range {low}..{high}; CT is mostly air, fat and soft tissue): inverted or mis-scaled values "
            "(RescaleSlope / RescaleIntercept / PixelRepresentation)?"
        )
    if low <= AIR_PRESENT_HU:
        p1 = float(np.percentile(volume[:: max(1, volume.shape[0] // 16)], 1))
        if p1 > MAX_LOW_PERCENTILE_HU:
            warnings.append(
                f"unusual HU distribution: air present (minimum {low} HU) but the 1st percentile is {p1:.0f} HU "
                f"(expected <= {MAX_LOW_PERCENTILE_HU} HU with air around the body): check the rescale"
            )
    return warnings


def _box_sums(plane: np.ndarray, size: int, dtype: type) -> np.ndarray:
    """Sum over ``size`` x ``size`` windows, placed and edged as ``scipy.ndimage.uniform_filter(plane, size)``
    places its mean (origin 0: ``size // 2`` before, the rest after; 'reflect' edges: d c b a | a b c d | d c b a),
    in exact integer arithmetic (scipy's mean is that sum / size**2 in floating point)."""
    before = size // 2
    after = size - 1 - before
    out = plane
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (before + 1, after)  # one more in front: a zero row / column for the running sum
        padded = np.pad(out, pad, mode="symmetric")
        if axis == 0:
            padded[0] = 0
        else:
            padded[:, 0] = 0
        running = np.cumsum(padded, axis=axis, dtype=dtype)
        n = out.shape[axis]
        out = running[size:, :] - running[:n, :] if axis == 0 else running[:, size:] - running[:, :n]
    return out


def _slice_outlier_check(volume: np.ndarray, ordered: list[SliceHeader]) -> list[str]:
    """One decoded slice far from its neighbours (e.g. a corrupt JPEG 2000 codestream decodes without error
    into wrong values): quarantine when gross, else a warning naming the file. Interior slices only.

    Integer arithmetic throughout (residuals doubled, window sums instead of means, thresholds scaled to
    match), so no scipy import and no rounding: the same counts as residual = slice - (below + above) / 2 in
    float32, 2 x 2 averages, ``ndimage.uniform_filter`` and the float thresholds (tests/preprocessing)."""
    n = volume.shape[0]
    if n < 4:
        return []
    counts = _slice_outlier_counts(volume)
    fractions = counts / float(volume.shape[1] * volume.shape[2])
    median = float(np.median(fractions[1:-1]))
    warnings: list[str] = []
    for k in range(1, n - 1):
        reference = max(fractions[k - 1], fractions[k + 1], median, 1e-4)
        if fractions[k] < SLICE_ISOLATION * reference or fractions[k] < SLICE_WARN_FRACTION:
            continue
        finding = (
            f"{ordered[k].relative_path}: slice {k + 1} of {n} is far from its neighbours: {counts[k]} voxels "
            f"({100 * fractions[k]:.2f}%) differ by more than {SLICE_OFF_HU:g} HU (local mean) from the neighbours' "
            f"mean where the neighbours agree, against {100 * reference:.3f}% around it"
        )
        if fractions[k] >= SLICE_QUARANTINE_FRACTION and counts[k] >= SLICE_QUARANTINE_VOXELS:
            raise AssemblyError(
                f"{finding} (expected under {100 * SLICE_QUARANTINE_FRACTION:g}%): corrupt pixel data "
                "(damaged codestream?)"
            )
        if counts[k] >= SLICE_WARN_VOXELS:
            warnings.append(f"{finding}: corrupt pixel data (damaged codestream) or motion? check that slice")
    return warnings


def _slice_outlier_counts(volume: np.ndarray) -> np.ndarray:
    """Per interior slice, the number of "off" voxels (see SLICE_* above); 0 for the first and last slice.

    Integer arithmetic throughout (residuals doubled, window sums instead of means, thresholds scaled to match),
    so no scipy import and no rounding, and as few full-resolution passes as possible (the check was a third of
    converting a series): the same counts as residual = slice - (below + above) / 2 in float32, 2 x 2 means,
    ``ndimage.uniform_filter`` and the float thresholds (a test compares them)."""
    n, rows, columns = volume.shape
    counts = np.zeros(n, dtype=np.int64)
    # large slices: residuals averaged over 2 x 2 first (4 x cheaper; the smoothing then covers the same area)
    factor = 2 if min(rows, columns) >= 256 else 1
    size = max(1, round(SLICE_SMOOTH / factor))
    if factor == 2:
        rows, columns = (rows // 2) * 2, (columns // 2) * 2

    def shrink(plane: np.ndarray, dtype: type) -> np.ndarray:  # 2 x 2 sums (exact)
        if factor == 1:
            return plane.astype(dtype, copy=False)
        even = plane[:rows, :columns]
        total = even[0::2, 0::2].astype(dtype)
        total += even[1::2, 0::2]
        total += even[0::2, 1::2]
        total += even[1::2, 1::2]
        return total

    # |mean residual| > OFF  <=>  |window sum of 2 x residual x factor^2| > OFF x 2 x factor^2 x size^2
    off_limit = SLICE_OFF_HU * 2 * factor * factor * size * size
    # mean agreement > 0.9  <=>  10 x window sum of agreeing voxels > 9 x factor^2 x size^2
    covered_limit = 9 * factor * factor * size * size
    # running sums stay below 2 x 33791 HU x factor^2 x size x (width + size + 1) x size: int32 when that fits
    width = max(rows, columns) // factor + size + 1
    sums = np.int32 if 2 * 33791 * factor * factor * size * size * width < 2**31 else np.int64
    agree_limit = np.uint16(2 * int(SLICE_AGREE_HU) - 2)  # |d| < 30  <=>  d + 29 in [0, 58] (d: HU difference)
    below = volume[0].astype(np.int32)
    current = volume[1].astype(np.int32)
    for k in range(1, n - 1):
        above = volume[k + 1].astype(np.int32)
        # agreement from the int16 slices: a wrapped difference is within +-29 only when the true one is
        difference = volume[k - 1] - volume[k + 1]
        difference += np.int16(int(SLICE_AGREE_HU) - 1)
        agree = difference.view(np.uint16) <= agree_limit
        residual2 = current + current
        residual2 -= below
        residual2 -= above
        residual2 *= agree
        smoothed = _box_sums(shrink(residual2, sums), size, sums)
        covered = _box_sums(shrink(agree.view(np.uint8), sums), size, sums)
        covered *= 10
        counts[k] = np.count_nonzero((np.abs(smoothed) > off_limit) & (covered > covered_limit)) * factor * factor
        below, current = current, above
    return counts


@dataclass
class AssembledVolume:
    hu_kji: np.ndarray  # int16, (slices, rows, columns) in DICOM index order
    affine_ras_ijk: np.ndarray  # 4x4, voxel (i, j, k) -> RAS mm
    warnings: list[str] = field(default_factory=list)
    resampled: bool = False
    n_input_slices: int = 0
    transfer_syntaxes: list[str] = field(default_factory=list)


def _geometry_checks(slices: list[SliceHeader]) -> tuple[np.ndarray, np.ndarray, tuple[float, float], int, int]:
    missing = [s.relative_path for s in slices if s.orientation is None or s.position_mm is None]
    if missing:
        raise AssemblyError(
            f"{len(missing)} slice(s) without ImagePositionPatient/ImageOrientationPatient (first: {missing[0]})"
        )
    orientations = np.array([s.orientation for s in slices], dtype=np.float64)
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        worst = int(np.abs(orientations - orientations[0]).max(axis=1).argmax())
        raise AssemblyError(f"inconsistent slice orientation within the series (e.g. {slices[worst].relative_path})")
    sizes = {(s.rows, s.columns) for s in slices}
    if len(sizes) > 1:
        raise AssemblyError(f"inconsistent image sizes within the series: {sorted(sizes)}")
    spacings = [s.pixel_spacing_mm for s in slices]
    if any(sp is None for sp in spacings):
        raise AssemblyError("slice(s) without PixelSpacing")
    spacing_array = np.array(spacings, dtype=np.float64)
    if np.abs(spacing_array - spacing_array[0]).max() > 1e-3 * spacing_array[0].max():
        raise AssemblyError("inconsistent PixelSpacing within the series")
    row_cos = orientations[0, :3] / np.linalg.norm(orientations[0, :3])
    col_cos = orientations[0, 3:] / np.linalg.norm(orientations[0, 3:])
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise AssemblyError("ImageOrientationPatient row and column directions are not orthogonal")
    rows, columns = slices[0].rows, slices[0].columns
    if rows <= 0 or columns <= 0:
        raise AssemblyError("Rows/Columns missing or zero")
    return row_cos, col_cos, (float(spacing_array[0, 0]), float(spacing_array[0, 1])), rows, columns


def _j2k_codestream_signed(ds) -> bool | None:
    """Signedness declared in the J2K SIZ marker of frame 1 (None when not found)."""
    try:
        from pydicom.encaps import generate_frames

        frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    except Exception:
        return None
    position = frame.find(b"\xff\x51", 0, 512)
    if position < 0 or len(frame) < position + 41:
        return None
    return bool(frame[position + 40] & 0x80)


NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"


def _padding_range(header: SliceHeader, raw: np.ndarray) -> tuple[int, int] | None:
    """PixelPaddingValue (and PixelPaddingRangeLimit) as an inclusive range of stored values."""
    if header.padding_value is None:
        return None
    bits = 8 * raw.dtype.itemsize

    def as_stored(value: int) -> int:
        if raw.dtype.kind == "i" and value > (1 << (bits - 1)) - 1:
            return value - (1 << bits)
        if raw.dtype.kind == "u" and value < 0:
            return value + (1 << bits)
        return value

    pad = as_stored(header.padding_value)
    if header.padding_limit is None:
        return pad, pad
    low, high = sorted((pad, as_stored(header.padding_limit)))
    return low, high


def read_native_pixels(header: SliceHeader) -> np.ndarray | None:
    """Fast path for uncompressed little-endian 16-bit single-frame files: the pixel data element is
    the file's tail; read it directly (verified by its tag and length) instead of parsing the file
    again. Returns None when the layout is anything else (the caller then decodes with pydicom)."""
    if (
        header.transfer_syntax not in NATIVE_LITTLE_ENDIAN
        or header.bits_allocated != 16
        or header.frame_index is not None
        or header.samples_per_pixel != 1
        or header.number_of_frames != 1
    ):
        return None
    count = header.rows * header.columns * 2
    explicit = header.transfer_syntax == "1.2.840.10008.1.2.1"
    prefix = 12 if explicit else 8
    try:
        with open(header.path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            if size < count + prefix:
                return None
            handle.seek(size - count - prefix)
            block = handle.read(count + prefix)
    except OSError:
        return None
    if block[:4] != _PIXEL_DATA_TAG or int.from_bytes(block[prefix - 4 : prefix], "little") != count:
        return None
    if explicit and block[4:6] not in (b"OW", b"OB"):
        return None
    dtype = np.dtype("<i2") if header.pixel_representation == 1 else np.dtype("<u2")
    raw = np.frombuffer(block, dtype=dtype, offset=prefix).reshape(header.rows, header.columns)
    unused = 16 - header.bits_stored
    if 0 < unused < 16:  # high bits beyond BitsStored may hold overlays / garbage
        if header.pixel_representation == 1:
            raw = ((raw << unused) >> unused).astype(np.int16)
        else:
            raw = raw & np.uint16((1 << header.bits_stored) - 1)
    return raw


_QUIET_LOCK = threading.Lock()
_QUIET_DEPTH = 0


@contextlib.contextmanager
def _quiet_decoder_logs():
    """pydicom logs a full traceback (logger.exception) for every decoder plugin that fails on a
    corrupt frame before raising; the raised error becomes the quarantine reason, so the tracebacks
    are noise in the console. Silenced while decoding (thread-safe: counted)."""
    global _QUIET_DEPTH
    loggers = [logging.getLogger(name) for name in _DECODER_LOGGERS]
    with _QUIET_LOCK:
        if _QUIET_DEPTH == 0:
            _QUIET_DEPTH_STATE[:] = [logger.disabled for logger in loggers]
            for logger in loggers:
                logger.disabled = True
        _QUIET_DEPTH += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _QUIET_DEPTH -= 1
            if _QUIET_DEPTH == 0:
                for logger, state in zip(loggers, _QUIET_DEPTH_STATE, strict=False):
                    logger.disabled = state


_DECODER_LOGGERS = ("pydicom", "pydicom.pixels.decoders.base", "pydicom.pixels.decoders", "pydicom.pixel_data_handlers")
_QUIET_DEPTH_STATE: list[bool] = []


NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


def pixel_bytes_problem(ds, syntax: str) -> str | None:
    """Why the pixel data cannot hold what the header says (None when it can).

    Native (uncompressed) data must hold exactly Rows x Columns x NumberOfFrames x SamplesPerPixel x
    BitsAllocated / 8 bytes (+ 1 pad byte): fewer is a truncated file, more is a header that understates the
    data (16-bit pixels declared as 8-bit, frames beyond NumberOfFrames), which pydicom would silently cut.
    JPEG 2000: the codestream's image size (SIZ marker) must be Rows x Columns."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if syntax in NATIVE_SYNTAXES or not syntax:
        expected = (rows * columns * frames * samples * bits + 7) // 8
        actual = len(ds.PixelData)
        claim = (
            f"header expects {expected} (Rows {rows} x Columns {columns} x NumberOfFrames {frames} x "
            f"SamplesPerPixel {samples} x BitsAllocated {bits} / 8)"
        )
        if actual < expected:
            return (
                f"truncated pixel data (cannot decode): it holds {actual} bytes, {claim}: truncated file or wrong "
                "Rows/Columns/BitsAllocated"
            )
        if actual > expected + (expected % 2) + 1:
            return (
                f"too many pixel data bytes: {actual}, {claim}: the header understates the data "
                "(e.g. BitsAllocated 8 over 16-bit pixels, or frames beyond NumberOfFrames)"
            )
        return None
    # compressed: the codestream's own image size must be the header's (a decoder given another size fails with
    # a numpy broadcast message, and gdcm aborts the whole process on JPEG-LS)
    size, kind = None, ""
    if syntax in J2K_SYNTAXES:
        size, kind = _j2k_codestream_size(ds), "JPEG 2000 codestream"
    elif syntax.startswith("1.2.840.10008.1.2.4."):
        size, kind = _jpeg_frame_size(ds), "JPEG frame header"
    if size is not None and size != (rows, columns):
        return (
            f"{kind} is {size[0]} x {size[1]} pixels, header Rows x Columns is {rows} x {columns} "
            "(impossible size: wrong Rows/Columns or a foreign codestream)"
        )
    return None


_JPEG_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _first_frame(ds) -> bytes | None:
    try:
        from pydicom.encaps import generate_frames

        return next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1)))
    except Exception:
        return None


def _jpeg_frame_size(ds) -> tuple[int, int] | None:
    """(rows, columns) of the first SOFn / SOF55 (JPEG-LS) marker of frame 1 (None when not found)."""
    frame = _first_frame(ds)
    if not frame or frame[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 9 <= len(frame) and position < 65536:
        if frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        length = int.from_bytes(frame[position + 2 : position + 4], "big")
        if marker in _JPEG_SOF_MARKERS:
            height = int.from_bytes(frame[position + 5 : position + 7], "big")
            width = int.from_bytes(frame[position + 7 : position + 9], "big")
            return (height, width) if height else None  # 0 lines: defined later by a DNL marker
        position += 2 + length
    return None


def _j2k_codestream_size(ds) -> tuple[int, int] | None:
    """(rows, columns) declared in the J2K SIZ marker of frame 1 (None when not found)."""
    frame = _first_frame(ds)
    if not frame:
        return None
    position = frame.find(b"\xff\x51", 0, 512)
    if position < 0 or len(frame) < position + 22:
        return None
    width, height, x_offset, y_offset = (
        int.from_bytes(frame[position + offset : position + offset + 4], "big") for offset in (6, 10, 14, 18)
    )
    return height - y_offset, width - x_offset


def decode_frames(path: Path) -> tuple[object, np.ndarray]:
    """Full read of one file; returns (dataset without pixel bytes, frames as (F, rows, cols))."""
    import pydicom

    from preprocessing.dicom_discovery import quiet_pydicom

    with quiet_pydicom():
        ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise AssemblyError(f"{path.name}: no pixel data in file ({path.stat().st_size} bytes: truncated?)")
    syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    problem = pixel_bytes_problem(ds, syntax) if "PixelData" in ds else None
    if problem:
        raise AssemblyError(f"{path.name}: {problem}")
    try:
        with _quiet_decoder_logs():
            raw = ds.pixel_array
    except Exception as error:
        name = getattr(ds.file_meta.get("TransferSyntaxUID"), "name", syntax)
        message = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
        if "broadcast" in message:  # numpy's words for a decoded frame of another size than the header's
            message = (
                f"the decoded image does not have the header's size (Rows {ds.get('Rows')} x Columns "
                f"{ds.get('Columns')}, NumberOfFrames {ds.get('NumberOfFrames', 1)})"
            )
        raise AssemblyError(f"cannot decode pixel data (transfer syntax {syntax} {name}): {message}") from None
    if raw.ndim == 2:
        raw = raw[np.newaxis]
    if raw.ndim != 3:
        raise AssemblyError(f"unexpected pixel array shape {raw.shape} (colour or multi-sample image)")
    if syntax in J2K_SYNTAXES and int(ds.get("PixelRepresentation", 0)) == 0 and raw.dtype == np.uint16:
        if _j2k_codestream_signed(ds):
            raw = raw.view(np.int16)  # codestream is signed (SIZ) while the header says unsigned
    return ds, raw


@functools.lru_cache(maxsize=64)
def _hu_lookup(
    kind: str, bits: int, slope: float, intercept: float, pad_low: int | None, pad_high: int | None
) -> np.ndarray:
    """Stored value -> int16 HU for every possible 8/16-bit value (rounded, clipped, padding -> air),
    indexed by the stored bits read as unsigned."""
    unsigned = np.arange(1 << bits, dtype=np.int64)
    stored = unsigned - (1 << bits) * (unsigned >= (1 << (bits - 1))) if kind == "i" else unsigned
    hu = np.rint(stored * slope + intercept)
    if pad_low is not None and pad_high is not None:
        hu[(stored >= pad_low) & (stored <= pad_high)] = AIR_HU
    return np.clip(hu, AIR_HU, MAX_HU).astype(np.int16)


def _to_hu_integer(
    raw: np.ndarray, slope: float, intercept: float, pad: tuple[int, int] | None, out: np.ndarray
) -> bool:
    """Common case, done in int16 in place: slope 1, integral intercept, no overflow possible."""
    if slope != 1.0 or not float(intercept).is_integer() or raw.dtype not in (np.int16, np.uint16):
        return False
    shift = int(intercept)
    low, high = int(raw.min()), int(raw.max())
    if high > 32767 or low + shift < -32768 or high + shift > 32767:
        return False
    out[...] = raw
    out += np.int16(shift)
    if pad is not None and pad[1] + shift > AIR_HU:  # padding that would not clip to air by itself
        np.putmask(out, (raw >= pad[0]) & (raw <= pad[1]), AIR_HU)
    np.maximum(out, AIR_HU, out=out)
    return True


def _to_hu(raw: np.ndarray, slope: float, intercept: float, pad: tuple[int, int] | None, out: np.ndarray) -> None:
    """Stored values -> int16 HU into ``out``: one table lookup for 8/16-bit data, arithmetic otherwise."""
    if not raw.dtype.isnative:  # big-endian transfer syntax
        raw = raw.astype(raw.dtype.newbyteorder("="))
    if _to_hu_integer(raw, slope, intercept, pad, out):
        return
    if raw.dtype.itemsize in (1, 2) and raw.dtype.kind in "iu":
        bits = 8 * raw.dtype.itemsize
        table = _hu_lookup(raw.dtype.kind, bits, float(slope), float(intercept), *(pad or (None, None)))
        np.take(table, raw.view(np.uint8 if bits == 8 else np.uint16), out=out)
        return
    hu = raw.astype(np.float64) * slope + intercept
    np.rint(hu, out=hu)
    if pad is not None:
        hu[(raw >= pad[0]) & (raw <= pad[1])] = AIR_HU
    np.clip(hu, AIR_HU, MAX_HU, out=hu)
    out[...] = hu


def _fill(
    volume: np.ndarray,
    order: dict[tuple[Path, int | None], int],
    slices_by_file: dict[Path, list[SliceHeader]],
    path: Path,
) -> str:
    headers = slices_by_file[path]
    if len(headers) == 1:
        native = read_native_pixels(headers[0])
        if native is not None:
            header = headers[0]
            slope = header.rescale_slope if header.rescale_slope is not None else 1.0
            intercept = header.rescale_intercept if header.rescale_intercept is not None else 0.0
            _to_hu(native, slope, intercept, _padding_range(header, native), volume[order[(path, None)]])
            return header.transfer_syntax
    ds, raw = decode_frames(path)
    rows, columns = volume.shape[1:]
    if raw.shape[1:] != (rows, columns):
        raise AssemblyError(
            f"{headers[0].relative_path}: pixel array {raw.shape[1:]} does not match Rows/Columns {(rows, columns)}"
        )
    for header in headers:
        frame = 0 if header.frame_index is None else header.frame_index
        if frame >= raw.shape[0]:
            raise AssemblyError(f"{header.relative_path}: frame {frame + 1} missing from pixel data")
        frame_raw = raw[frame]
        slope = header.rescale_slope if header.rescale_slope is not None else 1.0
        intercept = header.rescale_intercept if header.rescale_intercept is not None else 0.0
        _to_hu(
            frame_raw, slope, intercept, _padding_range(header, frame_raw), volume[order[(path, header.frame_index)]]
        )
    return str(ds.file_meta.get("TransferSyntaxUID", ""))


def _shift_slice(hu_slice: np.ndarray, shift_rows: float, shift_columns: float) -> None:
    from scipy import ndimage

    if abs(shift_rows) < 1e-3 and abs(shift_columns) < 1e-3:
        return
    shifted = ndimage.shift(
        hu_slice.astype(np.float32), (shift_rows, shift_columns), order=1, mode="constant", cval=AIR_HU
    )
    hu_slice[...] = np.rint(shifted).astype(np.int16)


def assemble_series(
    slices: list[SliceHeader],
    *,
    strict: bool = False,
    min_slices: int = 1,
    max_spacing_deviation: float = 0.1,
    decode_threads: int = 1,
) -> AssembledVolume:
    """Build the HU volume of one series; raises :class:`AssemblyError` with a quarantine reason."""
    if not slices:
        raise AssemblyError("series has no slices")
    if len(slices) < min_slices:
        raise AssemblyError(f"{len(slices)} slice(s), fewer than convert.min_slices={min_slices} (params.yaml)")
    _value_checks(slices)
    _geometry_value_checks(slices)
    row_cos, col_cos, (row_spacing, column_spacing), rows, columns = _geometry_checks(slices)
    if len(slices) * rows * columns * 2 > MAX_VOLUME_BYTES:
        raise AssemblyError(
            f"volume of {len(slices)} x {rows} x {columns} voxels "
            f"above {MAX_VOLUME_BYTES >> 30} GiB (implausible header)"
        )
    normal = np.cross(row_cos, col_cos)
    positions = np.array([s.position_mm for s in slices], dtype=np.float64)
    along = positions @ normal
    ranking = sorted(range(len(slices)), key=lambda index: (along[index], slices[index].instance_number or 0))
    ordered = [slices[index] for index in ranking]
    positions = positions[ranking]
    along = along[ranking]
    warnings: list[str] = []
    steps = np.diff(along)
    n = len(ordered)
    if n > 1 and np.all(np.abs(along - along[0]) < POSITION_TOLERANCE_MM):
        raise AssemblyError(f"not a volume: all {n} slices are at the same position")
    if n > 1 and np.any(steps < POSITION_TOLERANCE_MM):
        duplicates = int(np.sum(steps < POSITION_TOLERANCE_MM))
        raise AssemblyError(
            f"{duplicates} slice(s) share a position with another "
            "slice (mixed acquisitions or duplicates in one series)"
        )
    if n == 1:
        spacing_k = ordered[0].slice_thickness_mm or 1.0
        warnings.append(f"single slice: slice spacing taken from SliceThickness ({spacing_k:g} mm)")
        uniform = True
    else:
        spacing_k = float(np.median(steps))
        deviation = float(np.max(np.abs(steps - spacing_k)) / spacing_k)
        uniform = deviation <= max_spacing_deviation
    offsets = positions - positions[0]
    shear = offsets - np.outer(offsets @ normal, normal)
    max_shear_mm = float(np.abs(shear).max()) if n > 1 else 0.0
    tilted = max_shear_mm > 0.1 * min(row_spacing, column_spacing)
    problems = []
    if tilted:
        per_mm = max_shear_mm / max(float(along[-1] - along[0]), 1e-6)
        problems.append(
            f"gantry tilt ({math.degrees(math.atan(per_mm)):.1f} "
            "degrees: slice positions sheared against the slice normal)"
        )
    if not uniform:
        problems.append(
            f"non-uniform slice spacing (steps {float(steps.min()):.3g}..{float(steps.max()):.3g} "
            f"mm, median {spacing_k:.3g} mm: missing slices?)"
        )
    if problems and strict:
        raise AssemblyError("strict mode: " + "; ".join(problems) + " (convert.strict: false resamples instead)")
    if not uniform:
        needed = round(float(along[-1] - along[0]) / spacing_k) + 1
        if needed > MAX_RESAMPLE_FACTOR * n + 16:
            raise AssemblyError(
                f"slice positions span {float(along[-1] - along[0]):.4g} mm at a median step of {spacing_k:.3g} mm: "
                f"resampling would need {needed} slices from {n} (corrupt ImagePositionPatient?)"
            )

    # decode slice by slice into a preallocated int16 array (one file's dataset alive per thread)
    volume = np.empty((n, rows, columns), dtype=np.int16)
    order = {(header.path, header.frame_index): index for index, header in enumerate(ordered)}
    slices_by_file: dict[Path, list[SliceHeader]] = {}
    for header in ordered:
        slices_by_file.setdefault(header.path, []).append(header)

    def fill(path: Path) -> str:
        try:
            return _fill(volume, order, slices_by_file, path)
        except AssemblyError as error:
            message = str(error)
            relative = slices_by_file[path][0].relative_path
            raise AssemblyError(message if relative in message else f"{relative}: {message}") from None

    compressed = any(header.transfer_syntax not in NATIVE_LITTLE_ENDIAN for header in ordered)
    decoder_warnings: list[str] = []
    with captured_pydicom_warnings(decoder_warnings, " while decoding"):  # into the manifest, not stderr
        if decode_threads > 1 and len(slices_by_file) > 1 and compressed:  # native: GIL-bound, threads do not help
            with ThreadPoolExecutor(max_workers=decode_threads) as pool:
                syntaxes = list(pool.map(fill, list(slices_by_file)))
        else:
            syntaxes = [fill(path) for path in slices_by_file]
    warnings += decoder_warnings

    warnings += _hu_range_checks(volume, ordered)
    warnings += _slice_outlier_check(volume, ordered)
    resampled = False
    if tilted:
        for k in range(n):
            _shift_slice(volume[k], float(shear[k] @ col_cos) / row_spacing, float(shear[k] @ row_cos) / column_spacing)
        warnings.append(problems[0] + "; resampled to an orthogonal grid (in-plane shift per slice, linear)")
        resampled = True
    if not uniform:
        volume, spacing_k = _resample_uniform(volume, along - along[0], spacing_k)
        warnings.append(problems[-1] + f"; resampled to {volume.shape[0]} slices at {spacing_k:.4g} mm (linear)")
        resampled = True
    elif n > 1:
        spacing_k = float(along[-1] - along[0]) / (n - 1)

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cos * column_spacing
    affine_lps[:3, 1] = col_cos * row_spacing
    affine_lps[:3, 2] = normal * spacing_k
    affine_lps[:3, 3] = positions[0]
    return AssembledVolume(
        hu_kji=volume,
        affine_ras_ijk=LPS_TO_RAS @ affine_lps,
        warnings=warnings,
        resampled=resampled,
        n_input_slices=n,
        transfer_syntaxes=sorted(set(syntaxes)),
    )


def _resample_uniform(volume: np.ndarray, along_mm: np.ndarray, spacing_mm: float) -> tuple[np.ndarray, float]:
    """Linear interpolation along k onto positions 0, s, 2s, ... covering the original extent."""
    count = int(round(float(along_mm[-1]) / spacing_mm)) + 1
    spacing = float(along_mm[-1]) / (count - 1) if count > 1 else spacing_mm
    out = np.empty((count, *volume.shape[1:]), dtype=np.int16)
    for m in range(count):
        target = m * spacing
        upper = int(np.searchsorted(along_mm, target, side="left"))
        upper = min(max(upper, 1), len(along_mm) - 1)
        lower = upper - 1
        width = float(along_mm[upper] - along_mm[lower])
        weight = min(max((target - float(along_mm[lower])) / width, 0.0), 1.0)
        if weight < 1e-6:
            out[m] = volume[lower]
        elif weight > 1 - 1e-6:
            out[m] = volume[upper]
        else:
            blended = volume[lower].astype(np.float32) * (1 - weight) + volume[upper].astype(np.float32) * weight
            out[m] = np.rint(blended).astype(np.int16)
    return out, spacing
