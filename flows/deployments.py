"""Scheduled deployments: nightly ingest, weekly train + evaluate + promote.

* :func:`ingest_flow` -- settled study folders (and report CSVs) in the watch folder are added to the raw
  dataset by DICOM identity (the library :func:`preprocessing.ingest.collect_incoming`: StudyInstanceUID /
  SeriesInstanceUID / SOPInstanceUID, never the folder name), copied with a sha256 check, recorded (``dvc add``
  of the dataset, :func:`dvc_recorder`), found in the DVC cache, and only then removed from the watch folder;
  then ``dvc repro shard`` runs convert, segment, parse-reports and shard for exactly what changed, and
  ``dvc push`` stores it;
* :func:`train_evaluate_flow` -- ``dvc repro evaluate`` (train when shards changed, or always with
  ``retrain=True``; the evaluate stage holds the promotion gate), ``dvc push``, report.

Both are thin wrappers around :func:`flows.pipeline.pipeline_flow`, so the schedule, the CLI and DVC run
one DAG. Two ways to run them on a schedule (both need a Prefect server, ``fvlm services up``):

* ``fvlm deploy`` -- ``prefect.serve`` in a long-running process (this module's
  :func:`build_deployments`);
* ``prefect deploy --all`` with the repository's ``prefect.yaml`` -- deployments on the ``fvlm-process``
  work pool, executed by ``prefect worker start --pool fvlm-process`` (``fvlm services up --worker``);
  the training deployment can be pointed at a Docker or Kubernetes GPU work pool instead.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

from flows.batching import run_logger
from flows.pipeline import pipeline_flow
from flows.subprocesses import child_env, executable, run_command
from preprocessing.ingest import collect_incoming, ingest_index_path

if TYPE_CHECKING:  # pragma: no cover
    from core.config import FvlmConfig

INGEST_DEPLOYMENT = "ingest-nightly"
TRAIN_DEPLOYMENT = "train-weekly"


# ---- recording in DVC (the ingest library takes it as its ``record`` / ``in_cache`` callbacks) ----------
def _md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()  # noqa: S324 - DVC's content address, not security
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dvc_target_for(path: Path, root: Path, raw_dataset: Path | None = None) -> Path | None:
    """The ``dvc add``-ed folder (or file) holding ``path`` inside the repository ``root``, else None.

    Nearest ancestor with a ``<name>.dvc`` file; else ``raw_dataset`` when it holds ``path``; else
    ``path`` itself when it is inside the repository (it becomes a tracked dataset).
    """
    root = root.resolve()
    path = path.resolve()
    try:
        path.relative_to(root)
    except ValueError:
        return None
    for candidate in (path, *path.parents):
        if candidate == root:
            break
        if candidate.with_name(candidate.name + ".dvc").is_file():
            return candidate
    if raw_dataset is not None:
        dataset = raw_dataset.resolve()
        if dataset == path or dataset in path.parents:
            if dataset != path and any(dataset.rglob("*.dvc")):
                # the README's layout: data/raw/dicom and data/raw/reports.csv `dvc add`-ed one by one; DVC
                # refuses `dvc add data/raw` over them, so a new part (masks/) becomes a dataset of its own
                return dataset / path.relative_to(dataset).parts[0]
            return dataset
    return path


def dvc_cache_dir(root: Path) -> Path:
    import subprocess

    result = subprocess.run(
        [executable("dvc"), "cache", "dir"], cwd=root, capture_output=True, text=True, env=child_env()
    )
    text = result.stdout.strip()
    return Path(text) if result.returncode == 0 and text else root / ".dvc" / "cache"


def in_dvc_cache(path: Path, cache_dir: Path) -> bool:
    """The file's content is in the DVC cache (DVC 3 layout: files/md5/<2>/<30>)."""
    digest = _md5(path)
    return (cache_dir / "files" / "md5" / digest[:2] / digest[2:]).is_file()


INGEST_LOG = "ingest-log.jsonl"


