"""One Prefect flow per pipeline stage; plain-value parameters; the work lives in the stage libraries.

=================  ==========================================================  =========================
flow               fan-out                                                     returns
=================  ==========================================================  =========================
convert_flow       batches of studies -> ``preprocessing.convert.convert_study``  ``ConvertSummary``
segment_flow       batches of volumes -> ``segmentation.stage.segment_studies``   ``SegmentSummary``
                   (one warm backend per batch; GPU batches hold a Prefect
                   global concurrency slot, ``orchestration.gpu_concurrency_limit``)
parse_reports_flow one task (spaCy ``nn_process`` inside) -> report_parsing       library summary
shard_flow         one task -> ``preprocessing.shards.build_shards`` (per-study   ``ShardSummary``
                   cache + its own process pool inside)
train_flow         ``torchrun --nproc-per-node <train.gpus>`` subprocess           metrics/train.json dict
                   (``python -m fvlm.cli train`` on CPU)
evaluate_flow      subprocess ``python -m fvlm.cli evaluate`` (promotion gate)     metrics/eval.json dict
=================  ==========================================================  =========================

Every flow writes a markdown artifact (counts ok / reused / quarantined / failed with reasons, timing,
links to QC pictures) and logs progress per batch. Manifests are written once, atomically, at the end of
a flow from the rows of this run (plus the reused ones), so a killed run leaves the previous manifest
and only atomically written per-study files; the rerun redoes at most the studies of the killed run.

Stage commands call these through ``*_from_config(config, ...)``. The train and evaluate flows start
``fvlm train`` / ``fvlm evaluate`` as subprocesses with ``FVLM_STAGE_WORKER=1`` in the environment:
a command that sees it (or torchrun's ``LOCAL_RANK``) must do the work in-process instead of starting
the flow again.
"""

from __future__ import annotations

import functools
import json
import operator
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.batching import ItemOutcome, run_batched, run_logger
from flows.subprocesses import child_env, executable, run_command

STAGE_WORKER_ENV = "FVLM_STAGE_WORKER"


def in_stage_worker() -> bool:
    """True inside a process started by train_flow / evaluate_flow (or by torchrun): work in-process."""
    return bool(os.environ.get(STAGE_WORKER_ENV)) or "LOCAL_RANK" in os.environ


@dataclass(frozen=True)
class FanOut:
    """How a stage fans out (orchestration section of params.yaml)."""

    batch_size: int = 16
    task_runner: str = "threads"
    max_workers: int = 2
    retries: int = 2
    retry_delay_s: float = 10.0
    dask_address: str | None = None

    def run_kwargs(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "task_runner": self.task_runner,
            "max_workers": self.max_workers,
            "retries": self.retries,
            "retry_delay_s": self.retry_delay_s,
            "dask_address": self.dask_address,
        }


def fan_out_from_config(config: Any, batch_size: int | None = None) -> dict[str, Any]:
    orchestration = config.orchestration
    return FanOut(
        batch_size=batch_size or orchestration.batch_size,
        task_runner=orchestration.task_runner,
        max_workers=orchestration.max_workers,
        retries=orchestration.retries,
        retry_delay_s=getattr(orchestration, "retry_delay_s", 10.0),
        dask_address=getattr(orchestration, "dask_address", None),
    ).run_kwargs()


# ----------------------------------------------------------------------------------------------- convert


@dataclass(frozen=True)
class ConvertItem:
    study_id: str  # pseudonym: the only identity that reaches logs and artifacts
    study: Any  # preprocessing.dicom_discovery.StudyFiles (holds PHI in memory only)
    previous: Any  # ManifestRow of the last run, or None


def convert_batch(items: list[ConvertItem], output_dir: str, settings: Any) -> list[ItemOutcome]:
    """Batch function: convert each study (reusing unchanged ones); bad data -> quarantined outcome."""
    from preprocessing.convert import convert_study

    outcomes = []
    for item in items:
        row = convert_study(item.study, output_dir, settings, previous=item.previous)
        if row.status == "ok":
            status, reason = ("skipped", "unchanged (reused)") if row.reused else ("ok", "")
        else:
            status, reason = "quarantined", row.reason
        outcomes.append(ItemOutcome(item.study_id, status, reason, payload=row))  # type: ignore[arg-type]
    return outcomes


