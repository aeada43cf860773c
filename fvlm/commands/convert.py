"""``fvlm convert``: DICOM tree (or CT-RATE NIfTI + metadata) -> RAS int16 HU volumes + manifest."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "convert",
        help="DICOM / CT-RATE -> volumes/<study_id>.nii.gz (RAS, int16 HU) + studies.parquet",
        description=(
            "Discover studies under INPUT, choose one axial CT series per study, assemble it into a RAS+ "
            "int16 HU NIfTI and write OUTPUT/studies.parquet (one row per study: ok | quarantined + reason) "
            "and OUTPUT/unreadable.parquet. Studies already converted from the same files and config are reused."
        ),
        examples=[
            ("fvlm convert", "paths.raw_dicom -> paths.converted, as `dvc repro convert` runs it"),
            ("fvlm convert /data/dicom data/converted --workers 8", "another DICOM tree, 8 study workers"),
            (
                "fvlm convert ct-rate/train data/converted --format ctrate --metadata-csv train_metadata.csv",
                "CT-RATE NIfTI + metadata",
            ),
            ("fvlm --params params.paper.yaml convert --strict", "quarantine tilted / gappy series"),
        ],
    )
    arg(parser, "input", nargs="?", default=None, key="paths.raw_dicom", help="input folder (DICOM tree or CT-RATE)")
    arg(parser, "output", nargs="?", default=None, key="paths.converted", help="output folder")
    arg(
        parser,
        "--format",
        dest="input_format",
        choices=["dicom", "ctrate"],
        default=None,
        key="convert.input_format",
        help="input layout",
    )
    arg(parser, "--metadata-csv", default=None, key="convert.ctrate_metadata_csv", help="CT-RATE metadata CSV")
    strict = parser.add_mutually_exclusive_group()
    arg(
        strict,
        "--strict",
        dest="strict",
        action="store_true",
        default=None,
        key="convert.strict",
        help="quarantine tilted / gappy series instead of resampling them",
    )
    arg(
        strict,
        "--no-strict",
        dest="strict",
        action="store_false",
        key="convert.strict",
        help="resample tilted / gappy series onto a regular grid",
    )
    arg(parser, "--workers", type=int, default=None, key="convert.workers", help="parallel study workers")
    arg(
        parser, "--min-slices", type=int, default=None, key="convert.min_slices", help="fewest slices a series may have"
    )
    arg(
        parser,
        "--output-extension",
        choices=[".nii.gz", ".nii"],
        default=None,
        key="convert.output_extension",
        help="volume file type (.nii: faster to read, larger)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args, run_stage
    from preprocessing.convert import ConvertJob, run_convert

    config = load_config_from_args(args)
    job = ConvertJob.from_config(
        config,
        input_dir=args.input,
        output_dir=args.output,
        input_format=args.input_format,
        metadata_csv=args.metadata_csv,
        strict=args.strict,
        workers=args.workers,
        min_slices=args.min_slices,
        output_extension=args.output_extension,
    )
    if not job.input_dir.is_dir():
        print(f"fvlm convert: input folder not found: {job.input_dir} (paths.raw_dicom or INPUT)", file=sys.stderr)
        return 2
    if job.input_format == "ctrate" and job.metadata_csv is None:
        print("fvlm convert: --format ctrate needs --metadata-csv (or convert.ctrate_metadata_csv)", file=sys.stderr)
        return 2
    try:
        summary = run_stage(config, job, run_convert, "convert_flow", {"max_workers": job.workers})
    except (FileNotFoundError, ValueError) as error:
        print(f"fvlm convert: {error}", file=sys.stderr)
        return 2
    print(summary.describe())
    if summary.n_studies and summary.n_ok == 0:
        print("fvlm convert: no study converted", file=sys.stderr)
        return 1
    return 0
