"""Scheduled deployments: nightly ingest, weekly train + evaluate + promote.

* :func:`ingest_flow` -- new study folders (and report CSVs) in the watch folder are moved into the
  input tree (``paths.raw_dicom`` / ``paths.reports_csv``), then ``dvc repro shard`` runs convert,
  segment, parse-reports and shard for exactly what changed, and ``dvc push`` stores the result;
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

import csv
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

from flows.batching import run_logger
from flows.pipeline import pipeline_flow
from flows.subprocesses import child_env, executable, run_command

if TYPE_CHECKING:  # pragma: no cover
    from core.config import FvlmConfig

INGEST_DEPLOYMENT = "ingest-nightly"
TRAIN_DEPLOYMENT = "train-weekly"
_ARCHIVE = ".ingested"
_REJECTED = ".rejected"


@dataclass
class IngestResult:
    studies_moved: int = 0
    files_added_to_existing: int = 0
    report_rows_added: int = 0
    report_rows_skipped: int = 0
    not_settled: int = 0
    rejected: list[str] = field(default_factory=list)  # "<file>: <reason>" (no study names: may hold PHI)

    @property
    def changed(self) -> bool:
        return bool(self.studies_moved or self.files_added_to_existing or self.report_rows_added)


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        newest = max(newest, path.lstat().st_mtime)
    return newest


def _move_tree(source: Path, target: Path) -> None:
    """Move a folder: an atomic rename on one file system, else copy to a temporary name then rename."""
    try:
        os.replace(source, target)
        return
    except OSError:
        pass
    staging = target.with_name(f".{target.name}.incoming")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    os.replace(staging, target)
    shutil.rmtree(source)


def _merge_study_folder(source: Path, target: Path) -> int:
    """Add files of ``source`` that ``target`` lacks (e.g. an extra series); returns how many were added."""
    added = 0
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        destination = target / path.relative_to(source)
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), destination)
        added += 1
    shutil.rmtree(source, ignore_errors=True)
    return added


def _merge_reports(source: Path, reports_csv: Path, id_column: str, result: IngestResult) -> bool:
    """Append the rows of ``source`` whose ``id_column`` is new to ``reports_csv`` (atomic rewrite)."""
    from core.io import atomic_path

    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        incoming = list(reader)
        incoming_columns = reader.fieldnames or []
    if id_column not in incoming_columns:
        result.rejected.append(f"{source.name}: no '{id_column}' column")
        return False
    existing_rows: list[dict[str, str]] = []
    columns = list(incoming_columns)
    if reports_csv.exists():
        with open(reports_csv, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            existing_rows = list(reader)
            columns = list(reader.fieldnames or incoming_columns)
        if set(incoming_columns) - set(columns):
            extra = ", ".join(sorted(set(incoming_columns) - set(columns)))
            result.rejected.append(f"{source.name}: columns not in {reports_csv.name}: {extra}")
            return False
    known = {row.get(id_column, "") for row in existing_rows}
    new_rows = []
    for row in incoming:
        key = row.get(id_column, "")
        if not key or key in known:
            result.report_rows_skipped += 1
            continue
        known.add(key)
        new_rows.append(row)
    if new_rows:
        with atomic_path(reports_csv) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(existing_rows)
                writer.writerows(new_rows)
    result.report_rows_added += len(new_rows)
    return True


def collect_incoming(
    watch_dir: Path,
    raw_dir: Path,
    reports_csv: Path | None = None,
    *,
    id_column: str = "study_key",
    settle_s: float = 60.0,
) -> IngestResult:
    """Move settled study folders from ``watch_dir`` into ``raw_dir``; merge report CSVs into ``reports_csv``.

    A folder is *settled* when nothing in it changed for ``settle_s`` seconds (a copy still in
    progress is left for the next run). Processed CSVs go to ``watch_dir/.ingested/``, unusable ones to
    ``watch_dir/.rejected/``.
    """
    result = IngestResult()
    if not watch_dir.is_dir():
        return result
    raw_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for entry in sorted(watch_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if now - _newest_mtime(entry) < settle_s:
                result.not_settled += 1
                continue
            target = raw_dir / entry.name
            if target.exists():
                result.files_added_to_existing += _merge_study_folder(entry, target)
            else:
                _move_tree(entry, target)
                result.studies_moved += 1
        elif entry.suffix.lower() == ".csv" and reports_csv is not None:
            if now - entry.stat().st_mtime < settle_s:
                result.not_settled += 1
                continue
            merged = _merge_reports(entry, reports_csv, id_column, result)
            archive = watch_dir / (_ARCHIVE if merged else _REJECTED)
            archive.mkdir(exist_ok=True)
            os.replace(entry, archive / f"{time.strftime('%Y%m%dT%H%M%S')}-{entry.name}")
    return result


@flow(name="fvlm-ingest")
def ingest_flow(
    params_path: str | None = None,
    watch_dir: str | None = None,
    targets: list[str] | None = None,
    settle_s: float = 60.0,
    pull: bool = False,
    push: bool = True,
) -> dict[str, Any]:
    """Nightly: watch folder -> input tree -> ``dvc repro shard`` (convert, segment, parse, shard) -> push."""
    from core.config import load_config

    log = run_logger()
    config = load_config(params_path)
    watch = config.path(watch_dir or config.orchestration.watch_dir)
    raw_dir = config.path(config.paths.raw_dicom)
    incoming = collect_incoming(
        watch,
        raw_dir,
        config.path(config.paths.reports_csv),
        id_column=config.reports.id_column,
        settle_s=settle_s,
    )
    log.info(
        "ingest: %d new studies, %d files added to known studies, %d report rows added (%d skipped), "
        "%d items still being copied, %d rejected",
        incoming.studies_moved, incoming.files_added_to_existing, incoming.report_rows_added,
        incoming.report_rows_skipped, incoming.not_settled, len(incoming.rejected),
    )
    for line in incoming.rejected:
        log.warning("ingest rejected %s", line)
    tracked = raw_dir.with_name(raw_dir.name + ".dvc")
    if incoming.changed and tracked.exists():  # the input tree is a `dvc add`-ed folder: record its new version
        run_command([executable("dvc"), "add", str(raw_dir)], cwd=config.root, env=child_env(), log=log)
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