@flow(name="fvlm-convert")
def convert_flow(
    input_dir: str,
    output_dir: str,
    salt: str,
    strict: bool = False,
    series_preference: Sequence[str] = ("thinnest", "soft_tissue_kernel", "most_slices"),
    study_key_tag: str = "StudyInstanceUID",
    min_slices: int = 10,
    max_spacing_deviation: float = 0.1,
    output_extension: str = ".nii.gz",
    pseudonym_length: int = 16,
    batch_size: int = 16,
    task_runner: str = "threads",
    max_workers: int = 2,
    retries: int = 2,
    retry_delay_s: float = 10.0,
    dask_address: str | None = None,
) -> Any:
    """DICOM tree -> volumes/<study_id>.nii.gz + studies.parquet + unreadable.parquet (ConvertSummary)."""
    from preprocessing.convert import ManifestRow, finish_conversion, start_conversion
    from preprocessing.deid import patient_pseudonym, study_pseudonym

    started = time.perf_counter()
    out, settings, discovery, previous = start_conversion(
        input_dir, output_dir, salt=salt, strict=strict, workers=max_workers, series_preference=series_preference,
        study_key_tag=study_key_tag, min_slices=min_slices, max_spacing_deviation=max_spacing_deviation,
        output_extension=output_extension, pseudonym_length=pseudonym_length,
    )
    items = []
    for study in discovery.studies:
        study_id = study_pseudonym(study.study_key, salt, pseudonym_length)
        items.append(ConvertItem(study_id, study, previous.get(study_id)))
    summary = run_batched(
        items,
        functools.partial(convert_batch, output_dir=str(out), settings=settings),
        batch_size,
        task_runner,
        stage="convert",
        max_workers=max_workers,
        retries=retries,
        retry_delay_s=retry_delay_s,
        item_key=operator.attrgetter("study_id"),
        dask_address=dask_address,
        redact_errors=True,  # exception messages may quote DICOM paths / values
    )
    rows: list[ManifestRow] = list(summary.payloads())
    by_id = {item.study_id: item for item in items}
    for outcome in summary.outcomes:
        if outcome.status == "failed":  # a crash, not bad data: still one manifest row per input study
            study = by_id[outcome.key].study
            rows.append(
                ManifestRow(
                    study_id=outcome.key,
                    patient_id=patient_pseudonym(study.patient_key, salt, pseudonym_length),
                    status="quarantined",
                    reason=f"conversion crashed: {outcome.reason.split(':', 1)[0]}",
                    n_input_files=study.n_files,
                    config_hash=settings.config_hash(),
                )
            )
    return finish_conversion(rows, discovery, out, started)


def convert_from_config(config: Any, input_dir: str | os.PathLike[str], output_dir: str | os.PathLike[str]) -> Any:
    section = config.convert
    return convert_flow(
        input_dir=str(input_dir),
        output_dir=str(output_dir),
        salt=config.privacy.salt,
        strict=section.strict,
        series_preference=list(section.series_preference),
        study_key_tag=section.study_key_tag,
        min_slices=section.min_slices,
        max_spacing_deviation=section.max_spacing_deviation,
        output_extension=section.output_extension,
        pseudonym_length=config.privacy.pseudonym_length,
        **fan_out_from_config(config),
    )


# ----------------------------------------------------------------------------------------------- segment


def segment_batch(pairs: list[tuple[str, str]], output_dir: str, options: dict[str, Any]) -> list[ItemOutcome]:
    """Batch function: one warm backend segments the batch; quarantined studies come back as outcomes."""
    from segmentation.stage import segment_studies

    summary = segment_studies(
        [(study_id, path) for study_id, path in pairs], output_dir, write_manifest_file=False, **options
    )
    outcomes = []
    for row in summary.rows:
        if row.get("status") == "ok":
            status, reason = ("skipped", "unchanged (reused)") if row.get("reused") else ("ok", "")
        else:
            status, reason = "quarantined", str(row.get("reason", ""))
        qc = row.get("qc_path")
        outcomes.append(
            ItemOutcome(
                row["study_id"], status, reason,  # type: ignore[arg-type]
                qc_path=str(Path(output_dir) / qc) if qc else None, payload=row,
            )
        )
    return outcomes


