"""Decision thresholds through the MLflow registry: evaluate stores them on the version, predict reads them.

A real SQLite store and artifact root in pytest's tmp dir; a tiny model trained and registered by the
training loop, evaluated by ``run_evaluation`` (which promotes it to ``champion``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.training.predict_samples import predict, validate_prediction, write_study
from training.trainer.batch import InMemoryBatches
from training.trainer.job import TrainJob
from training.trainer.loop import train


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, anatomies, make_samples, tiny_config) -> dict[str, Any]:
    from training.evaluation.evaluate import run_evaluation
    from training.evaluation.job import EvaluateJob

    root = tmp_path_factory.mktemp("registry")
    # a 2-step model's AUC is a coin flip: no floor, so the gate promotes it as the first champion (this file
    # tests the thresholds' way through the registry; the floor has its own tests)
    no_bar = {"promote_floor": "none", "min_studies": 1, "min_label_positives": 1, "min_label_negatives": 1}
    config = tiny_config(root, tracking={"enabled": True}, evaluate={**no_bar, "min_scored_labels": 1})
    source = InMemoryBatches(make_samples(8, seed=2), batch_size=4)
    result = train(
        TrainJob.from_config(config, out=root / "run", steps=2), source, anatomies, corpus_texts=source.texts()
    )
    val, test = make_samples(8, seed=11), make_samples(8, seed=12)

    def batches(samples: list[dict]) -> Any:
        return lambda: InMemoryBatches(samples, 4, shuffle=False, drop_last=False).iter_epoch(0)

    report = run_evaluation(
        EvaluateJob.from_config(
            config, model=f"models:/{result.registered_model}/{result.model_version}", out=root / "eval"
        ),
        batches(val),
        batches(test),
        eval_data_hash="hash-eval",
    )
    return {"root": root, "config": config, "result": result, "report": report}


def test_evaluation_writes_the_thresholds_contract_and_tags_the_version(evaluated: dict[str, Any]) -> None:
    import mlflow

    from training.tracking.thresholds import read_thresholds

    config, result, report = evaluated["config"], evaluated["result"], evaluated["report"]
    table = json.loads((evaluated["root"] / "eval" / "thresholds.json").read_text())
    assert table["schema_version"] == 1
    assert table["model"] == {"name": result.registered_model, "version": result.model_version}
    # the synthetic labels: one per anatomy, two classes on val -> a threshold each; the rest single-class
    assert set(table["labels"]) == {"Lung nodule", "Cardiomegaly", "Hiatal hernia", "Arterial wall calcification"}
    nodule = table["labels"]["Lung nodule"]
    assert nodule["anatomy"] == "lung" and nodule["method"] == "youden"
    assert nodule["threshold"] == pytest.approx(report["labels"]["Lung nodule"]["decision_threshold"])
    assert 0.0 <= nodule["val_auc"] <= 1.0
    assert "Emphysema" in table["unthresholded"]
    uri = config.tracking.mlflow_tracking_uri
    tags = mlflow.MlflowClient(tracking_uri=uri).get_model_version(result.registered_model, result.model_version).tags
    assert float(tags["threshold.lung_nodule"]) == pytest.approx(nodule["threshold"])
    assert tags["thresholds.artifact"] == f"runs:/{report['run_id']}/thresholds.json"
    stored = read_thresholds(uri, result.registered_model, result.model_version, {"Lung nodule": "lung"})
    assert stored is not None and stored["labels"] == {"Lung nodule": nodule}
    logged = mlflow.artifacts.load_dict(tags["thresholds.artifact"])
    assert logged == table
    # the zero-shot negative rule (evaluate.negative_rule, default the plain fVLM pair) travels with them
    assert report["negative_rule"]["rule"] == table["negative_rule"] == tags["thresholds.negative_rule"] == "plain"
    assert read_thresholds(uri, result.registered_model, result.model_version)["negative_rule"] == "plain"
    spread = report["prompt_sets"]
    assert "fvlm" in spread["sets"] and len(spread["sets"]) >= 3
    assert spread["test_mean_auc_min"] <= spread["test_mean_auc_mean"] <= spread["test_mean_auc_max"]


def test_predict_scores_with_the_negative_rule_the_thresholds_were_chosen_with(
    evaluated: dict[str, Any], tmp_path: Path
) -> None:
    import numpy as np

    from training.inference.predict import resolve_model

    config, result = evaluated["config"], evaluated["result"]
    table = json.loads((evaluated["root"] / "eval" / "thresholds.json").read_text())
    chosen = tmp_path / "thresholds.json"
    chosen.write_text(json.dumps({**table, "negative_rule": "with_normal"}))
    ref, uri = f"models:/{result.registered_model}/{result.model_version}", config.tracking.mlflow_tracking_uri
    plain = resolve_model(uri, ref, tmp_path / "a")  # the version's tags: evaluated with the default
    anchored = resolve_model(uri, ref, tmp_path / "b", thresholds_path=chosen)
    assert plain.bundle.spec.negative_rule == "plain"
    assert anchored.bundle.spec.negative_rule == "with_normal"
    assert anchored.thresholds_info["negative_rule"] == "with_normal"
    assert not np.allclose(plain.bundle.prompt_emb[:, 0], anchored.bundle.prompt_emb[:, 0])
    np.testing.assert_allclose(plain.bundle.prompt_emb[:, 1], anchored.bundle.prompt_emb[:, 1], rtol=1e-5)


def test_store_thresholds_replaces_an_earlier_evaluation(evaluated: dict[str, Any]) -> None:
    from training.tracking.registry import register_model
    from training.tracking.thresholds import read_thresholds, store_thresholds

    config, result = evaluated["config"], evaluated["result"]
    uri, name = config.tracking.mlflow_tracking_uri, result.registered_model
    version = register_model(uri, result.model_uri, name)
    assert read_thresholds(uri, name, version) is None  # never evaluated
    first = {
        "schema_version": 1,
        "labels": {
            "Lung nodule": {"anatomy": "lung", "threshold": 0.4, "val_auc": 0.8, "method": "f1"},
            "Cardiomegaly": {"anatomy": "heart", "threshold": 0.6, "val_auc": None, "method": "f1"},
        },
    }
    store_thresholds(uri, name, version, first, eval_data_hash="hash-1")
    read = read_thresholds(uri, name, version)
    assert read is not None and read["eval_data_hash"] == "hash-1"
    assert read["labels"]["lung_nodule"] == {"anatomy": None, "threshold": 0.4, "val_auc": 0.8, "method": "f1"}
    assert read["labels"]["cardiomegaly"]["val_auc"] is None
    second = {"schema_version": 1, "labels": {"Lung nodule": first["labels"]["Lung nodule"]}}
    store_thresholds(uri, name, version, second)
    assert set(read_thresholds(uri, name, version)["labels"]) == {"lung_nodule"}


def test_predict_by_alias_resolves_the_version_and_calls_with_its_thresholds(
    evaluated: dict[str, Any], tmp_path: Path
) -> None:
    config, result = evaluated["config"], evaluated["result"]
    assert evaluated["report"]["promotion"]["promoted"]
    volume, mask = write_study(tmp_path / "study")
    payload = predict(
        config, f"models:/{result.registered_model}@champion", volume, mask_path=mask, work_dir=tmp_path / "w"
    )
    validate_prediction(payload)
    model = payload["model"]
    assert (model["name"], model["version"], model["alias"]) == (
        result.registered_model,
        result.model_version,
        "champion",
    )
    assert model["run_id"] == result.run_id
    assert model["thresholds"]["source"] == f"model version tags of {result.registered_model} v{result.model_version}"
    assert model["thresholds"]["method"] == "youden"
    table = json.loads((evaluated["root"] / "eval" / "thresholds.json").read_text())
    for label, entry in table["labels"].items():
        row = payload["labels"][label]
        assert row["threshold"] == pytest.approx(entry["threshold"], abs=1e-6)
        expected = "positive" if row["probability"] >= entry["threshold"] else "negative"
        assert row["call"] == expected and row["val_auc"] == pytest.approx(entry["val_auc"], abs=1e-6)
    assert payload["positive_calls"] == [label for label, row in payload["labels"].items() if row["call"] == "positive"]


def test_predict_on_a_version_without_thresholds_says_so(evaluated: dict[str, Any], tmp_path: Path) -> None:
    from training.tracking.registry import register_model

    config, result = evaluated["config"], evaluated["result"]
    older = register_model(config.tracking.mlflow_tracking_uri, result.model_uri, result.registered_model)
    volume, mask = write_study(tmp_path / "study")
    payload = predict(
        config, f"models:/{result.registered_model}/{older}", volume, mask_path=mask, work_dir=tmp_path / "w"
    )
    validate_prediction(payload)
    assert payload["model"]["version"] == older and payload["model"]["alias"] is None
    assert payload["model"]["thresholds"]["source"] is None
    assert "has no stored thresholds" in payload["model"]["thresholds"]["note"]
    assert all(row["call"] is None and row["threshold"] is None for row in payload["labels"].values())
    assert all(row["probability"] is not None for row in payload["labels"].values())