def ingest_log_path(root: Path, raw_dataset: Path | None) -> Path:
    """The append-only ingest log, tracked by git (not DVC): next to the raw dataset (``data/ingest-log.jsonl``
    for ``data/demo``), else ``<root>/data/``."""
    root = root.resolve()
    if raw_dataset is not None:
        parent = raw_dataset.resolve().parent
        if parent == root or root in parent.parents:
            return parent / INGEST_LOG
    return root / "data" / INGEST_LOG


def append_ingest_log(root: Path, targets: list[Path], log_path: Path) -> dict[str, Any]:
    """One JSON line per recorded ingest: each target's ``.dvc`` file (its content hash) as ``dvc add`` left it.

    Appended and fsynced, never rewritten: after a ``git stash`` / checkout and ``dvc gc -w`` the hash of
    every ingest is still written down (docs/orchestration.md "Recovering an ingest").
    """
    import json
    import os
    import time

    import yaml

    root = root.resolve()
    datasets: dict[str, Any] = {}
    for target in targets:
        dvc_file = target.with_name(target.name + ".dvc")
        text = dvc_file.read_text()
        outs = (yaml.safe_load(text) or {}).get("outs") or [{}]
        datasets[str(dvc_file.relative_to(root))] = {
            "md5": outs[0].get("md5"),
            "size": outs[0].get("size"),
            "nfiles": outs[0].get("nfiles"),
            "dvc_file": text,
        }
    entry = {"recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "datasets": datasets}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return entry


def restore_from_ingest_log(root: Path, log_path: Path, which: int = -1) -> list[Path]:
    """Write back the ``.dvc`` files of ingest entry ``which`` (default: the last); the files written.
    ``dvc pull <file>`` (or ``dvc checkout`` while the cache holds it) then brings the studies back."""
    import json

    lines = [line for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{log_path}: no ingest recorded yet")
    entry = json.loads(lines[which])
    written = []
    for relative, dataset in entry["datasets"].items():
        path = root.resolve() / relative
        path.write_text(dataset["dvc_file"])
        written.append(path)
    return written


def dvc_recorder(root: Path, raw_dataset: Path | None, log: Any = None) -> Any:
    """``record(paths)`` for :func:`preprocessing.ingest.collect_incoming`: ``dvc add`` of the tracked folders
    holding them, then a line in the ingest log (:func:`append_ingest_log`) with the hashes it recorded."""

    def record(paths: list[Path]) -> list[Path]:
        targets: list[Path] = []
        for path in paths:
            target = dvc_target_for(path, root, raw_dataset)
            if target is None:
                continue  # outside the repository: the archive copy is the record
            if target not in targets:
                targets.append(target)
        targets = [t for t in targets if not any(other in t.parents for other in targets)]  # outermost only
        if targets:
            run_command(  # not -q: DVC's reason for a refusal must reach the error
                [executable("dvc"), "add", *(str(t.relative_to(root.resolve())) for t in targets)],
                cwd=root,
                env=child_env(),
                log=log,
            )
            log_path = ingest_log_path(root, raw_dataset)
            append_ingest_log(root, targets, log_path)
            if log is not None:
                log.info("ingest: dataset hashes appended to %s (commit it with the .dvc files)", log_path)
        return targets

    return record


@flow(name="fvlm-ingest")
def ingest_flow(
    params_path: str | None = None,
    watch_dir: str | None = None,
    targets: list[str] | None = None,
    settle_s: float = 60.0,
    pull: bool = False,
    push: bool = True,
) -> dict[str, Any]:
    """Nightly: watch folder -> raw dataset (by DICOM identity, recorded) -> ``dvc repro shard`` -> push."""
    from core.config import load_config

    log = run_logger()
    config = load_config(params_path)
    root = config.root.resolve()
    watch = config.path(watch_dir or config.orchestration.watch_dir)
    raw_dir = config.path(config.paths.raw_dicom)
    raw_dataset = config.path(config.paths.raw_dataset)
    inside = dvc_target_for(raw_dir, root, raw_dataset) is not None
    cache_dir = dvc_cache_dir(root)
    incoming = collect_incoming(
        watch,
        raw_dir,
        config.path(config.paths.reports_csv),
        id_column=config.reports.id_column,
        settle_s=settle_s,
        record=dvc_recorder(root, raw_dataset, log),
        in_cache=lambda path: in_dvc_cache(path, cache_dir),
        archive_dir=None if inside else config.path(config.paths.ingest_archive),
        masks_dir=config.path(config.paths.precomputed_masks),
        index_path=ingest_index_path(root, raw_dir),  # O(changed) nightly runs: stat-gated identities + hashes
    )
    log.info(
        "ingest: %d new studies, %d files added to known studies, %d files ingested (%d already present), "
        "%d report rows added (%d skipped), %d files still being copied, %d rejected; recorded: %s",
        incoming.studies_moved,
        incoming.files_added_to_existing,
        incoming.files_ingested,
        incoming.duplicates,
        incoming.report_rows_added,
        incoming.report_rows_skipped,
        incoming.not_settled,
        len(incoming.rejected),
        ", ".join(incoming.recorded) or "-",
    )
    for line in incoming.rejected:
        log.warning("ingest rejected %s", line)
    report = pipeline_flow(
        repo_root=str(config.root),
        targets=targets if targets is not None else ["shard"],
        pull=pull,
        push=push,
        metrics_dir=config.paths.metrics,
        tracking_uri=config.tracking.mlflow_tracking_uri,
        registered_model=config.tracking.registered_model,
        promote_alias=config.evaluate.promote_alias,
    )
    report["ingest"] = asdict(incoming)
    return report


@flow(name="fvlm-train-evaluate")
def train_evaluate_flow(
    params_path: str | None = None,
    retrain: bool = False,
    targets: list[str] | None = None,
    pull: bool = False,
    push: bool = True,
) -> dict[str, Any]:
    """Weekly: ``dvc repro evaluate`` (train -> evaluate -> promotion gate), push, report the MLflow run."""
    from core.config import load_config

    config = load_config(params_path)
    return pipeline_flow(
        repo_root=str(config.root),
        targets=targets if targets is not None else ["evaluate"],
        force_stages=["train"] if retrain else None,
        pull=pull,
        push=push,
        metrics_dir=config.paths.metrics,
        tracking_uri=config.tracking.mlflow_tracking_uri,
        registered_model=config.tracking.registered_model,
        promote_alias=config.evaluate.promote_alias,
    )


def build_deployments(
    config: FvlmConfig,
    params_path: Path,
    *,
    which: tuple[str, ...] = ("ingest", "train"),
    interval_s: float | None = None,
    ingest_parameters: dict[str, Any] | None = None,
    train_parameters: dict[str, Any] | None = None,
) -> list[Any]:
    """``RunnerDeployment`` objects for ``prefect.serve``: cron from config (or an interval, for tests)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    orchestration = config.orchestration

    def schedule(cron: str) -> Any:
        return Interval(interval_s) if interval_s else Cron(cron, timezone=orchestration.timezone)

    deployments = []
    if "ingest" in which:
        deployments.append(
            ingest_flow.to_deployment(
                name=INGEST_DEPLOYMENT,
                schedule=schedule(orchestration.ingest_cron),
                parameters={"params_path": str(params_path), **(ingest_parameters or {})},
                concurrency_limit=1,
                tags=["fvlm", "ingest"],
                description="watch folder -> convert, segment, parse-reports, shard (dvc repro) -> dvc push",
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    if "train" in which:
        deployments.append(
            train_evaluate_flow.to_deployment(
                name=TRAIN_DEPLOYMENT,
                schedule=schedule(orchestration.train_cron),
                parameters={"params_path": str(params_path), **(train_parameters or {})},
                concurrency_limit=1,
                tags=["fvlm", "train"],
                description="train (torchrun) -> evaluate -> promotion gate (dvc repro evaluate) -> dvc push",
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments
