"""``fvlm segment``: volumes -> TotalSegmentator label maps (or precomputed masks) + segments.parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "segment",
        help="volumes -> masks/<study_id>.nii.gz (TotalSegmentator ids) + segments.parquet + qc/*.png",
        description=(
            "Segment every ok study of INPUT (a convert output: studies.parquet + volumes/) with one warm "
            "backend: 'totalsegmentator' (task total, weights from TOTALSEG_HOME_DIR / TOTALSEG_WEIGHTS_PATH, "
            "never downloaded) or 'precomputed' (multilabel NIfTI, per-class folder or DICOM SEG per study in "
            "--masks, named by study_id or raw study key). Writes OUTPUT/masks/, OUTPUT/segments.parquet "
            "(per-anatomy voxels, bbox, FOV cut, status + reason) and OUTPUT/qc/. Unchanged studies are reused."
        ),
        examples=[
            ("fvlm segment", "paths.converted -> paths.segmented with segment.backend"),
            ("fvlm segment data/converted data/segmented --masks data/demo/masks", "what `dvc repro` runs"),
            ("fvlm segment --backend totalsegmentator --device gpu --mode full", "TotalSegmentator on a GPU"),
        ],
    )
    arg(parser, "input", nargs="?", default=None, key="paths.converted", help="convert output folder")
    arg(parser, "output", nargs="?", default=None, key="paths.segmented", help="output folder")
    arg(
        parser,
        "--backend",
        choices=["precomputed", "totalsegmentator"],
        default=None,
        key="segment.backend",
        help="segmentation backend",
    )
    arg(parser, "--masks", default=None, key="paths.precomputed_masks", help="precomputed masks folder")
    arg(parser, "--anatomy-set", default=None, key="segment.anatomy_set", help="anatomy set (core/anatomy_sets.yaml)")
    arg(
        parser,
        "--mode",
        choices=["fast", "full", "fastest"],
        default=None,
        key="segment.mode",
        help="TotalSegmentator resolution (fast: 3 mm, full: 1.5 mm)",
    )
    arg(
        parser,
        "--device",
        choices=["auto", "cpu", "gpu"],
        default=None,
        key="segment.device",
        help="where TotalSegmentator runs",
    )
    roi = parser.add_mutually_exclusive_group()
    arg(
        roi,
        "--roi-subset",
        dest="roi_subset",
        action="store_true",
        default=None,
        key="segment.roi_subset",
        help="limit TotalSegmentator to the anatomy set's classes where faster and safe",
    )
    arg(
        roi,
        "--no-roi-subset",
        dest="roi_subset",
        action="store_false",
        key="segment.roi_subset",
        help="segment every class of the task",
    )
    qc = parser.add_mutually_exclusive_group()
    arg(
        qc,
        "--qc",
        dest="qc",
        action="store_true",
        default=None,
        key="segment.qc_pictures",
        help="write qc/<study_id>.png",
    )
    arg(qc, "--no-qc", dest="qc", action="store_false", key="segment.qc_pictures", help="no QC pictures")
    arg(parser, "--force", action="store_true", help="re-segment studies even when unchanged")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args, run_stage
    from segmentation.stage import SegmentJob, run_segment
    from segmentation.totalseg import WeightsMissingError

    config = load_config_from_args(args)
    job = SegmentJob.from_config(
        config,
        input_dir=args.input,
        output_dir=args.output,
        backend=args.backend,
        precomputed_dir=args.masks,
        anatomy_set=args.anatomy_set,
        mode=args.mode,
        device=args.device,
        roi_subset=args.roi_subset,
        qc=args.qc,
        force=args.force,
    )
    if not Path(job.inputs).is_dir():  # type: ignore[arg-type]
        print(f"fvlm segment: input folder not found: {job.inputs} (paths.converted or INPUT)", file=sys.stderr)
        return 2

    try:  # run_segment draws the progress bar (core/progress.py)
        summary = run_stage(
            config,
            job,
            run_segment,
            "segment_flow",
            {"batch_size": config.segment.batch_size},
        )
    except WeightsMissingError as error:
        print(f"fvlm segment: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"fvlm segment: {error}", file=sys.stderr)
        return 2
    print(summary.text())
    return 0 if summary.n_quarantined < len(summary.rows) or not summary.rows else 1
