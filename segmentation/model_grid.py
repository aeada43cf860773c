"""Model-grid preparation for the shard stage: ROI crop around the set's anatomies, then resample.

fVLM crops each CT to the union of its anatomies plus a margin (+5 slices, +20 voxels at the model
spacing) and resamples to 1 x 1 x 3 mm (x, y, z). Here:

1. volume and mask are brought to RAS canonical orientation and transposed to (z, y, x);
2. the ROI is the bounding box of every voxel of the set's anatomies, widened by the margins
   (converted from model voxels to source voxels, rounded up) and clipped to the volume — so every
   anatomy stays intact;
3. the CROP is resampled (cropping first keeps a 512 x 512 x 300 study fast): image linear, mask
   nearest, separably along z, y, x (torch ``index_select`` + ``lerp``), onto a grid that starts on the
   crop's first voxel and steps by exactly the profile's spacing (so the new affine is exact:
   ``affine @ translate(crop start) @ scale(step)``);
4. HU stay int16 (rounded); windowing to the model's HU range happens at load time in training.

The returned affine follows the NIfTI convention (maps (x, y, z) voxel indices — the reversed (z, y, x)
array axes — to RAS mm), so ``nib.Nifti1Image(hu_zyx.transpose(2, 1, 0), affine)`` is a valid image.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class EmptyRoiError(ValueError):
    """The mask holds none of the anatomy set's classes: no ROI to crop to."""


class ModelGrid(NamedTuple):
    hu_zyx: Any  # int16 (z, y, x)
    anatomy_index_zyx: Any  # uint8 (z, y, x); 0 = background, k + 1 = anatomy k of the set
    spacing_zyx: tuple[float, float, float]
    affine: Any  # 4 x 4 float64, NIfTI convention (x, y, z indices -> RAS mm)


def canonical_zyx(volume: Any, mask_ids: Any, affine: Any | None, lookup: Any | None = None) -> tuple[Any, Any, Any]:
    """(hu_zyx, ids_zyx, canonical affine) views from nibabel images or (x, y, z) arrays + affine.

    ``lookup``: optional table applied to the mask ids first (e.g. id -> anatomy index).
    """
    import nibabel as nib
    import numpy as np

    if isinstance(volume, nib.spatialimages.SpatialImage):
        image = volume
    else:
        if affine is None:
            raise ValueError("an (x, y, z) array volume needs its affine")
        image = nib.Nifti1Image(np.asarray(volume), np.asarray(affine, dtype=np.float64))
    mask_data = (
        np.asarray(mask_ids.dataobj) if isinstance(mask_ids, nib.spatialimages.SpatialImage) else np.asarray(mask_ids)
    )
    if lookup is not None:  # map ids on the stored (contiguous) array: much faster than on a view
        mask_data = (
            lookup[mask_data]
            if mask_data.dtype == np.uint8
            else lookup[np.clip(mask_data, 0, len(lookup) - 1).astype(np.intp)]
        )
    if mask_data.shape != tuple(image.shape[:3]):
        raise ValueError(f"mask shape {mask_data.shape} differs from volume shape {tuple(image.shape[:3])}")
    ornt = nib.orientations.io_orientation(image.affine)
    hu = np.asarray(image.dataobj)
    if hu.dtype.kind == "f":
        hu = np.clip(np.rint(hu), -32768, 32767).astype(np.int16)
    hu = nib.orientations.apply_orientation(hu, ornt)
    mask_data = nib.orientations.apply_orientation(mask_data, ornt)
    canonical_affine = image.affine @ nib.orientations.inv_ornt_aff(ornt, image.shape[:3])
    # views, not copies: transposing a whole 512 x 512 x 300 volume costs seconds; callers crop first
    return hu.transpose(2, 1, 0), mask_data.transpose(2, 1, 0), canonical_affine


def _linear_along(values: Any, coords: Any, axis: int) -> Any:
    """Linear interpolation of a float32 torch tensor along one axis at fractional source ``coords``.

    Done as a product with the (count x size) interpolation matrix: BLAS-fast whatever the axis,
    where gathering along the innermost axis is slow.
    """
    import numpy as np
    import torch

    size = values.shape[axis]
    weights = np.zeros((len(coords), size), dtype=np.float32)
    rows = np.arange(len(coords))
    if size == 1:
        weights[:, 0] = 1.0
    else:
        lower = np.clip(np.floor(coords).astype(np.int64), 0, size - 2)
        frac = (coords - lower).astype(np.float32)
        weights[rows, lower] = 1.0 - frac
        weights[rows, lower + 1] += frac
    product = torch.tensordot(torch.from_numpy(weights), values, dims=([1], [axis]))
    return torch.movedim(product, 0, axis)