def _uses_gpu(backend: str, device: str) -> bool:
    if backend != "totalsegmentator" or device == "cpu":
        return False
    if device == "gpu":
        return True
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@flow(name="fvlm-segment")
def segment_flow(
    input_dir: str,
    output_dir: str,
    backend: str = "precomputed",
    anatomy_set: str = "ctrate4",
    mode: str = "fast",
    device: str = "auto",
    roi_subset: bool | list[str] = True,
    roi_subset_robust: bool = True,
    precomputed_dir: str | None = None,
    salt: str | None = None,
    pseudonym_length: int = 16,
    totalseg_home: str | None = None,
    qc: bool = True,
    force: bool = False,
    batch_size: int = 8,
    task_runner: str = "threads",
    max_workers: int = 2,
    retries: int = 2,
    retry_delay_s: float = 10.0,
    dask_address: str | None = None,
    gpu_concurrency_limit: str | None = "fvlm-gpu",
) -> Any:
    """Volumes -> masks/<study_id>.nii.gz + segments.parquet + qc/*.png (SegmentSummary)."""
    from core.anatomy_sets import load_anatomy_set
    from segmentation.stage import MANIFEST_NAME, SegmentSummary, collect_inputs, merge_into_manifest
    from segmentation.totalseg import WeightsMissingError

    started = time.perf_counter()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs = [(study_id, str(path)) for study_id, path in collect_inputs(input_dir)]
    options = {
        "backend": backend, "anatomy_set": anatomy_set, "mode": mode, "device": device,
        "roi_subset": roi_subset, "roi_subset_robust": roi_subset_robust, "precomputed_dir": precomputed_dir,
        "salt": salt, "pseudonym_length": pseudonym_length, "totalseg_home": totalseg_home, "qc": qc,
        "force": force,
    }
    gpu = _uses_gpu(backend, device)
    summary = run_batched(
        pairs,
        functools.partial(segment_batch, output_dir=str(out), options=options),
        batch_size,
        task_runner,
        stage="segment",
        max_workers=max_workers,
        retries=retries,
        retry_delay_s=retry_delay_s,
        item_key=operator.itemgetter(0),
        dask_address=dask_address,
        concurrency_limit=gpu_concurrency_limit if gpu else None,
        tags=["gpu"] if gpu else (),
        fatal_errors=(WeightsMissingError, FileNotFoundError) if backend == "totalsegmentator" else (),
    )
    rows: list[dict[str, Any]] = list(summary.payloads())
    for outcome in summary.outcomes:
        if outcome.status == "failed":
            rows.append({"study_id": outcome.key, "status": "quarantined", "backend": backend,
                         "anatomy_set": anatomy_set, "reason": outcome.reason, "reused": False, "warnings": []})
    manifest_path = merge_into_manifest(rows, out / MANIFEST_NAME, load_anatomy_set(anatomy_set).anatomy_names)
    result = SegmentSummary(rows=rows, manifest_path=manifest_path, seconds=time.perf_counter() - started)
    result.n_reused = sum(1 for row in rows if row.get("reused"))
    result.n_ok = sum(1 for row in rows if row.get("status") == "ok")
    result.n_quarantined = len(rows) - result.n_ok
    result.study_seconds = [float(r["seconds"]) for r in rows if r.get("status") == "ok" and not r.get("reused")
                            and r.get("seconds") is not None]
    return result


