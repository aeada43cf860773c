"""DVC metrics files hold numbers only; identifiers and reasons go to a ``<name>.info.json`` beside them.

``dvc exp show`` / ``dvc metrics diff`` compare every key of a metrics file, so a model URI, a run id or a
hash in ``metrics/eval.json`` becomes a column that differs on every run and crowds out ``mean_auc``
(issue #31). Each stage therefore writes two files:

- ``metrics/<name>.json`` -- a DVC ``metrics:`` file: numbers (int / float / null), nested dicts of numbers;
  a yes/no is written as 0 / 1 so ``dvc metrics diff`` can compare it;
- ``metrics/<name>.info.json`` -- a plain DVC out (``cache: false``, kept in git): run ids, model URIs and
  versions, hashes, reasons; what a later stage or a reader needs to *find* things, never compared.

Readers that want both call :func:`read_metrics_and_info`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

INFO_SUFFIX = ".info.json"


def info_path(metrics_path: Path) -> Path:
    """``metrics/eval.json`` -> ``metrics/eval.info.json``."""
    return metrics_path.with_name(metrics_path.stem + INFO_SUFFIX)


def numeric(value: Any, key: str = "") -> Any:
    """``value`` as metrics-file content: bool -> 0/1, non-finite float -> None, dicts recursively.

    A string or a list is a programming error here (it belongs in the info file): raise naming the key."""
    if isinstance(value, bool):
        return int(value)
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and not isinstance(value, (dict, list, tuple, str)):  # numpy scalar
        return numeric(value.item(), key)
    if isinstance(value, dict):
        return {str(k): numeric(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    raise TypeError(f"metrics key {key or '?'!r} holds {type(value).__name__} {value!r}: not a number")


def write_metrics(metrics_path: Path, numbers: dict[str, Any], info: dict[str, Any]) -> Path:
    """Write ``metrics_path`` (numbers only, sorted keys) and its ``.info.json``; return the info path."""
    from core.io import atomic_write_text

    atomic_write_text(metrics_path, json.dumps(numeric(numbers), indent=2, sort_keys=True) + "\n")
    info_file = info_path(metrics_path)
    atomic_write_text(info_file, json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return info_file


def read_metrics_and_info(metrics_path: Path) -> dict[str, Any]:
    """The metrics file merged with its info file (info keys win on a clash); {} when neither exists."""
    merged: dict[str, Any] = {}
    for path in (metrics_path, info_path(metrics_path)):
        if path.is_file():
            merged.update(json.loads(path.read_text()))
    return merged
