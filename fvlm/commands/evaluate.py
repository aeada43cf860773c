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
            "printed, tagged in MLflow and written to <paths.metrics>/eval.info.json (eval.json: numbers only)."
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
        "(default: the version recorded in <paths.metrics>/train.info.json, else paths.models)",
    )
    arg(
        parser,
        "--out",
        default=None,
        key="paths.eval",
        help="report dir (kept out of the train stage's outs)",
    )
    arg(parser, "--metrics", default=None, key="{paths.metrics}/eval.json", help="metrics JSON")
    parser.add_argument("--no-promote", action="store_true", help="record the score, never move the alias")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow (local model dir only)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args, run_stage
    from training.evaluation.job import EvaluateJob
    from training.stages import has_val_split, run_evaluate

    config = load_config_from_args(args)
    job = EvaluateJob.from_config(
        config,
        model=args.model,
        shards=args.shards,
        out=args.out,
        metrics=args.metrics,
        promote=False if args.no_promote else None,
        tracking=False if args.no_tracking else None,
    )
    try:
        report = run_stage(config, job, run_evaluate, "evaluate_flow")
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        print(f"fvlm evaluate: {error}", file=sys.stderr)
        return 1
    model_ref, out, metrics = job.model_ref, job.out_dir, job.metrics_path
    from fvlm.plot_data import write_auc_per_label  # dvc.yaml plots: metrics/plots/auc_per_label.csv

    write_auc_per_label(metrics, report)
    if not has_val_split(job):
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
