"""``fvlm segment``: volumes -> TotalSegmentator label maps (or precomputed masks) + segments.parquet."""

from __future__ import annotations

import argparse
import sys


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
    parser.add_argument("--backend", choices=["precomputed", "totalsegmentator"], default=None,
                        help="default: segment.backend")
    parser.add_argument("--masks", default=None, help="precomputed masks folder (default: paths.precomputed_masks)")
    parser.add_argument("--anatomy-set", default=None, help="default: segment.anatomy_set")
    parser.add_argument("--mode", choices=["fast", "full", "fastest"], default=None, help="default: segment.mode")
    parser.add_argument("--device", choices=["auto", "cpu", "gpu"], default=None, help="default: segment.device")
    roi = parser.add_mutually_exclusive_group()
    roi.add_argument("--roi-subset", dest="roi_subset", action="store_true", default=None,
                     help="limit TotalSegmentator to the anatomy set's classes where faster and safe")
    roi.add_argument("--no-roi-subset", dest="roi_subset", action="store_false")
    qc = parser.add_mutually_exclusive_group()
    qc.add_argument("--qc", dest="qc", action="store_true", default=None, help="write qc/<study_id>.png")
    qc.add_argument("--no-qc", dest="qc", action="store_false")
    parser.add_argument("--force", action="store_true", help="re-segment studies even when unchanged")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args, run_stage_as_flow

    config = load_config_from_args(args)
    section = config.segment
    input_dir = config.path(args.input or config.paths.converted)
    output_dir = config.path(args.output or config.paths.segmented)
    backend = args.backend or section.backend
    if not input_dir.is_dir():
        print(f"fvlm segment: input folder not found: {input_dir}", file=sys.stderr)
        return 2
    from segmentation.stage import segment_studies
    from segmentation.totalseg import WeightsMissingError

    def progress(position: int, total: int, row: dict) -> None:
        state = "reused" if row.get("reused") else row["status"]
        print(f"[{position}/{total}] {row['study_id']}: {state}", file=sys.stderr, flush=True)

    options = dict(
        backend=backend,
        anatomy_set=args.anatomy_set or section.anatomy_set,
        mode=args.mode or section.mode,
        device=args.device or section.device,
        roi_subset=section.roi_subset if args.roi_subset is None else args.roi_subset,
        roi_subset_robust=section.roi_subset_robust,
        precomputed_dir=str(config.path(args.masks or config.paths.precomputed_masks)),
        salt=config.privacy.salt,
        pseudonym_length=config.privacy.pseudonym_length,
        totalseg_home=str(config.path(section.totalseg_home)) if section.totalseg_home else None,
        qc=section.qc_pictures if args.qc is None else args.qc,
        force=args.force,
    )
    try:
        if run_stage_as_flow(config):
            from flows.stages import fan_out_from_config, segment_flow

            summary = segment_flow(
                input_dir=str(input_dir), output_dir=str(output_dir), **options,
                gpu_concurrency_limit=config.orchestration.gpu_concurrency_limit,
                **fan_out_from_config(config, batch_size=section.batch_size),
            )
        else:
            summary = segment_studies(input_dir, output_dir, progress=progress, **options)
    except WeightsMissingError as error:
        print(f"fvlm segment: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, KeyError, ValueError) as error:
        print(f"fvlm segment: {error}", file=sys.stderr)
        return 2
    print(summary.text())
    return 0 if summary.n_quarantined < len(summary.rows) or not summary.rows else 1
