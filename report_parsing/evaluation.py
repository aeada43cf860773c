"""Label evaluation: per-label precision / recall / F1 with macro and support-weighted averages
(the ``sklearn.metrics.classification_report`` averages used by CT-CLIP's text_classifier/eval.py),
plus the fixed tune / held-out split of the CT-CLIP labelled reports used for honest figures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

TUNE_SIZE = 600
SPLIT_SEED = 0


def tune_holdout_indices(
    n_rows: int, tune_size: int = TUNE_SIZE, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """A fixed random split of row positions: (tune, held-out), each sorted."""
    order = np.random.RandomState(seed).permutation(n_rows)
    return np.sort(order[:tune_size]), np.sort(order[tune_size:])


def label_report(gold: np.ndarray, predicted: np.ndarray, label_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """classification_report(output_dict=True) for multilabel 0/1 matrices (rows x labels)."""
    from sklearn.metrics import classification_report

    return classification_report(
        np.asarray(gold, dtype=int),
        np.asarray(predicted, dtype=int),
        target_names=list(label_names),
        output_dict=True,
        zero_division=0,
    )


def format_label_report(report: dict[str, dict[str, float]], label_names: Sequence[str]) -> str:
    width = max(len(name) for name in [*label_names, "weighted avg"])
    lines = [f"{'':<{width}}  precision  recall  f1-score  support"]
    for name in [*label_names, "", "micro avg", "macro avg", "weighted avg"]:
        if not name:
            lines.append("")
            continue
        row = report[name]
        lines.append(
            f"{name:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f} "
            f" {row['f1-score']:8.3f}  {int(row['support']):7d}"
        )
    return "\n".join(lines)
