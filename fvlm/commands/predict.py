"""``fvlm predict``: one study (DICOM dir, NIfTI or converted study) -> per-anatomy calls (JSON, docs/predict.md)."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "predict",
        help="per-anatomy, per-label probability, threshold and positive/negative call for one study",
        description=(
            "Converts the study (DICOM) or reads a NIfTI HU volume, finds its mask (--mask; else from the "
            "study's identity: the segment stage's masks, then paths.precomputed_masks; else TotalSegmentator "
            "when segment.backend is totalsegmentator), prepares the model grid and writes JSON (schema in "
            "docs/predict.md): per label the probability, the threshold chosen on the validation split at "
            "evaluation, the call and the validation AUC; the resolved model version; anatomies absent from "
            "the scan as not assessable."
        ),
        examples=[
            ("fvlm predict /data/dicom/study-001", "the champion model on one DICOM study, JSON on stdout"),
            ("fvlm predict volume.nii.gz --mask mask.nii.gz --out result.json", "a NIfTI with its mask"),
            ("fvlm predict volume.nii.gz --model models:/fvlm-ct/3", "a given registered version"),
            ("fvlm predict --study study_0000 --png study_0000.png", "a demo study by name, mask found, one-page PNG"),
        ],
    )
    parser.add_argument(
        "input", nargs="?", default=None, help="a DICOM folder holding one study, or a NIfTI HU volume (.nii/.nii.gz)"
    )
    parser.add_argument(
        "--study",
        default=None,
        help="instead of INPUT: a study_id of <paths.converted>/studies.parquet or a study folder name in "
        "paths.raw_dicom",
    )
    arg(
        parser,
        "--model",
        default=None,
        key="models:/{tracking.registered_model}@{evaluate.promote_alias}",
        help="models:/NAME@ALIAS, models:/NAME/VERSION or a local model dir",
    )
    parser.add_argument("--mask", default=None, help="TotalSegmentator mask on the volume's grid (default: found)")
    parser.add_argument(
        "--thresholds",
        default=None,
        help="thresholds.json of `fvlm evaluate` (default: the ones stored on the registered model version)",
    )
    parser.add_argument("--out", default=None, help="output JSON (default: stdout)")
    parser.add_argument("--png", default=None, help="also write a one-page PNG: key slices, anatomy overlay, calls")
    parser.set_defaults(handler=run)


def summary_lines(payload: dict[str, Any]) -> list[str]:
    """A few human lines: model version, calls, not assessable anatomies."""
    model = payload["model"]
    shown = f"{model['name']} v{model['version']}" if model.get("version") else str(model["ref"])
    if model.get("alias"):
        shown += f" (@{model['alias']})"
    lines = [f"model: {shown}", f"mask: {payload['input']['mask_source']}"]
    no_call = payload.get("no_call_labels", [])
    assessed = sum(1 for row in payload["labels"].values() if row["status"] == "assessed")
    if not model["thresholds"].get("source") or (assessed and len(no_call) == assessed):
        lines.append(f"no call possible for any label: {model['thresholds']['note']}")
        top = sorted(
            ((label, row["probability"]) for label, row in payload["labels"].items() if row["probability"] is not None),
            key=lambda item: -item[1],
        )[:5]
        lines.append("highest probabilities: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
    else:
        calls = payload["positive_calls"]
        lines.append(
            "positive: "
            + (
                ", ".join(
                    f"{label} ({payload['labels'][label]['probability']:.2f} >= "
                    f"{payload['labels'][label]['threshold']:.2f})"
                    for label in calls
                )
                or "none"
            )
        )
        if no_call:
            lines.append(
                f"no call possible for {len(no_call)} of {len(payload['labels'])} labels (no threshold: their "
                "validation split had a single class): " + ", ".join(no_call)
            )
    for warning in payload.get("warnings", []):
        lines.append(f"warning: {warning}")
    missing = payload["anatomies_not_assessable"]
    if missing:
        lines.append("not assessable: " + ", ".join(missing))
    return lines


def run(args: argparse.Namespace) -> int:
    import json

    from fvlm.commands import load_config_from_args
    from training.inference.predict import PredictionError, PredictJob, run_predict, write_prediction

    if (args.input is None) == (args.study is None):
        print("fvlm predict: give either INPUT or --study", file=sys.stderr)
        return 2
    config = load_config_from_args(args)
    job = PredictJob.from_config(
        config,
        model=args.model,
        input_path=args.input,
        study=args.study,
        mask=args.mask,
        thresholds=args.thresholds,
        png=args.png,
    )
    try:
        payload = run_predict(job)
    except PredictionError as error:
        print(f"fvlm predict: {error}", file=sys.stderr)
        return 1
    if args.out:
        write_prediction(payload, args.out)
        for line in summary_lines(payload):
            print(line)
        print(f"written: {args.out}" + (f", {args.png}" if args.png else ""))
    else:
        if not payload["model"]["thresholds"].get("source"):
            print(f"fvlm predict: {payload['model']['thresholds']['note']}", file=sys.stderr)
        print(json.dumps(payload, indent=2))
    return 0
