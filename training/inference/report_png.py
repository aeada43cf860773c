"""``fvlm predict --png``: one page per study: key slices with the anatomy overlay and the positive calls.

Drawn on the model grid (what the model saw, before the crop): one axial slice through the centre of
each assessed anatomy and one coronal slice through the anatomies' union, HU shown in a soft-tissue
window, each anatomy in its own colour; beside them the model version, the positive calls (probability
vs threshold) and the anatomies that could not be assessed. Matplotlib Agg, no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c")
_DISPLAY_WINDOW = (-1000.0, 400.0)  # lung + mediastinum in one grey scale


def key_slices(index_zyx: np.ndarray, anatomy_names: Sequence[str]) -> list[tuple[str, str, int]]:
    """(view, title, slice index): an axial slice per present anatomy (its centre), one coronal."""
    out: list[tuple[str, str, int]] = []
    for k, name in enumerate(anatomy_names):
        found = np.argwhere(index_zyx == k + 1)
        if found.size:
            out.append(("axial", f"axial: {name}", int(np.median(found[:, 0]))))
    union = np.argwhere(index_zyx > 0)
    middle_y = int(np.median(union[:, 1])) if union.size else index_zyx.shape[1] // 2
    out.append(("coronal", "coronal", middle_y))
    return out


def write_prediction_png(
    payload: dict[str, Any],
    hu_zyx: np.ndarray,
    index_zyx: np.ndarray,
    anatomy_names: Sequence[str],
    out_path: str | Path,
) -> Path:
    """Write the one-page PNG for one prediction payload; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from core.io import atomic_path

    spacing = payload.get("model_grid", {}).get("spacing_zyx_mm") or [1.0, 1.0, 1.0]
    views = key_slices(index_zyx, anatomy_names)
    columns = len(views) + 1
    figure, axes = plt.subplots(1, columns, figsize=(3.2 * columns, 4.2), dpi=90, squeeze=False)
    colours = ListedColormap(["none", *[_COLOURS[k % len(_COLOURS)] for k in range(len(anatomy_names))]])
    low, high = _DISPLAY_WINDOW
    for axis, (view, title, position) in zip(axes[0], views, strict=False):
        if view == "axial":
            image, labels = hu_zyx[position], index_zyx[position]
            aspect = float(spacing[1]) / float(spacing[2])
            image, labels = image[::-1], labels[::-1]  # anterior up
        else:
            image, labels = hu_zyx[:, position, :], index_zyx[:, position, :]
            aspect = float(spacing[0]) / float(spacing[2])
            image, labels = image[::-1], labels[::-1]  # superior up
        axis.imshow(image, cmap="gray", vmin=low, vmax=high, aspect=aspect, interpolation="nearest")
        overlay = np.ma.masked_equal(labels.astype(np.int16), 0)
        axis.imshow(
            overlay, cmap=colours, vmin=0, vmax=len(anatomy_names), alpha=0.35, aspect=aspect, interpolation="nearest"
        )
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    text_axis = axes[0][-1]
    text_axis.axis("off")
    model = payload.get("model", {})
    version = f"{model.get('name')} v{model.get('version')}" if model.get("version") else str(model.get("ref"))
    if model.get("alias"):
        version += f" (@{model['alias']})"
    lines = [f"study {payload.get('input', {}).get('study_id') or '-'}", f"model {version}", ""]
    calls = [(label, payload["labels"][label]) for label in payload.get("positive_calls", [])]
    if not (model.get("thresholds") or {}).get("source"):
        lines.append("no stored thresholds: no calls")
    elif calls:
        lines.append("positive calls (p / threshold):")
        lines += [f"  {label}: {row['probability']:.2f} / {row['threshold']:.2f}" for label, row in calls]
    else:
        lines.append("no positive call")
    missing = payload.get("anatomies_not_assessable", [])
    if missing:
        lines += ["", "not assessable: " + ", ".join(missing)]
    text_axis.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace")
    handles = [Patch(color=_COLOURS[k % len(_COLOURS)], label=name) for k, name in enumerate(anatomy_names)]
    text_axis.legend(handles=handles, loc="lower left", fontsize=7, title="mask overlay", title_fontsize=7)
    figure.tight_layout()
    target = Path(out_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return target
