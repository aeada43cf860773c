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
    """Write the mosaic PNG atomically; returns its path.

    The slices are composed into one RGB mosaic with numpy (grey window, anatomy colours blended at 45 %,
    nearest-neighbour resampling to the physical aspect) and drawn in a single axes-free figure: one
    matplotlib axes per view cost ~0.8 s a study (86 % of the precomputed segment stage), this ~0.3 s.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import numpy as np
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    from core.io import atomic_path

    hu = np.asarray(hu_zyx)  # no whole-volume copy: only the shown slices are converted
    index = np.asarray(anatomy_index_zyx)
    colours = np.array([(0.0, 0.0, 0.0), *[to_rgb(PALETTE[k % len(PALETTE)]) for k in range(len(anatomy_names))]])
    sz, sy, sx = spacing_zyx_mm
    views: list[tuple[str, Any, Any, float]] = []
    for z in _slice_levels(index, 0, axial):
        views.append((f"axial z={z}", hu[z][::-1, ::-1], index[z][::-1, ::-1], sy / sx))
    for y in _slice_levels(index, 1, coronal):
        views.append((f"coronal y={y}", hu[:, y, :][::-1, ::-1], index[:, y, :][::-1, ::-1], sz / sx))
    tile, gap, top, bottom = 290, 10, 50, 52  # pixels: tile box, gap between tiles, title band, legend band
    width = len(views) * (tile + gap) + gap
    mosaic = np.ones((top + tile + bottom, width, 3), dtype=np.float32)
    centres = []
    for number, (_, image, labels, aspect) in enumerate(views):
        rgb = _tile_rgb(image, labels, aspect, colours, tile)
        left = gap + number * (tile + gap) + (tile - rgb.shape[1]) // 2
        row = top + (tile - rgb.shape[0]) // 2
        mosaic[row : row + rgb.shape[0], left : left + rgb.shape[1]] = rgb
        centres.append(gap + number * (tile + gap) + tile / 2)
    dpi = 100
    figure = Figure(figsize=(width / dpi, mosaic.shape[0] / dpi), dpi=dpi)
    figure.figimage(mosaic, xo=0, yo=0, origin="upper")
    for (label, *_), centre in zip(views, centres, strict=False):
        figure.text(centre / width, 1 - (top - 8) / mosaic.shape[0], label, ha="center", va="bottom", fontsize=8)
    counts = voxel_counts or {}
    handles = [
        Patch(color=PALETTE[k % len(PALETTE)], label=f"{name} ({counts[name]} vox)" if name in counts else name)
        for k, name in enumerate(anatomy_names)
    ]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, fontsize=9)
    out = Path(path)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return out


def _tile_rgb(image_hu: Any, labels: Any, aspect: float, colours: Any, box: int) -> Any:
    """One view as (h, w, 3) float RGB in [0, 1], fitted into a ``box`` square at its physical aspect."""
    import numpy as np

    rows, cols = image_hu.shape
    height, width = rows * float(aspect), float(cols)  # physical size in column-spacing units
    scale = box / max(height, width, 1e-6)
    out_rows, out_cols = max(1, int(round(height * scale))), max(1, int(round(width * scale)))
    pick_rows = np.minimum((np.arange(out_rows) * rows / out_rows).astype(np.intp), rows - 1)
    pick_cols = np.minimum((np.arange(out_cols) * cols / out_cols).astype(np.intp), cols - 1)
    grey = np.asarray(image_hu)[np.ix_(pick_rows, pick_cols)].astype(np.float32)
    grey = np.clip((grey - QC_WINDOW_HU[0]) / (QC_WINDOW_HU[1] - QC_WINDOW_HU[0]), 0.0, 1.0)
    ids = np.clip(np.asarray(labels)[np.ix_(pick_rows, pick_cols)].astype(np.intp), 0, len(colours) - 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    alpha = np.where(ids > 0, 0.45, 0.0).astype(np.float32)[..., None]
    return (1 - alpha) * rgb + alpha * colours[ids].astype(np.float32)
