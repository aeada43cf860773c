"""Tiny synthetic cohort + tiny config shared by the training / evaluation / prediction / tracking tests.

A plain helper module: tests get these through the fixtures in tests/training/conftest.py
(`anatomies`, `crop_zyx`, `make_samples`, `tiny_config`); only code in a child process (DDP workers)
imports it directly.

Each sample: a (16, 32, 32) crop of noise with the four ctrate4 anatomies as boxes (mask k+1); an
abnormal anatomy carries a bright block and the text names its finding, a normal one a normal sentence.
Labels follow the abnormal flags (one label per anatomy), so zero-shot scores can be checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.config import FvlmConfig, config_from_dict

CROP_ZYX = (16, 32, 32)
ANATOMIES = ("lung", "heart", "esophagus", "aorta")
# box (z0, z1, y0, y1, x0, x1) per anatomy, on the 16x32x32 crop
BOXES = {
    "lung": (2, 14, 2, 14, 2, 30),
    "heart": (4, 12, 16, 28, 4, 16),
    "esophagus": (2, 14, 16, 22, 18, 22),
    "aorta": (2, 14, 24, 30, 20, 28),
}
FINDING_LABEL = {
    "lung": "Lung nodule",
    "heart": "Cardiomegaly",
    "esophagus": "Hiatal hernia",
    "aorta": "Arterial wall calcification",
}
NORMAL_TEXT = {
    "lung": "Both lungs are clear.",
    "heart": "Heart size is normal.",
    "esophagus": "The esophagus is unremarkable.",
    "aorta": "The aorta is of normal calibre.",
}
ABNORMAL_TEXT = {
    "lung": "Lung nodule in the right lung.",
    "heart": "Cardiomegaly is present.",
    "esophagus": "Hiatal hernia is seen.",
    "aorta": "Arterial wall calcification of the aorta.",
}


def make_sample(index: int, rng: np.random.Generator, abnormal: np.ndarray | None = None) -> dict[str, Any]:
    from core.anatomy_sets import CTRATE_LABELS

    if abnormal is None:
        abnormal = rng.random(len(ANATOMIES)) < 0.5
    volume = rng.normal(0.3, 0.05, size=CROP_ZYX).astype(np.float32)
    mask = np.zeros(CROP_ZYX, dtype=np.uint8)
    texts = []
    for k, name in enumerate(ANATOMIES):
        z0, z1, y0, y1, x0, x1 = BOXES[name]
        mask[z0:z1, y0:y1, x0:x1] = k + 1
        if abnormal[k]:
            volume[z0:z1, y0:y1, x0:x1] += 0.5
            texts.append(ABNORMAL_TEXT[name])
        else:
            texts.append(NORMAL_TEXT[name])
    labels = np.zeros(len(CTRATE_LABELS), dtype=np.int8)
    for k, name in enumerate(ANATOMIES):
        labels[CTRATE_LABELS.index(FINDING_LABEL[name])] = int(abnormal[k])
    labels[CTRATE_LABELS.index("Lymphadenopathy")] = -1
    return {
        "volume": np.clip(volume, 0, 1)[None],
        "mask": mask,
        "anatomy_intact": np.ones(len(ANATOMIES), dtype=bool),
        "anatomy_abnormal": abnormal.astype(bool),
        "anatomy_text": texts,
        "labels": labels,
        "report_text": " ".join(texts),
        "study_id": f"study{index:04d}",
    }


def make_samples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    return [make_sample(i, rng) for i in range(n)]


def tiny_config(tmp_path: Path, **overrides: Any) -> FvlmConfig:
    """Tiny model (embed 32, depth 1, crop 16x32x32) on CPU; MLflow in tmp (off unless overridden)."""
    raw: dict[str, Any] = {
        "profile": "demo",
        "grid": {"crop_zyx": list(CROP_ZYX), "spacing_zyx_mm": [8.0, 4.0, 4.0]},
        "model": {
            "vision": {"patch_zyx": [8, 16, 16], "embed_dim": 32, "depth": 1, "heads": 2, "pool_layers": [1]},
            "text": {"name_or_path": None, "vocab_size": 200, "hidden": 32, "layers": 1, "heads": 2, "max_length": 24},
            "embed_dim": 32,
        },
        "train": {
            "batch_size": 4,
            "steps": 6,
            "lr": 2e-3,
            "warmup_steps": 1,
            "amp": False,
            "gpus": 0,
            "checkpoint_every": 3,
            "num_workers": 0,
            "seed": 0,
            "weight_decay": 0.0,
        },
        "evaluate": {"bootstrap": 20, "batch_size": 4},
        "tracking": {
            "enabled": False,
            "mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "artifact_location": str(tmp_path / "mlartifacts"),
            "experiment": "fvlm-test",
            "registered_model": "fvlm-test-model",
        },
        "paths": {"metrics": str(tmp_path / "metrics")},
    }

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> None:
        for key, value in extra.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(raw, overrides)
    return config_from_dict(raw, root=tmp_path, environ={})


SHARD_HU_WINDOW = (-1150.0, 350.0)


def write_shard_split(root: Path, split: str, samples: list[dict[str, Any]], anatomies: tuple[str, ...]) -> None:
    """``root/<split>/part-00000.parquet``: the samples as real shard rows (shard schema, ctrate4, 18 labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.anatomy_sets import CTRATE_LABELS
    from preprocessing.shard_schema import build_metadata, encode_array, shard_schema

    rows = []
    for sample in samples:
        hu = np.round(SHARD_HU_WINDOW[0] + sample["volume"][0] * (SHARD_HU_WINDOW[1] - SHARD_HU_WINDOW[0])).astype(
            np.int16
        )
        rows.append(
            {
                "study_id": sample["study_id"] + split,
                "patient_id": "pa_" + sample["study_id"] + split,
                "split": split,
                "volume": encode_array(hu, 3),
                "shape": list(hu.shape),
                "spacing_mm": [8.0, 4.0, 4.0],
                "affine": np.eye(4).reshape(16).tolist(),
                "mask": encode_array(sample["mask"], 3),
                "anatomy_text": sample["anatomy_text"],
                "anatomy_abnormal": [bool(v) for v in sample["anatomy_abnormal"]],
                "labels": [int(v) for v in sample["labels"]],
                "report_text": sample["report_text"],
                "prep_version": "test",
                "source_hash": "x",
            }
        )
    metadata = build_metadata(
        anatomy_set="ctrate4",
        anatomy_names=anatomies,
        label_names=CTRATE_LABELS,
        grid={"spacing_zyx_mm": [8.0, 4.0, 4.0]},
        zstd_level=3,
    )
    schema = shard_schema(len(anatomies), len(CTRATE_LABELS), metadata)
    path = root / split / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=2)
