"""One Prefect flow per pipeline stage, each a thin wrapper of the stage library's one entry point.

=================  ===============================================  ==========================================
flow               library entry (the fan-out it gets)              returns
=================  ===============================================  ==========================================
convert_flow       ``preprocessing.convert.run_convert(job)``       ``preprocessing.convert.ConvertSummary``
                   (batches of studies, one Prefect task each)
segment_flow       ``segmentation.stage.run_segment(job)``          ``segmentation.stage.SegmentSummary``
                   (batches of volumes, one warm backend per process;
                   GPU batches hold the Prefect global concurrency
                   slot ``orchestration.gpu_concurrency_limit``)
parse_reports_flow ``report_parsing.tables.run_parse_reports(job)``  ``report_parsing.tables.ParseReportsSummary``
                   (batches of reports)
shard_flow         ``preprocessing.shards.run_shard(job)`` in one    ``preprocessing.shards.ShardSummary``
                   task (per-study cache + its own process pool)
train_flow         ``training.stages.run_train(job)`` in the flow      ``training.trainer.loop.TrainResult``
                   (``torchrun_train_flow``: ``torchrun
                   --nproc-per-node N -m fvlm.cli train`` for DDP)
evaluate_flow      ``training.stages.run_evaluate(job)`` in the       the evaluation report (dict)
                   flow (promotion gate inside)
=================  ===============================================  ==========================================

A stage flow takes the stage's job (``ConvertJob`` / ``SegmentJob`` / ``ParseReportsJob`` / ``ShardJob`` /
``TrainJob`` / ``EvaluateJob``, built by ``Job.from_config(config, **overrides)``); a data-stage flow
also takes a :class:`flows.batching.FanOut`
(``FanOut.from_config(config.orchestration, ...)``), and passes the library a ``map_batches`` seam
(:func:`flows.batching.prefect_batches`): retries of transient failures, isolation of crashing items,
markdown + progress artifacts. Which segment backend uses the GPU and which errors are fatal is the
job's knowledge (``SegmentJob.uses_gpu()`` / ``fatal_errors()``). Manifests are written once,
atomically, at the end by the library, so a killed run leaves the previous manifest and only atomically
written per-study files; the rerun redoes at most the studies of the killed run.

Train and evaluate run their library in the flow's process, like the data stages. DDP training is
``torchrun_train_flow``: one flow run in the parent launches ``torchrun``; each rank's ``fvlm train`` sees
torchrun's ``LOCAL_RANK`` (and ``FVLM_NO_FLOWS=1``) and runs the library (``fvlm.commands.run_stage``),
so no rank starts a flow.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task

from flows.batching import FanOut, prefect_batches, run_logger
from flows.subprocesses import child_env, executable, run_command
from preprocessing.convert import ConvertJob, ConvertSummary, run_convert
from preprocessing.shards import ShardJob, ShardSummary, run_shard
from report_parsing.tables import ParseReportsJob, ParseReportsSummary, run_parse_reports
from segmentation.stage import SegmentJob, SegmentSummary, run_segment
from training.evaluation.job import EvaluateJob
from training.trainer.job import TrainJob

if TYPE_CHECKING:  # the loop imports torch: the train flow imports it when it runs
    from training.trainer.loop import TrainResult

NO_FLOWS_ENV = "FVLM_NO_FLOWS"  # fvlm.commands.run_stage: run the library, not the flow


@flow(name="fvlm-convert")
def convert_flow(job: ConvertJob, fan_out: FanOut | None = None) -> ConvertSummary:
    """DICOM tree (or CT-RATE) -> volumes/ + studies.parquet + unreadable.parquet, batches of studies as tasks."""
    mapper = prefect_batches(
        fan_out or FanOut.from_config(), stage="convert", redact_errors=True
    )  # exception messages may quote DICOM paths / values
    return run_convert(job, map_batches=mapper)


@flow(name="fvlm-segment")
def segment_flow(job: SegmentJob, fan_out: FanOut | None = None) -> SegmentSummary:
    """Volumes -> masks/ + segments.parquet + qc/*.png, batches of volumes as tasks (a warm backend per worker)."""
    mapper = prefect_batches(
        fan_out or FanOut.from_config(), stage="segment", gpu=job.uses_gpu(), fatal_errors=job.fatal_errors()
    )
    summary = run_segment(job, map_batches=mapper)
    publish_qc_pictures(Path(job.output_dir), summary.rows)
    return summary


QC_LINK_LIMIT = 50  # links in the segment-qc artifact (the MLflow run holds every picture)


def publish_qc_pictures(output_dir: Path, rows: Sequence[dict[str, Any]]) -> str | None:
    """With an MLflow server (``fvlm services up``: ``MLFLOW_TRACKING_URI`` is http), log ``qc/*.png`` to a
    ``segment-qc`` run (artifacts ``qc/``) and link each picture from the ``segment-qc`` markdown artifact
    by its http URL, which Prefect's UI opens; the run id, None without a server or pictures (the segment
    artifact then names the pictures as paths, :func:`flows.batching.render_markdown`)."""
    from training.tracking.runs import (
        MlflowTracker,
        artifact_url,
        dvc_tags,
        run_artifacts_url,
        run_name_for,
        served_by_http,
    )

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    pictures = [(str(row["study_id"]), output_dir / str(row["qc_path"])) for row in rows if row.get("qc_path")]
    pictures = [(study, path) for study, path in pictures if path.is_file()]
    if not pictures or not served_by_http(uri):
        return None
    try:  # the experiment MLflow's own variable names, else the default (segment reads no tracking.* key)
        tracker = MlflowTracker(
            uri, os.environ.get("MLFLOW_EXPERIMENT_NAME") or "fvlm", run_name=run_name_for("segment", "qc")
        )
        tracker.set_tags({"stage": "segment", **dvc_tags()})
        tracker.log_artifact(pictures[0][1].parent, "qc")
        tracker.end("FINISHED")
        experiment_id = tracker.client.get_run(tracker.run_id).info.experiment_id
    except Exception as error:  # reporting never fails a stage
        run_logger().warning("QC pictures not logged to MLflow (%s): %s", uri, error)
        return None
    lines = ["# segment: QC pictures", ""]
    page = run_artifacts_url(uri, experiment_id, tracker.run_id)
    lines += [f"All {len(pictures)} pictures: [MLflow run {tracker.run_id}]({page})", ""]
    for study, path in pictures[:QC_LINK_LIMIT]:
        lines.append(f"- [{study}]({artifact_url(uri, tracker.run_id, f'qc/{path.name}')})")
    if len(pictures) > QC_LINK_LIMIT:
        lines.append(f"- ... and {len(pictures) - QC_LINK_LIMIT} more (in the MLflow run)")
    _markdown("segment-qc", "\n".join(lines) + "\n", f"segment: {len(pictures)} QC pictures in MLflow")
    return tracker.run_id


@flow(name="fvlm-parse-reports")
def parse_reports_flow(job: ParseReportsJob, fan_out: FanOut | None = None) -> ParseReportsSummary:
    """Reports CSV -> OUT.parquet (study x anatomy) + OUT.studies.parquet, batches of reports as tasks.

    spaCy is pure Python: use ``task_runner="processes"`` for more than one core (or ``n_process``
    inside one task).
    """
    mapper = prefect_batches(
        fan_out or FanOut.from_config(), stage="parse-reports", redact_errors=True, item_unit="reports"
    )  # report text is PHI until scrubbed
    return run_parse_reports(job, map_batches=mapper)


@task(name="build-shards", persist_result=False)
def _shard_task(job: ShardJob) -> ShardSummary:
    return run_shard(job)


@flow(name="fvlm-shard")
def shard_flow(job: ShardJob) -> ShardSummary:
    """Converted + segmented + reports -> {train,val,test}/part-*.parquet in one task (``run_shard`` keeps
    a per-study cache, prepares only new / changed studies in its own process pool and rewrites the
    split files atomically)."""
    started = time.perf_counter()
    summary = _shard_task(job)
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


# -------------------------------------------------------------------------------------- train / evaluate


def torchrun_command(
    gpus: int, cli_args: Sequence[str], *, nnodes: int = 1, rdzv_endpoint: str | None = None
) -> list[str]:
    """The launcher for ``fvlm <cli_args>``: torchrun with one process per GPU, plain python on CPU."""
    import sys

    if gpus < 1:
        return [sys.executable, "-m", "fvlm.cli", *cli_args]
    rendezvous = (
        ["--standalone"]
        if nnodes == 1
        else [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint or 'localhost:29400'}"]
    )
    return [executable("torchrun"), *rendezvous, f"--nproc-per-node={gpus}", "-m", "fvlm.cli", *cli_args]


def _read_json(path: Path) -> dict[str, Any]:
    """A metrics file merged with its ``.info.json`` (core/metrics_files.py); {} when unreadable."""
    from core.metrics_files import read_metrics_and_info

    try:
        return read_metrics_and_info(path)
    except (OSError, json.JSONDecodeError):
        return {}


@flow(name="fvlm-train")
def train_flow(job: TrainJob) -> TrainResult:
    """Shards -> model + checkpoints + metrics/train.json (+ MLflow run, registered version) in the flow's
    own thread (``training.stages.run_train``: DataLoader workers and CUDA stay off Prefect's task
    threads); the summary as a markdown artifact."""
    from training.stages import run_train

    result = run_train(job)
    summary = {**result.metrics_json(), **result.info_json()}
    _markdown(
        "train-summary",
        "# train\n\n"
        + _mlflow_links(
            job.tracking.mlflow_tracking_uri if job.tracking.enabled else None,
            result.run_id,
            {"loss curve": "plots/train_loss.png"},  # fvlm train logs it when the run ends
        )
        + "```json\n"
        + json.dumps(summary, indent=2, default=str)[:4000]
        + "\n```\n",
        "training metrics",
    )
    return result


@flow(name="fvlm-evaluate")
def evaluate_flow(job: EvaluateJob) -> dict[str, Any]:
    """Zero-shot evaluation + promotion gate (``training.stages.run_evaluate``) in the flow's own thread;
    returns the report, the summary metrics (metrics/eval.json) as a markdown artifact."""
    from training.evaluation.evaluate import summary_info, summary_metrics
    from training.stages import run_evaluate

    report = run_evaluate(job)
    summary = {**summary_metrics(report), **summary_info(report)}
    roc = {"ROC curves (all labels)": "roc/roc_all.png"}
    _markdown(
        "evaluate-summary",
        "# evaluate\n\n"
        + _mlflow_links(job.tracking.mlflow_tracking_uri if job.tracking.enabled else None, report.get("run_id"), roc)
        + "```json\n"
        + json.dumps(summary, indent=2, default=str)[:4000]
        + "\n```\n",
        "evaluation metrics",
    )
    return report


@task(name="torchrun-train", persist_result=False)
def _launch_training(command: list[str], cwd: str, env: dict[str, str]) -> None:
    run_command(command, cwd=cwd, env=env, log=run_logger())


@flow(name="fvlm-train-ddp")
def torchrun_train_flow(
    params_path: str | None = None,
    gpus: int = 0,
    tracking_uri: str | None = None,
    extra_args: list[str] | None = None,
    metrics_path: str | None = None,
    cwd: str | None = None,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
) -> dict[str, Any]:
    """DDP training as one flow run: ``torchrun --nproc-per-node <gpus> -m fvlm.cli train`` in a subprocess
    (NCCL processes are children of torchrun, not of Prefect's thread pool; plain python on CPU). Each
    rank sees ``LOCAL_RANK`` and runs the library, so no rank starts a flow of its own; the MLflow
    tracking URI is passed on."""
    cli_args = [*(["--params", params_path] if params_path else []), "train", *(extra_args or [])]
    command = torchrun_command(gpus, cli_args, nnodes=nnodes, rdzv_endpoint=rdzv_endpoint)
    env = child_env({NO_FLOWS_ENV: "1"}, tracking_uri=tracking_uri)  # the launched command: no flow of its own
    run_logger().info("launching: %s", " ".join(command))
    _launch_training(command, cwd or (str(Path(params_path).resolve().parent) if params_path else os.getcwd()), env)
    metrics = _read_json(Path(metrics_path)) if metrics_path else {}
    _markdown(
        "train-summary",
        "# train\n\n```json\n" + json.dumps(metrics, indent=2, default=str)[:4000] + "\n```\n",
        "training metrics",
    )
    return metrics


def _mlflow_links(tracking_uri: str | None, run_id: str | None, artifacts: dict[str, str]) -> str:
    """Markdown lines linking the MLflow run's artifacts page and ``artifacts`` (title -> artifact path) by
    http URL when MLflow is a server; the run id as text otherwise (a file:// link does not open)."""
    from training.tracking.runs import artifact_url, experiment_of, run_artifacts_url, served_by_http

    if not run_id:
        return ""
    if not served_by_http(tracking_uri):
        return f"MLflow run `{run_id}`\n\n"
    uri = str(tracking_uri)
    lines = [f"- [MLflow run {run_id}]({run_artifacts_url(uri, experiment_of(uri, run_id), run_id) or uri})"]
    lines += [f"- [{title}]({artifact_url(uri, run_id, path)})" for title, path in artifacts.items()]
    return "\n".join(lines) + "\n\n"


def _markdown(key: str, text: str, description: str) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(text, key=key, description=description[:500])
    except Exception as error:  # reporting never fails a stage
        run_logger().warning("artifact %s not written: %s", key, error)
