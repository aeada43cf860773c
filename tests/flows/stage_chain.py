"""convert -> segment -> parse-reports -> shard through the stage flows (tests; also run as a child process)."""

from __future__ import annotations

import sys
from pathlib import Path

SALT = "test-salt"
DEMO_GRID = {"spacing_zyx_mm": [8.0, 4.0, 4.0], "crop_zyx": [32, 64, 96], "roi_margin_slices": 1,
             "roi_margin_voxels": 4}


def run_chain(cohort: Path, work: Path) -> str:
    """All four data stages on ``cohort`` into ``work``; returns the shards' content hash."""
    from flows.stages import convert_flow, parse_reports_flow, segment_flow, shard_flow

    convert_flow(str(cohort / "dicom"), str(work / "converted"), salt=SALT, batch_size=1, retry_delay_s=0)
    segment_flow(str(work / "converted"), str(work / "segmented"), precomputed_dir=str(cohort / "masks"), salt=SALT,
                 batch_size=1, retry_delay_s=0)
    parse_reports_flow(str(cohort / "reports.csv"), str(work / "reports" / "reports.parquet"), {"salt": SALT},
                       retry_delay_s=0)
    summary = shard_flow(str(work / "converted"), str(work / "segmented"), str(work / "reports" / "reports.parquet"),
                         str(work / "shards"), grid=DEMO_GRID, split={"train": 0.34, "val": 0.33, "test": 0.33},
                         workers=1)
    return summary.content_hash


if __name__ == "__main__":
    from core.env import apply_offline_env

    apply_offline_env()
    print(run_chain(Path(sys.argv[1]), Path(sys.argv[2])))
