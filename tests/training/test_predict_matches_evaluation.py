"""Predict scores a study the way `fvlm evaluate` did: same crops (the shard reader's eval transform),
so the thresholds chosen on the val split apply to comparable probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.inference.predict import predict_prepared
from training.models.zero_shot import load_zero_shot_model
from training.trainer.batch import InMemoryBatches
from training.trainer.job import TrainJob
from training.trainer.loop import train


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, anatomies, make_samples, tiny_config) -> Any:
    root = tmp_path_factory.mktemp("predict_eval")
    source = InMemoryBatches(make_samples(8, seed=4), batch_size=4)
    result = train(
        TrainJob.from_config(tiny_config(root), out=root / "run", steps=2),
        source,
        anatomies,
        corpus_texts=source.texts(),
    )
    return load_zero_shot_model(Path(result.model_dir))


def _study(shape: tuple[int, int, int], boxes: list[tuple[int, ...]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Model-grid HU (int16, as prepare_model_grid gives) and anatomy-index mask with one box per anatomy."""
    rng = np.random.default_rng(seed)
    hu = rng.normal(-100, 40, size=shape).astype(np.int16)
    mask = np.zeros(shape, np.uint8)
    for k, (z0, z1, y0, y1, x0, x1) in enumerate(boxes):
        mask[z0:z1, y0:y1, x0:x1] = k + 1
        hu[mask == k + 1] = (-850, 40, 0, 200)[k]
    return hu, mask


# larger than the (16, 32, 32) crop, with the aorta far from the other anatomies: one crop centred on the
# union of the anatomies misses it; evaluation (eval_mode anatomy) scores it from its own crop
FAR_AORTA = (
    (40, 40, 40),
    [(20, 38, 4, 20, 4, 36), (24, 34, 20, 34, 6, 18), (20, 38, 20, 26, 20, 24), (0, 6, 28, 36, 20, 28)],
)
SMALLER = (
    (12, 24, 24),
    [(1, 11, 1, 10, 1, 23), (3, 9, 12, 22, 3, 12), (1, 11, 12, 16, 14, 17), (1, 11, 18, 22, 16, 21)],
)


def _shard(tmp_path: Path, study_id: str, hu: np.ndarray, mask: np.ndarray, spec: Any) -> Path:
    """One real shard file holding the study, written with the shard schema `fvlm shard` uses."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from core.anatomy_sets import CTRATE_LABELS
    from preprocessing.shard_schema import build_metadata, encode_array, shard_schema

    k = len(spec.anatomy_names)
    metadata = build_metadata(
        anatomy_set=spec.anatomy_set,
        anatomy_names=spec.anatomy_names,
        label_names=CTRATE_LABELS,
        grid={"spacing_zyx_mm": [8.0, 4.0, 4.0]},
        zstd_level=3,
    )
    row = {
        "study_id": study_id,
        "patient_id": "pa_0",
        "split": "test",
        "volume": encode_array(hu, 3),
        "shape": list(hu.shape),
        "spacing_mm": [8.0, 4.0, 4.0],
        "affine": np.eye(4).reshape(16).tolist(),
        "mask": encode_array(mask, 3),
        "anatomy_text": [""] * k,
        "anatomy_abnormal": [False] * k,
        "labels": [-1] * len(CTRATE_LABELS),
        "report_text": "",
        "prep_version": "test",
        "source_hash": "x",
    }
    target = tmp_path / "shards" / "test" / "part-00000.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([row], schema=shard_schema(k, len(CTRATE_LABELS), metadata)), target)
    return target


@pytest.mark.parametrize("case", [FAR_AORTA, SMALLER], ids=["far_aorta", "smaller_than_crop"])
@pytest.mark.parametrize("eval_mode", ["anatomy", "center"])
def test_predict_probabilities_equal_evaluation_scores(bundle: Any, tmp_path: Path, case: Any, eval_mode: str) -> None:
    from torch.utils.data import DataLoader

    from training.evaluation.evaluate import score_model_on
    from training.trainer.batch import collate_batch
    from training.trainer.data import ShardDataset

    hu, mask = _study(*case)
    shard = _shard(tmp_path, "st_one", hu, mask, bundle.spec)
    hu_window = tuple(bundle.meta["hu_window"])
    dataset = ShardDataset([shard], crop_zyx=bundle.crop_zyx, hu_window=hu_window, mode="eval", eval_mode=eval_mode)
    evaluated = score_model_on(bundle.model, bundle.spec, DataLoader(dataset, batch_size=4, collate_fn=collate_batch))
    payload = predict_prepared(bundle, hu, mask, eval_mode=eval_mode)
    for s, label in enumerate(bundle.spec.labels):
        row = payload["labels"][label]
        if row["status"] == "assessed":
            assert row["probability"] == pytest.approx(float(evaluated.scores[0, s]), abs=2e-6), label
        else:  # evaluation scored it on the global embedding (fallback); predict gives no probability
            assert evaluated.used_global[0, s] and row["probability"] is None, label
    if eval_mode == "anatomy":
        assert payload["anatomies_not_assessable"] == []  # every anatomy is in the scan: each gets its crop
