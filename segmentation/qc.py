"""QC picture per study: axial + coronal slices with the set's anatomies in colour and a legend.

Radiological display: patient right on the image left, anterior up (axial), superior up (coronal).
Inputs are (z, y, x) arrays of a RAS canonical volume.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

QC_WINDOW_HU = (-1000.0, 400.0)  # wide enough for lungs and mediastinum in one picture
PALETTE = (
    "#e6194b",
    "#3cb44b",
    "#4363d8",
    "#f58231",
    "#911eb4",
    "#42d4f4",
    "#f032e6",
    "#bfef45",
    "#fabed4",
    "#469990",
    "#dcbeff",
    "#9a6324",
    "#800000",
    "#aaffc3",
    "#808000",
    "#000075",
)


def _slice_levels(index_zyx: Any, axis: int, count: int) -> list[int]:
    """Slice positions spread over the anatomies' extent along ``axis`` (whole volume if empty)."""
    import numpy as np

    other = tuple(a for a in range(3) if a != axis)
    occupied = np.flatnonzero(index_zyx.any(axis=other))
    low, high = (occupied[0], occupied[-1]) if len(occupied) else (0, index_zyx.shape[axis] - 1)
    return sorted({int(round(v)) for v in np.linspace(low, high, count + 2)[1:-1]})


def write_qc_png(
    hu_zyx: Any,
    anatomy_index_zyx: Any,
    anatomy_names: tuple[str, ...] | list[str],
    spacing_zyx_mm: tuple[float, float, float],
    path: str | os.PathLike[str],
    *,
    title: str = "",
    voxel_counts: dict[str, int] | None = None,
    axial: int = 4,
    coronal: int = 2,
) -> Path:
    """Write the mosaic PNG atomically; returns its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.colors import ListedColormap, to_rgba
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from core.io import atomic_path

    hu = np.asarray(hu_zyx)  # no whole-volume copy: only the shown slices are converted
    index = np.asarray(anatomy_index_zyx)
    colours = [to_rgba(PALETTE[k % len(PALETTE)], 0.45) for k in range(len(anatomy_names))]
    cmap = ListedColormap([(0, 0, 0, 0), *colours])
    sz, sy, sx = spacing_zyx_mm
    views: list[tuple[str, Any, Any, float]] = []
    for z in _slice_levels(index, 0, axial):
        views.append((f"axial z={z}", hu[z][::-1, ::-1].astype(np.float32), index[z][::-1, ::-1], sy / sx))
    for y in _slice_levels(index, 1, coronal):
        views.append(
            (f"coronal y={y}", hu[:, y, :][::-1, ::-1].astype(np.float32), index[:, y, :][::-1, ::-1], sz / sx)
        )
    figure = Figure(figsize=(3.0 * len(views), 3.6), dpi=100)
    axes = figure.subplots(1, len(views), squeeze=False)[0]
    for ax, (label, image, labels, aspect) in zip(axes, views, strict=False):
        ax.imshow(
            image, cmap="gray", vmin=QC_WINDOW_HU[0], vmax=QC_WINDOW_HU[1], aspect=aspect, interpolation="nearest"
        )
        ax.imshow(labels, cmap=cmap, vmin=0, vmax=len(anatomy_names), aspect=aspect, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    counts = voxel_counts or {}
    handles = [
        Patch(color=PALETTE[k % len(PALETTE)], label=f"{name} ({counts[name]} vox)" if name in counts else name)
        for k, name in enumerate(anatomy_names)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, top=0.86, bottom=0.14, wspace=0.03)
    out = Path(path)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")
    return out
