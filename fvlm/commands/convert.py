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
    parser.add_argument("--format", dest="input_format", choices=["dicom", "ctrate"], default=None,
                        help="input layout (default: convert.input_format)")
    parser.add_argument("--metadata-csv", default=None, help="CT-RATE metadata CSV (default: convert.ctrate_metadata_csv)")
    strict = parser.add_mutually_exclusive_group()
    strict.add_argument("--strict", dest="strict", action="store_true", default=None,
                        help="quarantine tilted / gappy series instead of resampling them")
    strict.add_argument("--no-strict", dest="strict", action="store_false")
    parser.add_argument("--workers", type=int, default=None, help="parallel study workers (default: convert.workers)")
    parser.add_argument("--min-slices", type=int, default=None, help="fewest slices a series may have (default: convert.min_slices)")
    parser.add_argument("--output-extension", choices=[".nii.gz", ".nii"], default=None)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args, run_stage_as_flow

    config = load_config_from_args(args)
    section = config.convert
    input_dir = config.path(args.input or config.paths.raw_dicom)
    output_dir = config.path(args.output or config.paths.converted)
    input_format = args.input_format or section.input_format
    strict = section.strict if args.strict is None else args.strict
    workers = args.workers or section.workers
    min_slices = args.min_slices or section.min_slices
    extension = args.output_extension or section.output_extension
    if not input_dir.is_dir():
        print(f"fvlm convert: input folder not found: {input_dir}", file=sys.stderr)
        return 2
    try:
        if input_format == "ctrate":
            from preprocessing.ctrate import convert_ctrate

            metadata = args.metadata_csv or section.ctrate_metadata_csv
            if not metadata:
                print("fvlm convert: --format ctrate needs --metadata-csv (or convert.ctrate_metadata_csv)", file=sys.stderr)
                return 2
            summary = convert_ctrate(
                input_dir,
                config.path(metadata),
                output_dir,
                salt=config.privacy.salt,
                workers=workers,
                output_extension=extension,
                pseudonym_length=config.privacy.pseudonym_length,
            )
        else:
            settings = dict(
                salt=config.privacy.salt,
                strict=strict,
                series_preference=list(section.series_preference),
                study_key_tag=section.study_key_tag,
                min_slices=min_slices,
                max_spacing_deviation=section.max_spacing_deviation,
                output_extension=extension,
                pseudonym_length=config.privacy.pseudonym_length,
            )
            if run_stage_as_flow(config):
                from flows.stages import convert_flow, fan_out_from_config

                fan_out = {**fan_out_from_config(config), "max_workers": workers}
                summary = convert_flow(input_dir=str(input_dir), output_dir=str(output_dir), **settings, **fan_out)
            else:
                from preprocessing.convert import convert_studies

                summary = convert_studies(input_dir, output_dir, workers=workers, **settings)
    except (FileNotFoundError, ValueError) as error:
        print(f"fvlm convert: {error}", file=sys.stderr)
        return 2
    print(summary.describe())
    if summary.n_studies and summary.n_ok == 0:
        print("fvlm convert: no study converted", file=sys.stderr)
        return 1
    return 0
