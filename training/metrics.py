"""Binary classification metrics (numpy only, vectorised for the bootstrap): zero-shot evaluation and the probe.

Conventions: ``y_true`` holds 0/1 (unknown labels are removed by the caller), ``score`` a probability
of the positive class; a prediction is positive when ``score >= threshold``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN with a single class."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    ranks = np.empty(s.size, dtype=np.float64)
    # mid-ranks for ties
    _, first_index, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    mid = first_index + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(mid, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with thresholds descending, starting at +inf (sklearn's convention)."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    distinct = np.r_[np.where(np.diff(s_sorted))[0], y_sorted.size - 1]
    tps = np.cumsum(y_sorted)[distinct]
    fps = (distinct + 1) - tps
    n_pos, n_neg = max(int(y.sum()), 1), max(int((~y).sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[distinct]]
    return fpr, tpr, thresholds


def youden_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (first maximum, highest threshold)."""
    fpr, tpr, thresholds = roc_curve(y_true, score)
    best = int(np.argmax(tpr - fpr))
    threshold = thresholds[best]
    return float(threshold) if np.isfinite(threshold) else float(np.max(score)) + 1e-12


def best_f1_threshold(y_true: np.ndarray, score: np.ndarray) -> float:
    """Threshold maximising the binary F1 of the positive class over the observed scores."""
    y = np.asarray(y_true).astype(bool)
    candidates = np.unique(np.asarray(score, dtype=np.float64))
    predicted = np.asarray(score)[None, :] >= candidates[:, None]
    tp = (predicted & y).sum(axis=1)
    fp = (predicted & ~y).sum(axis=1)
    fn = (~predicted & y).sum(axis=1)
    f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    return float(candidates[int(np.argmax(f1))])


def choose_threshold(y_true: np.ndarray, score: np.ndarray, method: Literal["youden", "f1"]) -> float:
    if method == "youden":
        return youden_threshold(y_true, score)
    if method == "f1":
        return best_f1_threshold(y_true, score)
    raise ValueError(f"unknown threshold method {method!r} (youden | f1)")


@dataclass(frozen=True)
class BinaryMetrics:
    auc: float
    accuracy: float
    sensitivity: float  # recall of the positive class
    specificity: float
    precision: float
    f1: float  # binary F1 of the positive class
    f1_weighted: float  # F1 of both classes weighted by support (sklearn average="weighted", fVLM's)
    threshold: float
    n: int
    n_positive: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _safe_div(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> BinaryMetrics:
    y = np.asarray(y_true).astype(bool)
    predicted = np.asarray(score) >= threshold
    tp = int((predicted & y).sum())
    tn = int((~predicted & ~y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    n_pos, n_neg = tp + fn, tn + fp
    precision = _safe_div(tp, tp + fp)
    sensitivity = _safe_div(tp, n_pos)
    f1_pos = _safe_div(2 * tp, 2 * tp + fp + fn)
    f1_neg = _safe_div(2 * tn, 2 * tn + fn + fp)
    total = n_pos + n_neg
    return BinaryMetrics(
        auc=roc_auc(y, score),
        accuracy=_safe_div(tp + tn, total),
        sensitivity=sensitivity,
        specificity=_safe_div(tn, n_neg),
        precision=precision,
        f1=f1_pos,
        f1_weighted=_safe_div(f1_pos * n_pos + f1_neg * n_neg, total),
        threshold=float(threshold),
        n=total,
        n_positive=n_pos,
    )


def bootstrap_auc(
    y_true: np.ndarray,
    scores: np.ndarray,
    n_resamples: int,
    *,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CIs of per-label AUC and of the mean AUC over labels, resampling studies.

    ``y_true`` (N, L) with -1 = unknown (ignored per label), ``scores`` (N, L). Resamples where a label
    has a single class give NaN for that label and are left out of its interval. Returns
    ``{"label_<j>": (low, high), ..., "mean": (low, high)}``; NaN bounds when no resample was usable.
    """
    y = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n_studies, n_labels = y.shape
    per_label = np.full((n_resamples, n_labels), np.nan)
    for b in range(n_resamples):
        index = rng.integers(0, n_studies, size=n_studies)
        for j in range(n_labels):
            known = y[index, j] >= 0
            per_label[b, j] = roc_auc(y[index, j][known], s[index, j][known])
    alpha = (1.0 - level) / 2.0
    result: dict[str, tuple[float, float]] = {}

    def interval(values: np.ndarray) -> tuple[float, float]:
        values = values[np.isfinite(values)]
        if values.size == 0:
            return (float("nan"), float("nan"))
        return (float(np.quantile(values, alpha)), float(np.quantile(values, 1.0 - alpha)))

    for j in range(n_labels):
        result[f"label_{j}"] = interval(per_label[:, j])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resample rows -> NaN mean
        mean_auc = np.nanmean(per_label, axis=1) if n_labels else np.array([])
    result["mean"] = interval(np.asarray(mean_auc))
    return result