def segment_from_config(
    config: Any,
    input_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    backend: str | None = None,
    precomputed_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    qc: bool | None = None,
) -> Any:
    section = config.segment
    masks = precomputed_dir or config.path(config.paths.precomputed_masks)
    return segment_flow(
        input_dir=str(input_dir),
        output_dir=str(output_dir),
        backend=backend or section.backend,
        anatomy_set=section.anatomy_set,
        mode=section.mode,
        device=section.device,
        roi_subset=section.roi_subset,
        roi_subset_robust=getattr(section, "roi_subset_robust", True),
        precomputed_dir=str(masks),
        salt=config.privacy.salt,
        pseudonym_length=config.privacy.pseudonym_length,
        totalseg_home=str(config.path(section.totalseg_home)) if section.totalseg_home else None,
        qc=section.qc_pictures if qc is None else qc,
        force=force,
        gpu_concurrency_limit=getattr(config.orchestration, "gpu_concurrency_limit", "fvlm-gpu"),
        **fan_out_from_config(config, batch_size=section.batch_size),
    )


# ----------------------------------------------------------------------------------------- parse-reports


def _record_key(record: Any) -> str:
    return f"line-{record.line}"  # unique and PHI-free (the input id may be PHI; study_id may be empty)


def parse_batch(records: list[Any], options: dict[str, Any]) -> list[ItemOutcome]:
    """Batch function: spaCy over the parseable reports of the batch; others are quarantined as given."""
    from report_parsing.tables import PARSED_STATUSES, ParseOptions, parse_records

    parse_records(records, ParseOptions(**options))  # in place on this worker's copy
    outcomes = []
    for record in records:
        if record.status in PARSED_STATUSES:
            outcomes.append(ItemOutcome(_record_key(record), "ok", record.reason,
                                        payload=(record.analysis, list(record.labels))))
        else:
            outcomes.append(ItemOutcome(_record_key(record), "quarantined", f"{record.status}: {record.reason}"))
    return outcomes


@dataclass
class ParseReportsResult:
    records: list[Any]  # report_parsing.tables.StudyRecord, in input order
    long_path: Path
    studies_path: Path
    seconds: float


@flow(name="fvlm-parse-reports")
def parse_reports_flow(
    reports_csv: str,
    out_parquet: str,
    options: dict[str, Any] | None = None,
    batch_size: int = 256,
    task_runner: str = "threads",
    max_workers: int = 2,
    retries: int = 2,
    retry_delay_s: float = 10.0,
    dask_address: str | None = None,
) -> ParseReportsResult:
    """Reports CSV -> OUT.parquet (study x anatomy) + OUT.studies.parquet, in batches of reports.

    ``options``: the fields of ``report_parsing.tables.ParseOptions``. spaCy is pure Python: use
    ``task_runner="processes"`` for more than one core (or ``n_process`` inside one task).
    """
    from report_parsing.io import read_report_rows
    from report_parsing.tables import ParseOptions, prepare_records, write_tables

    started = time.perf_counter()
    parse_options = ParseOptions(**(options or {}))
    _, rows = read_report_rows(reports_csv, parse_options.required_columns())
    records = prepare_records(rows, parse_options)
    summary = run_batched(
        records,
        functools.partial(parse_batch, options=dict(vars(parse_options))),
        batch_size,
        task_runner,
        stage="parse-reports",
        max_workers=max_workers,
        retries=retries,
        retry_delay_s=retry_delay_s,
        item_key=_record_key,
        dask_address=dask_address,
        redact_errors=True,  # report text is PHI until scrubbed
    )
    by_key = {outcome.key: outcome for outcome in summary.outcomes}
    for record in records:
        outcome = by_key.get(_record_key(record))
        if outcome is None:
            continue
        if outcome.payload is not None:
            record.analysis, record.labels = outcome.payload
        elif outcome.status == "failed":
            record.status, record.reason = "failed", f"line {record.line}: parser crashed ({outcome.reason})"
    long_path, studies_path = write_tables(records, out_parquet, parse_options.anatomy_set)
    return ParseReportsResult(records, long_path, studies_path, time.perf_counter() - started)


