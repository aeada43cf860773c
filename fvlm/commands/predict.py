"""``fvlm predict``: one new study (DICOM dir or NIfTI) -> per-anatomy disease probabilities (JSON)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "predict",
        help="zero-shot per-anatomy, per-label probabilities for one study (DICOM folder or NIfTI)",
        description=(
            "Converts the study (DICOM) or reads a NIfTI HU volume, segments it (TotalSegmentator backend, "
            "or --mask with TotalSegmentator ids on the volume's grid), prepares the model grid and writes "
            "JSON with the probabilities and which anatomies were found."
        ),
        examples=[
            ("fvlm predict /data/dicom/study-001", "the champion model on one DICOM study, JSON on stdout"),
            ("fvlm predict volume.nii.gz --mask mask.nii.gz --out result.json", "a NIfTI with its mask"),
            ("fvlm predict volume.nii.gz --model models:/fvlm-ct/3", "a given registered version"),
        ],
    )
    parser.add_argument("input", help="a DICOM folder holding one study, or a NIfTI HU volume (.nii/.nii.gz)")
    arg(
        parser,
        "--model",
        default=None,
        key="models:/{tracking.registered_model}@{evaluate.promote_alias}",
        help="models:/NAME@ALIAS, models:/NAME/VERSION or a local model dir",
    )
    parser.add_argument("--mask", default=None, help="precomputed TotalSegmentator mask on the volume's grid")
    parser.add_argument("--out", default=None, help="output JSON (default: stdout)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json
    import tempfile

    from fvlm.commands import load_config_from_args
    from training.inference.predict import PredictionError, predict_study, write_prediction

    config = load_config_from_args(args)
    model_ref = args.model or f"models:/{config.tracking.registered_model}@{config.evaluate.promote_alias}"
    with tempfile.TemporaryDirectory(prefix="fvlm-predict-") as work_dir:
        try:
            payload = predict_study(config, model_ref, args.input, mask_path=args.mask, work_dir=work_dir)
        except PredictionError as error:
            print(f"fvlm predict: {error}", file=sys.stderr)
            return 1
    if args.out:
        write_prediction(payload, args.out)
        found = ", ".join(payload["anatomies_found"]) or "none"
        print(f"anatomies found: {found}")
        top = sorted(payload["labels"].items(), key=lambda item: -item[1])[:5]
        print("highest: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
        print(f"written: {args.out}")
    else:
        print(json.dumps(payload, indent=2))
    return 0
