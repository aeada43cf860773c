"""End to end: `fvlm demo` (dvc repro + dvc push) on a tiny synthetic cohort in a copy of this repo.

The real components run: the generator writes DICOM, convert reads it with pydicom, segment uses the
precomputed backend, spaCy parses the reports, shards are written with pyarrow, torch trains for a few
steps, MLflow (SQLite) registers the model and evaluation runs the promotion gate (floor, then champion). A second
`dvc repro` must do no work.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml


def _tiny_params(params_path: Path) -> None:
    params = yaml.safe_load(params_path.read_text())
    params["demo_data"]["studies"] = 8
    params["train"].update(steps=3, batch_size=4, checkpoint_every=3)
    params["split"] = {"train": 0.7, "val": 0.15, "test": 0.15, "seed": 0}  # 8 studies: a batch of 4 to train on
    params["evaluate"]["bootstrap"] = 10
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def demo_repo(tmp_path_factory: pytest.TempPathFactory, copy_repo: Callable[[Path], Path]) -> Path:
    work = copy_repo(tmp_path_factory.mktemp("e2e") / "repo")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    _tiny_params(work / "params.yaml")
    return work


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("FVLM_PARAMS", None)
    env.pop("FVLM_NO_FLOWS", None)  # the stage commands run as Prefect flows here
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_HOME", None)  # as a user runs it: the Prefect database under .fvlm-services/prefect
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)


def test_demo_pipeline_end_to_end_then_noop(demo_repo: Path) -> None:
    first = _run([sys.executable, "-m", "fvlm.cli", "demo"], demo_repo)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]

    # shards are plain Parquet with the DESIGN.md schema; no patient in two splits
    patients_by_split: dict[str, set[str]] = {}
    for split in ("train", "val", "test"):
        for part in sorted((demo_repo / "data" / "shards" / split).glob("part-*.parquet")):
            table = pq.read_table(part)
            for column in ("study_id", "patient_id", "volume", "mask", "anatomy_text", "labels", "spacing_mm"):
                assert column in table.column_names
            patients_by_split.setdefault(split, set()).update(table.column("patient_id").to_pylist())
    assert sum(len(p) for p in patients_by_split.values()) > 0
    splits = list(patients_by_split.values())
    for i, a in enumerate(splits):
        for b in splits[i + 1 :]:
            assert not a & b

    # metrics for DVC, with the MLflow run id recorded
    # (identifiers and reasons beside the numbers, in <name>.info.json: core/metrics_files.py)
    from core.metrics_files import read_metrics_and_info

    train_metrics = read_metrics_and_info(demo_repo / "metrics" / "train.json")
    assert train_metrics.get("run_id")
    eval_metrics = read_metrics_and_info(demo_repo / "metrics" / "eval.json")
    assert 0.0 <= eval_metrics["mean_auc"] <= 1.0
    assert "run_id" not in json.loads((demo_repo / "metrics" / "eval.json").read_text())

    # the trained model is registered; the champion alias goes to it only if it has the evidence and clears
    # the gate's floor (evaluate.promote_floor: ci_low, the lower end of the val mean-AUC CI above 0.5): the
    # first model of a fresh registry is promoted exactly when it clears it, and the metrics file says why
    import math

    import mlflow
    from mlflow.exceptions import MlflowException

    # the store `fvlm services up` serves (one set of stores), and no second one beside it
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{demo_repo / '.fvlm-services' / 'mlflow' / 'mlflow.db'}")
    assert not (demo_repo / "mlflow.db").exists() and not (demo_repo / "mlruns").exists()
    assert client.get_experiment_by_name("fvlm") is not None
    version = client.get_model_version("fvlm-ct", str(train_metrics["model_version"]))
    assert version.tags["promoted"] == str(bool(eval_metrics["promoted"])).lower()
    assert version.tags["promotion_reason"] == eval_metrics["promotion_reason"]
    ci_low = eval_metrics.get("val_mean_auc_ci_low")  # the gate reads validation, never test
    clears_floor = (
        bool(eval_metrics["evidence_enough"]) and ci_low is not None and math.isfinite(ci_low) and ci_low > 0.5
    )
    assert bool(eval_metrics["promoted"]) is clears_floor, eval_metrics["promotion_reason"]
    if clears_floor:
        assert client.get_model_version_by_alias("fvlm-ct", "champion").version == version.version
    else:
        with pytest.raises(MlflowException):
            client.get_model_version_by_alias("fvlm-ct", "champion")

    # every stage command ran its flow on the demo's one Prefect server, whose database is the one
    # `fvlm services up` serves: the UI shows the runs; no stage fell back to the library
    import sqlite3

    with sqlite3.connect(demo_repo / ".fvlm-services" / "prefect" / "prefect.db") as db:
        completed = dict(
            db.execute(
                "SELECT flow.name, COUNT(*) FROM flow_run JOIN flow ON flow_run.flow_id = flow.id "
                "WHERE flow_run.state_type = 'COMPLETED' GROUP BY flow.name"
            ).fetchall()
        )
    assert {name: completed.get(name, 0) for name in ("fvlm-convert", "fvlm-segment", "fvlm-parse-reports")} == {
        "fvlm-convert": 1,
        "fvlm-segment": 1,
        "fvlm-parse-reports": 1,
    }, completed
    assert completed.get("fvlm-shard") == 1, completed
    assert "Starting temporary server" not in first.stderr + first.stdout  # the stages used the demo's server
    assert not (demo_repo / ".fvlm-services" / "logs" / "stage-runs.jsonl").exists()

    # no planted PHI anywhere in the stage outputs
    planted = json.loads((demo_repo / "data" / "demo" / "phi_planted.json").read_text())
    needles = {value for value in planted["all_search_values"] if len(value) >= 6}
    assert needles
    for folder in ("converted", "segmented", "reports", "shards"):
        for path in (demo_repo / "data" / folder).rglob("*"):
            if not path.is_file() or path.suffix == ".gz":  # gz volumes: pixels only; headers checked in convert tests
                continue
            # parquet pages are compressed: search the decoded text columns as well as the raw bytes
            texts = [path.read_bytes().decode("latin-1")]
            if path.suffix == ".parquet":
                table = pq.read_table(path)
                for name in table.column_names:
                    if not pa.types.is_binary(table.schema.field(name).type) and not pa.types.is_large_binary(
                        table.schema.field(name).type
                    ):
                        texts.append(json.dumps(table.column(name).to_pylist(), default=str))
            for needle in needles:
                assert not any(needle in text for text in texts), f"planted PHI found in {path}"

    # the raw dataset is `dvc add`-ed data, not a stage output
    assert (demo_repo / "data" / "demo.dvc").is_file()
    assert "data/demo" not in (demo_repo / "dvc.lock").read_text().split("outs:")[-1]

    # nothing changed -> dvc repro does no work
    second = _run([sys.executable, "-m", "dvc", "repro"], demo_repo)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "Running stage" not in second.stdout, second.stdout