def parse_reports_from_config(config: Any, reports_csv: Any, out_parquet: Any, **overrides: Any) -> ParseReportsResult:
    reports = config.reports
    options = {
        "id_column": reports.id_column,
        "findings_column": reports.findings_column,
        "impression_column": reports.impression_column,
        "text_column": reports.text_column,
        "anatomy_set": config.segment.anatomy_set,
        "salt": config.privacy.salt,
        "pseudonym_length": config.privacy.pseudonym_length,
        "max_chars": getattr(reports, "max_chars", 20_000),
        "scrub_phi": getattr(reports, "scrub_phi", True),
        "uncertain_is_positive": getattr(reports, "uncertain_is_positive", True),
        "batch_size": reports.batch_size,
        "n_process": reports.n_process,
        **overrides,
    }
    fan_out = fan_out_from_config(config, batch_size=reports.batch_size)
    return parse_reports_flow(str(reports_csv), str(out_parquet), options, **fan_out)


# ------------------------------------------------------------------------------------------------- shard


@task(name="build-shards", persist_result=False)
def _build_shards_task(kwargs: dict[str, Any]) -> Any:
    from preprocessing.shards import build_shards

    return build_shards(**kwargs)


@flow(name="fvlm-shard")
def shard_flow(
    converted_dir: str,
    segmented_dir: str,
    reports_table: str,
    out_dir: str,
    anatomy_set: str = "ctrate4",
    grid: dict[str, Any] | None = None,
    split: dict[str, Any] | None = None,
    shard: dict[str, Any] | None = None,
    metrics_path: str | None = None,
    workers: int | None = None,
) -> Any:
    """Converted + segmented + reports -> data/shards/{train,val,test}/part-*.parquet (ShardSummary).

    One task: ``build_shards`` keeps a per-study cache (only new / changed studies are prepared, in its
    own process pool of ``workers``) and rewrites the split files atomically.
    """
    from core.config import GridConfig, ShardConfig, SplitConfig

    started = time.perf_counter()
    summary = _build_shards_task(
        {
            "converted_dir": converted_dir,
            "segmented_dir": segmented_dir,
            "reports_table": reports_table,
            "out_dir": out_dir,
            "anatomy_set": anatomy_set,
            "grid": GridConfig(**(grid or {})),
            "split": SplitConfig(**(split or {})),
            "shard": ShardConfig(**(shard or {})),
            "metrics_path": metrics_path,
            "workers": workers,
        }
    )
    lines = [
        "# shard",
        "",
        summary.describe(),
        "",
        "| split | studies | patients |",
        "|---|---:|---:|",
        *(f"| {name} | {count} | {summary.patients.get(name, 0)} |" for name, count in summary.studies.items()),
        "",
        f"Wall time {time.perf_counter() - started:.1f} s.",
    ]
    if summary.quarantined:
        lines += ["", "## Quarantined", ""]
        lines += [f"- `{item['study_id']}`: {item['reason']}" for item in summary.quarantined[:50]]
    _markdown("shard-summary", "\n".join(lines) + "\n", summary.describe())
    return summary


def shard_from_config(config: Any, *, converted: Any = None, segmented: Any = None, reports: Any = None,
                      out: Any = None, metrics: Any = None, workers: int | None = None) -> Any:
    return shard_flow(
        converted_dir=str(converted or config.path(config.paths.converted)),
        segmented_dir=str(segmented or config.path(config.paths.segmented)),
        reports_table=str(reports or config.path(config.paths.reports_table)),
        out_dir=str(out or config.path(config.paths.shards)),
        anatomy_set=config.segment.anatomy_set,
        grid=config.grid.model_dump(),
        split=config.split.model_dump(),
        shard=config.shard.model_dump(),
        metrics_path=str(metrics or config.path(config.paths.metrics) / "shard.json"),
        workers=workers,
    )


# -------------------------------------------------------------------------------------- train / evaluate


