"""Grid helpers: put a label map given on one voxel grid onto another (nearest), checking coverage.

Affines here are NIfTI-style: they map voxel indices (i, j, k) of the array *as stored* (NIfTI: x, y, z)
to RAS+ millimetres.
"""

from __future__ import annotations

from typing import Any

COVERAGE_TOLERANCE_VOXELS = 0.51  # a target voxel centre may lie up to ~half a source voxel outside


class MaskGeometryError(ValueError):
    """A mask that cannot be placed on the volume grid (does not cover it, wrong dimensionality...)."""


def same_grid(
    shape_a: tuple[int, ...], affine_a: Any, shape_b: tuple[int, ...], affine_b: Any, atol_mm: float = 1e-3
) -> bool:
    import numpy as np

    return tuple(shape_a) == tuple(shape_b) and bool(np.allclose(affine_a, affine_b, atol=atol_mm))


def coverage_gap(src_shape: tuple[int, ...], src_affine: Any, dst_shape: tuple[int, ...], dst_affine: Any) -> Any:
    """How far (in source voxels, per source axis) the destination grid's corners fall outside the source."""
    import itertools

    import numpy as np

    corners = np.array(list(itertools.product(*[(0, n - 1) for n in dst_shape])), dtype=np.float64)
    to_src = np.linalg.inv(src_affine) @ dst_affine
    src_coords = corners @ to_src[:3, :3].T + to_src[:3, 3]
    low = np.maximum(0.0, -0.5 - src_coords.min(axis=0))
    high = np.maximum(0.0, src_coords.max(axis=0) - (np.asarray(src_shape, dtype=np.float64) - 0.5))
    return np.maximum(low, high)


def resample_labels_to_grid(
    labels: Any,
    src_affine: Any,
    dst_shape: tuple[int, ...],
    dst_affine: Any,
    *,
    what: str = "mask",
    require_coverage: bool = True,
) -> Any:
    """Nearest-neighbour resampling of an integer label array onto ``dst_shape`` / ``dst_affine``.

    Raises :class:`MaskGeometryError` when the source grid does not cover the destination grid, or,
    with ``require_coverage=False`` (sparse sources such as a DICOM SEG holding only the frames with
    segments: outside them is background), when none of its foreground lands in the destination grid.
    """
    import numpy as np
    from scipy import ndimage

    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise MaskGeometryError(f"{what}: expected a 3D label map, got shape {labels.shape}")
    if same_grid(labels.shape, src_affine, dst_shape, dst_affine):
        return labels
    gap = coverage_gap(labels.shape, src_affine, dst_shape, dst_affine)
    if not require_coverage:
        # pad one background voxel around the source and sample with edge replication: a voxel centre
        # within half a source voxel of the grid takes the edge label, anything further is background
        to_src = np.linalg.inv(src_affine) @ dst_affine
        padded = np.pad(labels, 1)
        out = ndimage.affine_transform(
            padded,
            to_src[:3, :3],
            offset=to_src[:3, 3] + 1.0,
            output_shape=tuple(dst_shape),
            order=0,
            mode="nearest",
            prefilter=False,
        ).astype(labels.dtype)
        if labels.any() and not out.any():
            raise MaskGeometryError(f"{what} lies outside the volume: none of its labelled voxels falls on it")
        return out
    if (gap > COVERAGE_TOLERANCE_VOXELS).any():
        raise MaskGeometryError(
            f"{what} does not cover the volume: the volume extends {np.round(gap, 1).tolist()} mask voxels "
            f"beyond the mask grid (mask shape {list(labels.shape)}, volume shape {list(dst_shape)})"
        )
    to_src = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(
        labels,
        to_src[:3, :3],
        offset=to_src[:3, 3],
        output_shape=tuple(dst_shape),
        order=0,
        mode="nearest",
        prefilter=False,
    ).astype(labels.dtype)
