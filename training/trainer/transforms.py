"""fVLM's training / evaluation transform on (z, y, x) arrays (numpy; used inside DataLoader workers).

* crop to ``crop_zyx``: random position (training), or centred on the anatomies' union / on one anatomy
  (evaluation); where the volume is smaller than the crop it is padded with air (HU window low -> 0.0
  after windowing) and background (mask 0);
* HU window ``(low, high)`` -> [0, 1] (clipped);
* random flips per axis with probability ``flip_prob`` (training only; public fVLM code: 0.2);
* ``anatomy_intact[k]``: anatomy k is present in the crop and the crop cut none of it off: it touches
  no face of the crop's valid (non-padded) region that lies *inside* the stored volume (``cut_faces``).
  A face where the stored volume itself ends (the edge of the scan, e.g. the esophagus leaving a chest
  CT at the top, a lung apex on the first slice) does not make it incomplete: the report describes what
  the scan shows, and the crop shows all of it. An absent anatomy is not intact (as the public fVLM
  code excludes them from the loss).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (start, stop) per axis, half-open


def window_hu(hu_volume: np.ndarray, hu_window: Sequence[float]) -> np.ndarray:
    """int16 HU -> float32 in [0, 1]: ``clip((hu - low) / (high - low), 0, 1)``."""
    low, high = float(hu_window[0]), float(hu_window[1])
    out = hu_volume.astype(np.float32)
    out -= low
    out *= 1.0 / (high - low)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _window_into(hu_volume: np.ndarray, out: np.ndarray, hu_window: Sequence[float]) -> None:
    """:func:`window_hu` written straight into ``out`` (a float32 view): no temporary full-size array."""
    low, high = float(hu_window[0]), float(hu_window[1])
    np.subtract(hu_volume, np.float32(low), out=out, dtype=np.float32)
    np.multiply(out, np.float32(1.0 / (high - low)), out=out)
    np.clip(out, 0.0, 1.0, out=out)


def start_range(size: int, crop: int) -> tuple[int, int]:
    """Inclusive range of crop starts; negative starts pad before the volume when it is smaller."""
    return (min(0, size - crop), max(0, size - crop))


def random_starts(shape: Sequence[int], crop_zyx: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    starts = []
    for size, crop in zip(shape, crop_zyx, strict=False):
        low, high = start_range(int(size), int(crop))
        starts.append(int(rng.integers(low, high + 1)))
    return tuple(starts)


def centred_starts(shape: Sequence[int], crop_zyx: Sequence[int], centre_zyx: Sequence[float]) -> tuple[int, ...]:
    """Starts putting ``centre_zyx`` (voxel coordinates) at the crop centre, kept inside the valid range."""
    starts = []
    for size, crop, centre in zip(shape, crop_zyx, centre_zyx, strict=False):
        low, high = start_range(int(size), int(crop))
        start = int(np.floor(float(centre) + 0.5)) - int(crop) // 2
        starts.append(min(max(start, low), high))
    return tuple(starts)


def label_centre(mask: np.ndarray, label: int | None = None) -> tuple[float, float, float] | None:
    """Centre of the bounding box of ``mask == label`` (``None``: any foreground); None when absent."""
    hit = mask > 0 if label is None else mask == label
    if not hit.any():
        return None
    centre = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        indices = np.flatnonzero(hit.any(axis=other))
        centre.append((indices[0] + indices[-1]) / 2.0)
    return (centre[0], centre[1], centre[2])


def extract_crop(
    hu_volume: np.ndarray,
    anatomy_mask: np.ndarray,
    starts: Sequence[int],
    crop_zyx: Sequence[int],
    hu_window: Sequence[float],
) -> tuple[np.ndarray, np.ndarray, Box]:
    """Windowed float32 crop, uint8 mask crop and the crop's valid (non-padded) box."""
    crop = tuple(int(c) for c in crop_zyx)
    volume_out = np.zeros(crop, dtype=np.float32)  # 0.0 = HU window low = air
    mask_out = np.zeros(crop, dtype=np.uint8)
    src, dst, box = [], [], []
    for size, start, length in zip(hu_volume.shape, starts, crop, strict=False):
        src_lo, src_hi = max(start, 0), min(start + length, size)
        dst_lo = src_lo - start
        dst_hi = dst_lo + max(src_hi - src_lo, 0)
        src.append(slice(src_lo, src_hi))
        dst.append(slice(dst_lo, dst_hi))
        box.append((dst_lo, dst_hi))
    _window_into(hu_volume[tuple(src)], volume_out[tuple(dst)], hu_window)
    mask_out[tuple(dst)] = anatomy_mask[tuple(src)]
    return volume_out, mask_out, (box[0], box[1], box[2])


def cut_faces(shape: Sequence[int], starts: Sequence[int], crop_zyx: Sequence[int]) -> tuple[bool, ...]:
    """Which faces of a crop's valid region cut into the volume, in the order (z low, z high, y low,
    y high, x low, x high): a low face where ``start > 0``, a high face where ``start + crop < size``."""
    out: list[bool] = []
    for size, start, crop in zip(shape, starts, crop_zyx, strict=False):
        out += [int(start) > 0, int(start) + int(crop) < int(size)]
    return tuple(out)


def anatomy_intact(
    mask_crop: np.ndarray, valid_box: Box, n_anatomies: int, faces_cut: Sequence[bool] | None = None
) -> np.ndarray:
    """bool (K,): present in the crop and touching no face of the valid region that the crop cut
    (``faces_cut`` from :func:`cut_faces`; None: every face counts, i.e. the region is a crop on all sides)."""
    region = mask_crop[tuple(slice(lo, hi) for lo, hi in valid_box)]
    if region.size == 0:
        return np.zeros(n_anatomies, dtype=bool)
    # presence by comparison per label: ~10x faster than bincount (which widens uint8 to int64)
    present = np.array([bool((region == k + 1).any()) for k in range(n_anatomies)], dtype=bool)
    all_faces = (region[0], region[-1], region[:, 0], region[:, -1], region[:, :, 0], region[:, :, -1])
    checked = [
        f.ravel() for f, cut in zip(all_faces, faces_cut if faces_cut is not None else (True,) * 6, strict=False) if cut
    ]
    if not checked:
        return present
    faces = np.concatenate(checked)
    touching = np.bincount(faces, minlength=n_anatomies + 1)[1 : n_anatomies + 1] > 0
    return present & ~touching


def random_flips(
    volume: np.ndarray, mask: np.ndarray, rng: np.random.Generator, flip_prob: float
) -> tuple[np.ndarray, np.ndarray]:
    """Flip volume and mask together along each axis with probability ``flip_prob`` (independent draws)."""
    for axis in range(3):
        if rng.random() < flip_prob:
            volume = np.flip(volume, axis=axis)
            mask = np.flip(mask, axis=axis)
    return np.ascontiguousarray(volume), np.ascontiguousarray(mask)
