"""End to end as a hospital user: a DICOM tree and reports table outside the repository, params pointing
at them, `dvc repro` to evaluation; the nightly ingest with colliding folder names; experiments and plots.

1. A generated cohort (``fvlm demo-data``) stands for the hospital export, outside the repo copy;
   params.yaml's ``paths`` point at it (the README's "Your own data" steps); ``dvc repro`` runs every
   stage, each command logging the config keys it reads ($FVLM_CONFIG_ACCESS_LOG): every key read must be
   declared by its dvc.yaml stage.
2. Two new studies whose folder names collide with existing ones (+ their reports CSV and masks) are
   dropped in the watch folder; ``ingest_flow`` adds exactly 2 new studies, convert + shard take exactly
   those, every incoming file's sha256 is in the DVC cache, and the watch folder is empty.
3. ``dvc exp run -S train.steps=N`` trains N steps; ``dvc exp show`` has the baseline's metrics;
   ``dvc plots show`` writes the loss curve, the per-label AUC and the ROC images.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from core.config import ACCESS_LOG_ENV

pytestmark = pytest.mark.slow


def _env(repo: Path, access_log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(repo), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    for name in ("FVLM_PARAMS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(name, None)
    env["FVLM_NO_FLOWS"] = "1"  # stage commands without Prefect (the ingest flow itself runs as a flow)
    env[ACCESS_LOG_ENV] = str(access_log)
    env["PREFECT_HOME"] = str(repo / ".fvlm-services" / "prefect")
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 1500) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout + done.stderr


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _ok_studies(repo: Path) -> set[str]:
    table = pq.read_table(repo / "data" / "converted" / "studies.parquet").to_pylist()
    return {row["study_id"] for row in table if row.get("status", "ok") == "ok"}


def test_own_data_repro_ingest_experiments_plots(
    tmp_path: Path, copy_repo: Callable[[Path], Path], undeclared_reads: Callable[..., dict[str, set[str]]]
) -> None:
    repo = copy_repo(tmp_path / "repo")
    access_log = tmp_path / "access.log"
    env = _env(repo, access_log)
    fvlm = [sys.executable, "-m", "fvlm.cli"]
    dvc = [sys.executable, "-m", "dvc"]

    # the hospital's export, outside the repository
    hospital = tmp_path / "hospital"
    _run([*fvlm, "demo-data", str(hospital), "--studies", "8", "--seed", "0"], repo, env)
    params_path = repo / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["paths"].update(
        raw_dataset=str(hospital),
        raw_dicom=str(hospital / "dicom"),
        reports_csv=str(hospital / "reports.csv"),
        precomputed_masks=str(hospital / "masks"),
    )
    params["train"].update(steps=3, batch_size=4, checkpoint_every=3)
    params["evaluate"]["bootstrap"] = 10
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _run([*dvc, "repro"], repo, env)
    assert (repo / "metrics" / "eval.json").is_file()
    missing = undeclared_reads(access_log.read_text(), yaml.safe_load((repo / "dvc.yaml").read_text()))
    assert missing == {}, f"stages read config keys their dvc.yaml stage does not declare: {missing}"
    before = _ok_studies(repo)
    shards_before = json.loads((repo / "metrics" / "shard.json").read_text())["studies"]
    hospital_before = {p: _sha(p) for p in _files(hospital)}

    # two new studies whose folders are named like two known ones
    new = tmp_path / "new"
    _run([*fvlm, "demo-data", str(new), "--studies", "2", "--seed", "77"], repo, env)
    watch = repo / "data" / "incoming"
    for study in sorted((new / "dicom").iterdir()):
        assert (hospital / "dicom" / study.name).exists()  # the collision this test is about
        shutil.copytree(study, watch / study.name)
    shutil.copy(new / "reports.csv", watch / "new_reports.csv")
    shutil.copytree(new / "masks", watch / "masks")
    incoming = {p: _sha(p) for p in _files(watch)}
    script = (
        "import json; from flows.deployments import ingest_flow; "
        "print('INGEST=' + json.dumps(ingest_flow(settle_s=0, push=False)['ingest']))"
    )
    out = _run([sys.executable, "-c", script], repo, env)
    result = json.loads(out.split("INGEST=", 1)[1].splitlines()[0])
    assert result["studies_moved"] == 2 and result["files_added_to_existing"] == 0, result
    assert not result["rejected"], result
    # nothing of the hospital tree was overwritten or removed
    assert all(
        path.is_file() and _sha(path) == digest
        for path, digest in hospital_before.items()
        if "reports.csv" not in path.name
    )
    # every incoming file is in the DVC cache; the watch folder holds nothing else
    cache = {_sha(p) for p in _files(repo / ".dvc" / "cache" / "files") if not p.name.endswith(".dir")}
    assert all(digest in cache for digest in incoming.values()), "an ingested file is not in the DVC cache"
    assert not _files(watch)
    after = _ok_studies(repo)
    assert len(after - before) == 2 and before <= after
    assert json.loads((repo / "metrics" / "shard.json").read_text())["studies"] == shards_before + 2

    # experiments: -S reaches the stage; the baseline's metrics are there to compare
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(
        ["git", "-c", "user.email=e2e@test", "-c", "user.name=e2e", "commit", "-qm", "baseline"], cwd=repo, check=True
    )
    # a key of every stage: changing it makes exactly that stage (and what follows) stale for DVC
    probes = {
        "convert": ("convert", "strict", True),
        "segment": ("segment", "mode", "full"),
        "parse_reports": ("reports", "max_chars", 19999),
        "shard": ("shard", "zstd_level", 4),
        "train": ("train", "lr", 1e-3),
        "evaluate": ("evaluate", "bootstrap", 11),
    }
    committed = params_path.read_text()
    for stage, (section, key, value) in probes.items():
        changed = yaml.safe_load(committed)
        changed[section][key] = value
        params_path.write_text(yaml.safe_dump(changed, sort_keys=False))
        out = _run([*dvc, "status", "--json", stage], repo, env)
        status = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
        # {"convert": [{"changed deps": {"params.yaml": {"convert": "modified"}}}]}
        changed_params = [
            entry.get("changed deps", {}).get("params.yaml", {})
            for entry in status.get(stage, [])
            if isinstance(entry, dict)
        ]
        assert any(section in names or f"{section}.{key}" in names for names in changed_params), (stage, status)
    params_path.write_text(committed)
    _run([*dvc, "exp", "run", "-S", "train.steps=2"], repo, env)
    assert json.loads((repo / "metrics" / "train.json").read_text())["steps"] == 2
    shown = _run([*dvc, "exp", "show", "--csv"], repo, env)
    baseline_rows = [line for line in shown.splitlines() if ",baseline," in line]
    assert baseline_rows and all(",!," not in f",{row}," for row in baseline_rows), shown[-2000:]
    header = shown.splitlines()[0].split(",")
    assert "mean_auc" in header and "final_loss" in header and "n_test" in header
    assert "mean_auc_ci_low" in header and "mean_auc_ci_high" in header
    # metrics files hold numbers only (core/metrics_files.py): no identifier or reason becomes a column
    assert not {"run_id", "model_uri", "model", "content_hash", "eval_data_hash", "promotion_reason"} & set(header)

    plots = tmp_path / "plots"
    _run([*dvc, "plots", "show", "-o", str(plots)], repo, env)
    page = (plots / "index.html").read_text()
    assert "train_loss" in page and "auc_per_label" in page and "roc_all" in page
