"""convert -> segment -> parse-reports -> shard through the stage flows (tests; also run as a child process)."""

from __future__ import annotations

import sys
from pathlib import Path

SALT = "test-salt"
DEMO_GRID = {
    "spacing_zyx_mm": [8.0, 4.0, 4.0],
    "crop_zyx": [32, 64, 96],
    "roi_margin_slices": 1,
    "roi_margin_voxels": 4,
}


def fan_out(**overrides: object):
    """The default orchestration fan-out with ``overrides`` (tests: no retry delay)."""
    from flows.batching import FanOut

    return FanOut.from_config(**{"retry_delay_s": 0, **overrides})


def convert_job(dicom: Path, out: Path, salt: str = SALT):
    from preprocessing.convert import ConvertJob, ConvertSettings

    return ConvertJob(input_dir=Path(dicom), output_dir=Path(out), settings=ConvertSettings(salt=salt))


def segment_job(converted: Path, out: Path, masks: Path, **options: object):
    from segmentation.stage import SegmentJob

    return SegmentJob(inputs=Path(converted), output_dir=Path(out), precomputed_dir=Path(masks), salt=SALT, **options)


def parse_job(reports_csv: Path, out: Path, **options: object):
    from report_parsing.tables import ParseOptions, ParseReportsJob

    return ParseReportsJob(Path(reports_csv), Path(out), ParseOptions(**{"salt": SALT, **options}))


def shard_job(converted: Path, segmented: Path, reports: Path, out: Path):
    from core.config import GridConfig, SplitConfig
    from preprocessing.shards import ShardJob

    return ShardJob(
        Path(converted),
        Path(segmented),
        Path(reports),
        Path(out),
        grid=GridConfig(**DEMO_GRID),
        split=SplitConfig(train=0.34, val=0.33, test=0.33),
        workers=1,
    )


def run_chain(cohort: Path, work: Path) -> str:
    """All four data stages on ``cohort`` into ``work``; returns the shards' content hash."""
    from flows.stages import convert_flow, parse_reports_flow, segment_flow, shard_flow

    convert_flow(convert_job(cohort / "dicom", work / "converted"), fan_out(batch_size=1))
    segment_flow(segment_job(work / "converted", work / "segmented", cohort / "masks"), fan_out(batch_size=1))
    parse_reports_flow(parse_job(cohort / "reports.csv", work / "reports" / "reports.parquet"), fan_out())
    summary = shard_flow(
        shard_job(work / "converted", work / "segmented", work / "reports" / "reports.parquet", work / "shards")
    )
    return summary.content_hash


if __name__ == "__main__":
    from core.env import apply_offline_env

    apply_offline_env()
    print(run_chain(Path(sys.argv[1]), Path(sys.argv[2])))
