"""``fvlm evaluate``: zero-shot evaluation on the val/test shards, MLflow logging, champion promotion."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "evaluate",
        help="zero-shot AUC/ACC/F1/sens/spec per label on the test shards; ROC plots; promote 'champion'",
        description=(
            "Thresholds are chosen on the val split and applied to test (the fVLM-code protocol, threshold "
            "on test itself, is reported separately). Writes OUT/eval_report.json, OUT/roc/*.png and "
            "<paths.metrics>/eval.json; logs an MLflow eval run linked to the training run; moves the "
            "evaluate.promote_alias only when the model clears evaluate.promote_floor (default ci_low: the "
            "lower end of the mean-AUC bootstrap CI above 0.5) and its mean AUC beats the current holder on "
            "the same data. A model below the floor is registered and scored, not promoted; the reason is "
            "printed, tagged in MLflow and written to the metrics file."
        ),
        examples=[
            ("fvlm evaluate", "the trained version on paths.shards; promote it when it wins"),
            ("fvlm evaluate --model models:/fvlm-ct@champion --no-promote", "score the champion, move nothing"),
            ("fvlm evaluate --model data/models/model --no-tracking", "a local model, no MLflow"),
        ],
    )
    arg(parser, "--shards", default=None, key="paths.shards", help="shards dir")
    parser.add_argument(
        "--model",
        default=None,
        help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/ID/model or a local model dir "
        "(default: the version recorded in <paths.metrics>/train.json, else paths.models)",
    )
    arg(
        parser,
        "--out",
        default=None,
        key="{paths.data_dir}/eval",
        help="report dir (kept out of the train stage's outs)",
    )
    arg(parser, "--metrics", default=None, key="{paths.metrics}/eval.json", help="metrics JSON")
    parser.add_argument("--no-promote", action="store_true", help="record the score, never move the alias")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow (local model dir only)")
    parser.set_defaults(handler=run)


def default_model_ref(config) -> str:  # noqa: ANN001 - FvlmConfig, typed lazily
    """The model the last `fvlm train` produced: its registered version, else its local directory."""
    import json

    train_metrics = config.path(config.paths.metrics) / "train.json"
    if config.tracking.enabled and train_metrics.is_file():
        recorded = json.loads(train_metrics.read_text())
        if recorded.get("registered_model") and recorded.get("model_version"):
            return f"models:/{recorded['registered_model']}/{recorded['model_version']}"
    return str(config.path(config.paths.models) / "model")


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args

    config = load_config_from_args(args)
    if args.no_tracking:
        config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"enabled": False})})
    shards = config.path(args.shards or config.paths.shards)
    out = config.path(args.out) if args.out else config.path(config.paths.data_dir) / "eval"
    metrics = config.path(args.metrics) if args.metrics else config.path(config.paths.metrics) / "eval.json"
    model_ref = args.model or default_model_ref(config)

    from torch.utils.data import DataLoader

    from core.anatomy_sets import ANATOMY_SETS_FILE
    from core.io import sha256_file
    from training.evaluation.evaluate import data_hash, run_evaluation
    from training.trainer.batch import collate_batch
    from training.trainer.data import ShardDataset, shard_paths

    def batches(split: str):  # noqa: ANN202
        dataset = ShardDataset.from_dir(
            shards,
            split,
            crop_zyx=config.grid.crop_zyx,
            hu_window=config.grid.hu_window,
            mode="eval",
            eval_mode=config.evaluate.eval_mode,
        )
        # a plain DataLoader: ShardBatches caps batches at one sample per row, and eval_mode="anatomy"
        # yields one crop per anatomy present (several per study)
        return DataLoader(
            dataset,
            batch_size=config.evaluate.batch_size,
            collate_fn=collate_batch,
            num_workers=config.train.num_workers,
        )

    files = shard_paths(shards, "val") + shard_paths(shards, "test")
    if not shard_paths(shards, "test"):
        print(f"fvlm evaluate: {shards}/test: no shard files", file=sys.stderr)
        return 1
    protocol = {
        "eval_mode": config.evaluate.eval_mode,
        "crop_zyx": list(config.grid.crop_zyx),
        "hu_window": list(config.grid.hu_window),
        "threshold_method": config.evaluate.threshold_method,
        "prompts": sha256_file(
            config.path(config.evaluate.prompts_file) if config.evaluate.prompts_file else ANATOMY_SETS_FILE
        ),
    }
    try:
        report = run_evaluation(
            config,
            model_ref,
            (lambda: batches("val")) if shard_paths(shards, "val") else (lambda: batches("test")),
            lambda: batches("test"),
            eval_data_hash=data_hash(files, protocol),
            out_dir=out,
            metrics_path=metrics,
            promote=not args.no_promote,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"fvlm evaluate: {error}", file=sys.stderr)
        return 1
    from fvlm.plot_data import write_auc_per_label  # dvc.yaml plots: metrics/plots/auc_per_label.csv

    write_auc_per_label(metrics, report)
    if not shard_paths(shards, "val"):
        print("warning: no val split; thresholds were chosen on test (optimistic)", file=sys.stderr)
    mean_val, mean_fvlm = report["mean_val_threshold"], report["mean_fvlm_protocol"]
    ci = report.get("mean_auc_ci")
    ci_text = f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else ""
    print(
        f"model {model_ref}: {report['n_test']} test studies, {len(report['scored_labels'])} labels scored "
        f"({len(report['skipped_labels'])} skipped: single class)"
    )
    print(f"mean AUC {mean_val['auc']:.3f}{ci_text}")
    print(
        "val-chosen thresholds:  "
        + ", ".join(f"{k} {mean_val[k]:.3f}" for k in ("accuracy", "sensitivity", "specificity", "f1", "f1_weighted"))
    )
    print(
        "fVLM protocol (test):   "
        + ", ".join(f"{k} {mean_fvlm[k]:.3f}" for k in ("accuracy", "sensitivity", "specificity", "f1", "f1_weighted"))
    )
    decision = report.get("promotion") or {}
    verdict = "promoted" if decision.get("promoted") else "not promoted"
    print(
        f"{config.evaluate.promote_alias}: {verdict} ({decision.get('reason', 'no promotion attempted')}; "
        f"floor: {decision.get('floor', config.evaluate.promote_floor)})"
    )
    if report.get("run_id"):
        print(f"MLflow eval run: {report['run_id']}")
    print(f"report: {out / 'eval_report.json'}; metrics: {metrics}")
    return 0