def torchrun_command(
    gpus: int, cli_args: Sequence[str], *, nnodes: int = 1, rdzv_endpoint: str | None = None
) -> list[str]:
    """The launcher for ``fvlm <cli_args>``: torchrun with one process per GPU, plain python on CPU."""
    import sys

    if gpus < 1:
        return [sys.executable, "-m", "fvlm.cli", *cli_args]
    rendezvous = (
        ["--standalone"] if nnodes == 1 else
        [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint or 'localhost:29400'}"]
    )
    return [executable("torchrun"), *rendezvous, f"--nproc-per-node={gpus}", "-m", "fvlm.cli", *cli_args]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


@task(name="torchrun-train", persist_result=False)
def _launch_training(command: list[str], cwd: str, env: dict[str, str]) -> None:
    run_command(command, cwd=cwd, env=env, log=run_logger())


@flow(name="fvlm-train")
def train_flow(
    params_path: str | None = None,
    gpus: int = 0,
    tracking_uri: str | None = None,
    extra_args: list[str] | None = None,
    metrics_path: str | None = None,
    cwd: str | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
) -> dict[str, Any]:
    """Train as a subprocess: ``torchrun --nproc-per-node <gpus> -m fvlm.cli train`` (NCCL processes are
    children of torchrun, not of Prefect's thread pool); the MLflow tracking URI is passed on."""
    cli_args = [*(["--params", params_path] if params_path else []), "train", *(extra_args or [])]
    command = torchrun_command(gpus, cli_args, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)
    env = child_env({STAGE_WORKER_ENV: "1"}, tracking_uri=tracking_uri)
    run_logger().info("launching: %s", " ".join(command))
    _launch_training(command, cwd or (str(Path(params_path).resolve().parent) if params_path else os.getcwd()), env)
    metrics = _read_json(Path(metrics_path)) if metrics_path else {}
    _markdown("train-summary", "# train\n\n```json\n" + json.dumps(metrics, indent=2, default=str)[:4000]
              + "\n```\n", "training metrics")
    return metrics


@task(name="evaluate", persist_result=False)
def _launch_evaluation(command: list[str], cwd: str, env: dict[str, str]) -> None:
    run_command(command, cwd=cwd, env=env, log=run_logger())


@flow(name="fvlm-evaluate")
def evaluate_flow(
    params_path: str | None = None,
    tracking_uri: str | None = None,
    extra_args: list[str] | None = None,
    metrics_path: str | None = None,
    cwd: str | None = None,
) -> dict[str, Any]:
    """Zero-shot evaluation + promotion gate (``fvlm evaluate`` in a subprocess); returns metrics/eval.json."""
    import sys

    command = [sys.executable, "-m", "fvlm.cli", *(["--params", params_path] if params_path else []), "evaluate",
               *(extra_args or [])]
    env = child_env({STAGE_WORKER_ENV: "1"}, tracking_uri=tracking_uri)
    _launch_evaluation(command, cwd or (str(Path(params_path).resolve().parent) if params_path else os.getcwd()), env)
    metrics = _read_json(Path(metrics_path)) if metrics_path else {}
    _markdown("evaluate-summary", "# evaluate\n\n```json\n" + json.dumps(metrics, indent=2, default=str)[:4000]
              + "\n```\n", "evaluation metrics")
    return metrics


def train_from_config(config: Any, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    params = config.root / "params.yaml"
    return train_flow(
        params_path=str(params) if params.is_file() else None,
        gpus=config.train.gpus,
        tracking_uri=config.tracking.mlflow_tracking_uri,
        extra_args=list(extra_args),
        metrics_path=str(config.path(config.paths.metrics) / "train.json"),
        cwd=str(config.root),
    )


def evaluate_from_config(config: Any, extra_args: Sequence[str] = ()) -> dict[str, Any]:
    params = config.root / "params.yaml"
    return evaluate_flow(
        params_path=str(params) if params.is_file() else None,
        tracking_uri=config.tracking.mlflow_tracking_uri,
        extra_args=list(extra_args),
        metrics_path=str(config.path(config.paths.metrics) / "eval.json"),
        cwd=str(config.root),
    )


def _markdown(key: str, text: str, description: str) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(text, key=key, description=description[:500])
    except Exception as error:  # reporting never fails a stage
        run_logger().warning("artifact %s not written: %s", key, error)
