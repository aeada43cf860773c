"""Per-study, per-anatomy statistics of a TotalSegmentator label map: size, bounding box, FOV cut.

All arrays are (z, y, x) — the NIfTI (x, y, z) array of a RAS volume transposed — and bounding boxes
are ``(z0, y0, x0, z1, y1, x1)`` voxel indices with exclusive ends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

AXES = ("z", "y", "x")


@dataclass(frozen=True)
class AnatomyStats:
    anatomy: str
    voxels: int
    volume_ml: float
    bbox_zyx: tuple[int, int, int, int, int, int] | None  # (z0, y0, x0, z1, y1, x1), ends exclusive
    touches: tuple[str, ...]  # FOV faces the anatomy touches: "z_first", "z_last", "y_first", ...
    missing_classes: tuple[str, ...] = field(default=())  # classes of the anatomy absent from the mask

    @property
    def present(self) -> bool:
        return self.voxels > 0

    @property
    def cut_by_fov(self) -> bool:
        """Touches the first/last slice or an in-plane border: the scan probably cuts it."""
        return bool(self.touches)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cut_by_fov"] = self.cut_by_fov
        return out


def _resolve_set(anatomy_set: Any) -> Any:
    if isinstance(anatomy_set, str):
        from core.anatomy_sets import load_anatomy_set

        return load_anatomy_set(anatomy_set)
    return anatomy_set


def anatomy_index_map(mask_ids: Any, anatomy_set: Any) -> Any:
    """TotalSegmentator ids -> uint8 anatomy index (0 = background, k + 1 = anatomy k of the set)."""
    import numpy as np

    table = _resolve_set(anatomy_set).lookup_table()
    ids = np.asarray(mask_ids)
    if ids.dtype != np.uint8:
        ids = np.clip(ids, 0, len(table) - 1).astype(np.intp)
    return table[ids]


def label_counts(labels: Any) -> Any:
    """Voxels per label value (0..255) of a uint8 label array (int64 array of 256).

    ``torch.bincount`` counts uint8 directly (~0.2 s for 512 x 512 x 300), where ``np.bincount`` first
    converts to intp (~6 s and 8x the memory).
    """
    import numpy as np
    import torch

    labels = np.asarray(labels)
    if labels.dtype != np.uint8:
        raise ValueError(f"label_counts wants uint8 labels, got {labels.dtype}")
    if not labels.flags.c_contiguous and labels.T.flags.c_contiguous:
        labels = labels.T  # counting ignores order: walk memory in storage order
    flat = torch.from_numpy(np.ascontiguousarray(labels).reshape(-1))
    return torch.bincount(flat, minlength=256).numpy()[:256].astype(np.int64)


def anatomy_stats(
    mask_ids_zyx: Any,
    anatomy_set: Any,
    spacing_zyx_mm: tuple[float, float, float],
    *,
    class_counts: Any | None = None,
    anatomy_index_zyx: Any | None = None,
) -> dict[str, AnatomyStats]:
    """Per anatomy of the set: voxel count, volume, bounding box, FOV faces it touches, missing classes.

    ``class_counts`` (:func:`label_counts` of the mask) and ``anatomy_index_zyx``
    (:func:`anatomy_index_map` of it) may be passed when the caller already has them.
    """
    import numpy as np
    from scipy import ndimage

    aset = _resolve_set(anatomy_set)
    ids = np.asarray(mask_ids_zyx)
    if ids.ndim != 3:
        raise ValueError(f"mask must be 3D (z, y, x), got shape {ids.shape}")
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError("mask ids must lie in 0..255")
        ids = ids.astype(np.uint8)
    index = anatomy_index_map(ids, aset) if anatomy_index_zyx is None else np.asarray(anatomy_index_zyx)
    n_anatomies = len(aset.anatomies)
    class_counts = label_counts(ids) if class_counts is None else np.asarray(class_counts)
    table = aset.lookup_table()
    counts = np.bincount(table, weights=class_counts[: len(table)], minlength=n_anatomies + 1).astype(np.int64)
    boxes = ndimage.find_objects(index, max_label=n_anatomies)
    present_ids = set(np.flatnonzero(class_counts).tolist())
    class_ids = aset.class_ids()
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    out: dict[str, AnatomyStats] = {}
    for k, anatomy in enumerate(aset.anatomies):
        box = boxes[k] if k < len(boxes) else None
        bbox = None
        touches: list[str] = []
        if box is not None:
            bbox = tuple(int(s.start) for s in box) + tuple(int(s.stop) for s in box)
            for axis, (part, size) in enumerate(zip(box, ids.shape, strict=False)):
                if part.start == 0:
                    touches.append(f"{AXES[axis]}_first")
                if part.stop == size:
                    touches.append(f"{AXES[axis]}_last")
        missing = tuple(
            name for name, cid in zip(anatomy.classes, class_ids[anatomy.name], strict=False) if cid not in present_ids
        )
        voxels = int(counts[k + 1])
        out[anatomy.name] = AnatomyStats(
            anatomy.name, voxels, round(voxels * voxel_ml, 3), bbox, tuple(touches), missing
        )
    return out
