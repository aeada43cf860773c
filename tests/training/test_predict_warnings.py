"""Predict says when no call is possible and what weakens a prediction (evidence, global scoring, stand-in masks)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from core import layout
from fvlm.commands.predict import summary_lines
from training.inference.predict import ResolvedModel, prediction_warnings


def _payload(thresholds_source: str | None, calls: dict[str, str | None]) -> dict[str, Any]:
    labels = {
        label: {"anatomy": "lung", "status": "assessed", "probability": 0.7, "threshold": None, "call": call}
        for label, call in calls.items()
    }
    return {
        "model": {
            "ref": "m",
            "name": "fvlm-ct",
            "version": "1",
            "alias": None,
            "thresholds": {"source": thresholds_source, "note": "no thresholds stored"},
        },
        "input": {"mask_source": "segmented"},
        "labels": labels,
        "positive_calls": [label for label, call in calls.items() if call == "positive"],
        "no_call_labels": [label for label, call in calls.items() if call is None],
        "anatomies_not_assessable": [],
        "warnings": ["stand-in random weights: labels are noise"],
    }


def test_no_threshold_anywhere_says_no_call_possible_not_positive_none() -> None:
    lines = summary_lines(_payload("registry", {"Emphysema": None, "Lung nodule": None}))
    assert any(line.startswith("no call possible for any label") for line in lines)
    assert not any(line.startswith("positive:") for line in lines)
    assert "warning: stand-in random weights: labels are noise" in lines


def test_some_labels_without_threshold_are_named() -> None:
    lines = summary_lines(_payload("registry", {"Emphysema": "negative", "Lung nodule": None}))
    assert "positive: none" in lines
    assert any(line.startswith("no call possible for 1 of 2 labels") and "Lung nodule" in line for line in lines)


def test_prediction_warnings(tmp_path: Path) -> None:
    spec = SimpleNamespace(use_global=True)
    bundle = SimpleNamespace(spec=spec)
    segmented = tmp_path / "segmented"
    segmented.mkdir()
    pq.write_table(
        pa.table({"model_id": ["total/STANDIN-random-weights", "total/STANDIN-random-weights"]}),
        layout.segments_manifest(segmented),
    )
    job = SimpleNamespace(segment=SimpleNamespace(output_dir=segmented))
    old = ResolvedModel(bundle, "models:/fvlm-ct/1", name="fvlm-ct", version="1")  # type: ignore[arg-type]
    warnings = prediction_warnings(old, bundle, "segmented", job)  # type: ignore[arg-type]
    assert any("evaluated before the evidence check" in w for w in warnings)
    assert any("global (whole-volume) embedding" in w for w in warnings)
    assert any("STANDIN" in w and "labels are noise" in w for w in warnings)
    weak = ResolvedModel(bundle, "models:/fvlm-ct/2", name="fvlm-ct", version="2", evidence="2 val / 2 test studies")  # type: ignore[arg-type]
    assert any("too little evidence: 2 val / 2 test studies" in w for w in prediction_warnings(weak, bundle, "x", job))  # type: ignore[arg-type]
    spec.use_global = False
    sound = ResolvedModel(bundle, "models:/fvlm-ct/3", name="fvlm-ct", version="3", evidence="ok")  # type: ignore[arg-type]
    assert prediction_warnings(sound, bundle, "precomputed", job) == []  # type: ignore[arg-type]
