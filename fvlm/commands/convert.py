"""``fvlm convert``: DICOM tree (or CT-RATE NIfTI + metadata) -> RAS int16 HU volumes + manifest."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="DICOM / CT-RATE -> volumes/<study_id>.nii.gz (RAS, int16 HU) + studies.parquet",
        description=(
            "Discover studies under INPUT, choose one axial CT series per study, assemble it into a RAS+ "
            "int16 HU NIfTI and write OUTPUT/studies.parquet (one row per study: ok | quarantined + reason) "
            "and OUTPUT/unreadable.parquet. Studies already converted from the same files and config are reused."
        ),
    )
    parser.add_argument("input", nargs="?", default=None, help="input folder (default: paths.raw_dicom)")
    parser.add_argument("output", nargs="?", default=None, help="output folder (default: paths.converted)")
    parser.add_argument(
        "--format",
        dest="input_format",
        choices=["dicom", "ctrate"],
        default=None,
        help="input layout (default: convert.input_format)",
    )
    parser.add_argument(
        "--metadata-csv", default=None, help="CT-RATE metadata CSV (default: convert.ctrate_metadata_csv)"
    )
    strict = parser.add_mutually_exclusive_group()
    strict.add_argument(
        "--strict",
        dest="strict",
        action="store_true",
        default=None,
        help="quarantine tilted / gappy series instead of resampling them",
    )
    strict.add_argument("--no-strict", dest="strict", action="store_false")
    parser.add_argument("--workers", type=int, default=None, help="parallel study workers (default: convert.workers)")
    parser.add_argument(
        "--min-slices", type=int, default=None, help="fewest slices a series may have (default: convert.min_slices)"
    )
    parser.add_argument("--output-extension", choices=[".nii.gz", ".nii"], default=None)
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
        print(f"fvlm convert: input folder not found: {job.input_dir}", file=sys.stderr)
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
