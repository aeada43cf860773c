"""``fvlm train``: train fVLM (or the global CLIP baseline) on the Parquet shards; MLflow on rank 0.

CPU demo: ``fvlm train``. GPUs: ``torchrun --nproc_per_node=N -m fvlm.cli train`` (DDP, NCCL; rank and
world size come from torchrun's environment).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.trainer.job import TrainJob


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "train",
        help="train the model on the shards (DDP under torchrun), log to MLflow, register a version",
        description=(
            "Reads SHARDS/train/part-*.parquet; writes OUT/{model,checkpoints,tokenizer} and "
            "<paths.metrics>/train.json (numbers: final loss, steps, samples/s) and train.info.json beside it "
            "(MLflow run id, model version); the loss curve also goes to the MLflow run (plots/)."
        ),
        examples=[
            ("fvlm train", "paths.shards -> paths.models, train.steps steps, MLflow run + model version"),
            ("fvlm train --steps 20 --no-tracking", "a short run without MLflow"),
            ("fvlm train --resume", "continue from the last checkpoint"),
            ("torchrun --standalone --nproc-per-node 4 -m fvlm.cli train", "4 GPUs (DDP)"),
        ],
    )
    arg(parser, "--shards", default=None, key="paths.shards", help="shards dir")
    arg(parser, "--out", default=None, key="paths.models", help="training output dir")
    arg(parser, "--steps", type=int, default=None, key="train.steps", help="total optimizer steps")
    arg(parser, "--resume", action="store_true", help="continue exactly from OUT/checkpoints/last.pt")
    arg(parser, "--metrics", default=None, key="{paths.metrics}/train.json", help="metrics JSON")
    arg(parser, "--no-tracking", action="store_true", help="no MLflow (metrics file still written)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args, run_stage
    from training.stages import TrainDataError, run_train
    from training.trainer.job import TrainJob
    from training.trainer.loop import TrainingFailure

    config = load_config_from_args(args)
    job = TrainJob.from_config(
        config,
        shards=args.shards,
        out=args.out,
        metrics=args.metrics,
        steps=args.steps,
        resume=args.resume or None,
        tracking=False if args.no_tracking else None,
    )
    try:
        result = run_stage(config, job, run_train, "train_flow")
    except (TrainDataError, TrainingFailure) as error:
        print(f"fvlm train: {error}", file=sys.stderr)
        return 1
    metrics = job.metrics_path
    from fvlm.plot_data import write_loss_curve, write_loss_curve_png  # dvc.yaml plots: metrics/plots/

    curve_csv = write_loss_curve(metrics, result.losses, first_step=result.resumed_from_step + 1)
    curve_png = write_loss_curve_png(metrics, result.losses, first_step=result.resumed_from_step + 1)
    curve_url = _log_loss_curve(job, result.run_id, [curve_png, curve_csv])
    trend = "falling" if result.final_loss_avg < result.first_loss_avg else "NOT falling"
    print(
        f"trained {result.steps} steps (resumed from {result.resumed_from_step}); loss {trend}: first-10 mean "
        f"{result.first_loss_avg:.4f} -> last-10 mean {result.final_loss_avg:.4f} (final {result.final_loss:.4f}); "
        f"curve: {curve_png}" + (f" ({curve_url})" if curve_url else "")
    )
    print(f"throughput: {result.samples_per_s:.2f} samples/s, {result.tokens_per_s:.0f} tokens/s")
    print(f"model: {result.model_dir}")
    if result.run_id:
        print(f"MLflow run: {result.run_id}")
    if result.model_version:
        print(f"registered: models:/{result.registered_model}/{result.model_version}")
    print(f"metrics: {metrics}")
    return 0


def _log_loss_curve(job: TrainJob, run_id: str | None, files: list[Path]) -> str | None:
    """The loss curve (PNG + CSV, drawn after the run ended) as artifacts ``plots/`` of the training run;
    the PNG's http URL when MLflow is a server. A failure to log is a warning, never a failed command."""
    import logging

    from training.tracking.runs import artifact_url, log_files, tracking_uri_for

    if not run_id or not job.tracking.enabled:
        return None
    uri = tracking_uri_for(job.root, job.tracking.mlflow_tracking_uri)
    try:
        for path in files:
            log_files(uri, run_id, {"plots": path})
    except Exception as error:  # noqa: BLE001 - the metrics and the model are written already
        logging.getLogger("fvlm.train").warning("loss curve not logged to MLflow run %s: %s", run_id, error)
        return None
    return artifact_url(uri, run_id, f"plots/{files[0].name}")
