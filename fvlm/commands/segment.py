"""``fvlm segment``: volumes -> TotalSegmentator label maps (or precomputed masks) + segments.parquet."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="volumes -> masks/<study_id>.nii.gz (TotalSegmentator ids) + segments.parquet + qc/*.png",
        description=(
            "Segment every ok study of INPUT (a convert output: studies.parquet + volumes/) with one warm "
            "backend: 'totalsegmentator' (task total, weights from TOTALSEG_HOME_DIR / TOTALSEG_WEIGHTS_PATH, "
            "never downloaded) or 'precomputed' (multilabel NIfTI, per-class folder or DICOM SEG per study in "
            "--masks, named by study_id or raw study key). Writes OUTPUT/masks/, OUTPUT/segments.parquet "
            "(per-anatomy voxels, bbox, FOV cut, status + reason) and OUTPUT/qc/. Unchanged studies are reused."
        ),
    )
    parser.add_argument("input", nargs="?", default=None, help="convert output folder (default: paths.converted)")
    parser.add_argument("output", nargs="?", default=None, help="output folder (default: paths.segmented)")
    parser.add_argument(
        "--backend", choices=["precomputed", "totalsegmentator"], default=None, help="default: segment.backend"
    )
    parser.add_argument("--masks", default=None, help="precomputed masks folder (default: paths.precomputed_masks)")
    parser.add_argument("--anatomy-set", default=None, help="default: segment.anatomy_set")
    parser.add_argument("--mode", choices=["fast", "full", "fastest"], default=None, help="default: segment.mode")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default=None, help="default: segment.device")
    roi = parser.add_mutually_exclusive_group()
    roi.add_argument(
        "--roi-subset",
        dest="roi_subset",
        action="store_true",
        default=None,
        help="limit TotalSegmentator to the anatomy set's classes where faster and safe",
    )
    roi.add_argument("--no-roi-subset", dest="roi_subset", action="store_false")
    qc = parser.add_mutually_exclusive_group()
    qc.add_argument("--qc", dest="qc", action="store_true", default=None, help="write qc/<study_id>.png")
    qc.add_argument("--no-qc", dest="qc", action="store_false")
    parser.add_argument("--force", action="store_true", help="re-segment studies even when unchanged")
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
        print(f"fvlm segment: input folder not found: {job.inputs}", file=sys.stderr)
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
