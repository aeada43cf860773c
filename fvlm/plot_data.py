"""Small CSV files for ``dvc plots`` (dvc.yaml ``plots:``), written by the train / evaluate commands.

``<metrics>/plots/train_loss.csv`` (step, loss) from the training result's per-step losses and
``<metrics>/plots/auc_per_label.csv`` (label, auc) from the evaluation report; ``train_loss.png`` (the
same curve as a picture, matplotlib imported inside its function).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PLOTS_DIR = "plots"


def plots_dir(metrics_path: str | Path) -> Path:
    """``metrics/plots`` beside a stage's metrics JSON (``metrics/train.json`` -> ``metrics/plots``)."""
    return Path(metrics_path).parent / PLOTS_DIR


def _write_csv(target: Path, header: list[str], rows: Iterable[list[Any]]) -> Path:
    from core.io import atomic_write_text

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, buffer.getvalue())
    return target


def write_loss_curve(metrics_path: str | Path, losses: Iterable[float], first_step: int = 1) -> Path:
    rows = [[first_step + i, f"{float(loss):.6g}"] for i, loss in enumerate(losses)]
    return _write_csv(plots_dir(metrics_path) / "train_loss.csv", ["step", "loss"], rows)


def write_loss_curve_png(metrics_path: str | Path, losses: Sequence[float], first_step: int = 1) -> Path:
    """``<metrics>/plots/train_loss.png``: the per-step loss and its 10-step running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from core.io import atomic_write_bytes

    values = np.asarray(list(losses), dtype=float)
    steps = np.arange(first_step, first_step + len(values))
    figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
    axes.plot(steps, values, color="0.7", linewidth=0.8, label="loss per step")
    if len(values) >= 10:
        running = np.convolve(values, np.ones(10) / 10, mode="valid")
        axes.plot(steps[9:], running, color="C0", linewidth=1.8, label="10-step mean")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title("training loss")
    axes.legend(loc="upper right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    target = plots_dir(metrics_path) / "train_loss.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def _per_label_auc(report: Mapping[str, Any]) -> list[tuple[str, float]]:
    per_label = report.get("per_label") or report.get("labels") or {}
    out: list[tuple[str, float]] = []
    if isinstance(per_label, Mapping):
        for label, values in per_label.items():
            if not isinstance(values, Mapping):
                continue
            auc = values.get("auc")
            if auc is None and isinstance(values.get("val_threshold"), Mapping):
                auc = values["val_threshold"].get("auc")  # training.evaluate: AUC sits with each protocol
            if isinstance(auc, (int, float)):
                out.append((str(label), float(auc)))
    elif isinstance(per_label, list):
        for values in per_label:
            if isinstance(values, Mapping) and isinstance(values.get("auc"), (int, float)):
                out.append((str(values.get("label", "?")), float(values["auc"])))
    return out


def write_auc_per_label(metrics_path: str | Path, report: Mapping[str, Any]) -> Path:
    rows = [[label, f"{auc:.6g}"] for label, auc in _per_label_auc(report)]
    return _write_csv(plots_dir(metrics_path) / "auc_per_label.csv", ["label", "auc"], rows)