def roi_box_zyx(anatomy_index_zyx: Any, margins_zyx: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """Bounding box of all anatomy voxels widened by ``margins_zyx`` source voxels, clipped to the volume."""
    import numpy as np

    occupied = [
        np.flatnonzero(anatomy_index_zyx.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)
    ]
    if any(len(o) == 0 for o in occupied):
        raise EmptyRoiError("mask holds no anatomy of the set: nothing to crop to")
    return tuple(
        slice(max(0, int(o[0]) - m), min(n, int(o[-1]) + 1 + m))
        for o, m, n in zip(occupied, margins_zyx, anatomy_index_zyx.shape, strict=False)
    )


def prepare_model_grid(
    volume: Any,
    mask_ids: Any,
    anatomy_set: Any,
    spacing_zyx_mm: tuple[float, float, float],
    margin_slices: int,
    margin_voxels: int,
    *,
    affine: Any | None = None,
) -> ModelGrid:
    """Crop to the set's anatomies (+ margins) and resample to ``spacing_zyx_mm``.

    ``volume``: a nibabel image (any orientation) or an (x, y, z) HU array with ``affine``;
    ``mask_ids``: TotalSegmentator ids on exactly that grid (array as stored, or image).
    ``margin_slices`` / ``margin_voxels``: margins in MODEL voxels along z / along y and x.
    """
    import numpy as np
    import torch

    from core.anatomy_sets import load_anatomy_set

    aset = load_anatomy_set(anatomy_set) if isinstance(anatomy_set, str) else anatomy_set
    hu_zyx, index_zyx, canonical_affine = canonical_zyx(volume, mask_ids, affine, lookup=aset.lookup_table())
    source_spacing_xyz = np.sqrt((canonical_affine[:3, :3] ** 2).sum(axis=0))
    source_spacing = source_spacing_xyz[::-1]
    target_spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)

    margins_model = np.array([margin_slices, margin_voxels, margin_voxels], dtype=np.float64)
    margins_src = tuple(
        int(math.ceil(m * t / s - 1e-6)) for m, t, s in zip(margins_model, target_spacing, source_spacing, strict=False)
    )
    try:
        crop = roi_box_zyx(index_zyx, margins_src)
    except EmptyRoiError:
        raise EmptyRoiError(f"mask holds no anatomy of set {aset.name!r}: nothing to crop to") from None
    start = [c.start for c in crop]
    # output grid: starts on the crop's first voxel, steps by exactly the target spacing, and reaches
    # the crop's last voxel (so no anatomy voxel is dropped) without sampling past the volume's end
    # (there, less than one model voxel of a FOV-cut anatomy can fall off)
    step = target_spacing / source_spacing  # source voxels per model voxel, per (z, y, x)
    counts = [
        min(int(math.ceil((c.stop - c.start - 1) / st - 1e-6)), int(math.floor((n - 1 - c.start) / st + 1e-6))) + 1
        for c, st, n in zip(crop, step, hu_zyx.shape, strict=False)
    ]
    reach = tuple(
        slice(c.start, min(n, c.start + int(math.ceil((k - 1) * st)) + 1))
        for c, k, st, n in zip(crop, counts, step, hu_zyx.shape, strict=False)
    )
    # work in the stored (x, y, z) memory order (fast, contiguous) and transpose only the small result;
    # the axis with the largest step goes first so the data shrinks early
    hu_crop_xyz = np.ascontiguousarray(hu_zyx[reach].transpose(2, 1, 0))
    index_crop_xyz = np.ascontiguousarray(index_zyx[reach].transpose(2, 1, 0))
    volume_t = torch.from_numpy(hu_crop_xyz).to(torch.float32)
    index_out = index_crop_xyz
    for axis in sorted(range(3), key=lambda a: -step[a]):
        xyz_axis = 2 - axis
        size = hu_crop_xyz.shape[xyz_axis]
        count = counts[axis]
        coords = np.minimum(np.arange(count, dtype=np.float64) * step[axis], size - 1)
        volume_t = _linear_along(volume_t, coords, xyz_axis)
        nearest = np.clip(np.rint(coords).astype(np.intp), 0, size - 1)
        index_out = np.take(index_out, nearest, axis=xyz_axis)
    volume_t = volume_t.permute(2, 1, 0)
    index_out = index_out.transpose(2, 1, 0)
    hu_out = torch.clamp(torch.round(volume_t), -32768, 32767).to(torch.int16).numpy()
    translate = np.eye(4)
    translate[:3, 3] = np.array(start[::-1], dtype=np.float64)
    out_affine = canonical_affine @ translate @ np.diag([*step[::-1], 1.0])
    spacing_out = tuple(float(v) for v in target_spacing)
    return ModelGrid(
        np.ascontiguousarray(hu_out), np.ascontiguousarray(index_out.astype(np.uint8)), spacing_out, out_affine
    )
