"""``fvlm demo-data OUT_DIR``: generate the synthetic CT cohort (DICOM, masks, reports, labels)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "demo-data",
        help="generate the synthetic chest CT cohort (DICOM + masks + reports.csv + labels.csv)",
        description="Phantom chest CTs with lesions, realistic DICOM (planted fake PHI), CT-RATE-style reports "
        "and the 18 labels. Defaults come from params.yaml `demo_data`; flags override them.",
        examples=[
            ("fvlm demo-data", "paths.demo_dir with params.yaml demo_data"),
            ("fvlm demo-data /tmp/cohort --studies 4 --workers 1", "a tiny cohort elsewhere"),
            ("fvlm demo-data data/paper --size real --difficulty paper", "realistic sizes and prevalence"),
            ("fvlm demo-data /tmp/real --reports reports.csv --labels labels.csv", "real report text"),
        ],
    )
    arg(parser, "out_dir", nargs="?", default=None, key="paths.demo_dir", help="output folder")
    arg(parser, "--studies", type=int, default=None, key="demo_data.studies", help="number of studies")
    arg(parser, "--seed", type=int, default=None, key="demo_data.seed", help="cohort seed (same seed -> same bytes)")
    arg(
        parser,
        "--size",
        choices=["demo", "small", "real"],
        default=None,
        key="demo_data.size",
        help="demo: 128^2 x ~70 slices of 5 mm; small: 256^2, 2.5 mm; real: 512^2, 1.25 mm",
    )
    arg(
        parser,
        "--abdomen-fraction",
        type=float,
        default=None,
        key="demo_data.abdomen_fraction",
        help="share of studies reaching the abdomen",
    )
    arg(parser, "--workers", type=int, default=None, key="demo_data.workers", help="parallel study processes")
    arg(
        parser,
        "--difficulty",
        choices=["learnable", "paper"],
        default=None,
        key="demo_data.difficulty",
        help="learnable: lesions large and contrasted enough for the demo grid; "
        "paper: realistic sizes and CT-RATE-like prevalence (docs/learnability.md)",
    )
    arg(
        parser,
        "--reports",
        default=None,
        path=True,
        help="real reports CSV (Findings/Impression, Findings_EN/Impressions_EN or report_text): each phantom is "
        "drawn from one report's 18 labels (--labels) and carries that report's text",
    )
    arg(parser, "--labels", default=None, path=True, help="the 18 CT-RATE labels (0/1) of --reports, joined on a key")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args
    from synthetic.cohort import generate_cohort

    config = load_config_from_args(args)
    settings = config.demo_data
    out_dir = config.path(args.out_dir or config.paths.demo_dir)
    studies = args.studies if args.studies is not None else settings.studies
    workers = args.workers if args.workers is not None else settings.workers
    fraction = args.abdomen_fraction if args.abdomen_fraction is not None else settings.abdomen_fraction
    if studies < 1 or workers < 1 or not 0.0 <= fraction <= 1.0:
        print("fvlm demo-data: --studies and --workers must be >= 1, --abdomen-fraction in [0, 1]", file=sys.stderr)
        return 2
    if (args.reports is None) != (args.labels is None):
        print("fvlm demo-data: give --reports and --labels together", file=sys.stderr)
        return 2
    sources = None
    if args.reports is not None:
        from synthetic.cohort import read_source_reports

        try:
            sources = read_source_reports(args.reports, args.labels)
        except (OSError, ValueError) as error:
            print(f"fvlm demo-data: {error}", file=sys.stderr)
            return 2
    try:
        summary = generate_cohort(
            out_dir,
            studies=studies,
            seed=args.seed if args.seed is not None else settings.seed,
            size=args.size or settings.size,
            workers=workers,
            abdomen_fraction=fraction,
            difficulty=args.difficulty or settings.difficulty,
            sources=sources,
        )
    except ValueError as error:  # more studies than source reports
        print(f"fvlm demo-data: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"fvlm demo-data: cannot write {out_dir}: {error}", file=sys.stderr)
        return 1
    print("\n".join(summary.lines()))
    return 0
