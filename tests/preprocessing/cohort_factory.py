"""Small synthetic stage outputs (convert / segment / parse-reports contracts) for shard tests.

Builds CONVERTED/{studies.parquet, volumes/*.nii.gz}, SEGMENTED/masks/*.nii.gz (TotalSegmentator ids,
on the volume grid) and REPORTS.parquet + REPORTS.studies.parquet with nibabel and pyarrow.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.anatomy_sets import CTRATE_LABELS

ANATOMIES = ("lung", "heart", "esophagus", "aorta")
# one TotalSegmentator `total` id per anatomy (+ a class outside the set: liver = 5)
TOTALSEG_IDS = {
    "lung_upper_lobe_left": 10,
    "lung_lower_lobe_right": 14,
    "heart": 51,
    "esophagus": 15,
    "aorta": 52,
    "liver": 5,
}


@dataclass(frozen=True)
class Cohort:
    converted: Path
    segmented: Path
    reports: Path
    study_ids: tuple[str, ...]
    patient_of: dict[str, str]


def phantom(shape_xyz: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(x, y, z) int16 HU volume and TotalSegmentator-id mask of a crude chest."""
    nx, ny, nz = shape_xyz
    hu = np.full(shape_xyz, -1000, dtype=np.int16)
    ids = np.zeros(shape_xyz, dtype=np.uint8)
    hu[2 : nx - 2, 2 : ny - 2, :] = 40
    jitter = int(rng.integers(0, 3))
    z0, z1 = 2 + jitter, nz - 3
    ids[3 : nx // 2 - 1, 4 : ny - 4, z0:z1] = TOTALSEG_IDS["lung_upper_lobe_left"]
    ids[nx // 2 + 1 : nx - 3, 4 : ny - 4, z0:z1] = TOTALSEG_IDS["lung_lower_lobe_right"]
    hu[ids > 0] = -850
    ids[nx // 2 - 3 : nx // 2 + 3, ny // 2 - 4 : ny // 2 + 2, z0 + 2 : z1 - 3] = TOTALSEG_IDS["heart"]
    ids[nx // 2 - 1 : nx // 2 + 1, ny - 6 : ny - 4, z0:z1] = TOTALSEG_IDS["esophagus"]
    ids[nx // 2 + 2 : nx // 2 + 4, ny - 8 : ny - 6, z0 + 1 : z1] = TOTALSEG_IDS["aorta"]
    ids[4:10, 4:10, 0:2] = TOTALSEG_IDS["liver"]
    hu[ids == TOTALSEG_IDS["heart"]] = 45
    hu[ids == TOTALSEG_IDS["aorta"]] = 200
    hu += rng.integers(-20, 20, size=shape_xyz, dtype=np.int16)
    return hu, ids


def make_cohort(
    root: Path,
    n_studies: int = 6,
    *,
    studies_per_patient: int = 2,
    shape_xyz: tuple[int, int, int] = (40, 36, 16),
    spacing_xyz: tuple[float, float, float] = (2.0, 2.0, 5.0),
    missing_mask: Collection[int] = (),
    missing_report: Collection[int] = (),
    corrupt_volume: Collection[int] = (),
    upstream_quarantined: int = 0,
    seed: int = 0,
    start: int = 0,
) -> Cohort:
    """``n_studies`` studies named st_<index>; indices listed in missing_* lack that input."""
    rng = np.random.default_rng(seed + start)
    converted, segmented, reports_dir = root / "converted", root / "segmented", root / "reports"
    for folder in (converted / "volumes", segmented / "masks", reports_dir):
        folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = (-40.0, -30.0, -100.0)
    study_rows, long_rows, report_rows = [], [], []
    study_ids, patient_of = [], {}
    for index in range(start, start + n_studies):
        study_id = f"st_{index:05d}"
        patient_id = f"pa_{index // studies_per_patient:05d}"
        study_ids.append(study_id)
        patient_of[study_id] = patient_id
        hu, ids = phantom(shape_xyz, rng)
        if index in corrupt_volume:
            (converted / "volumes" / f"{study_id}.nii.gz").write_bytes(b"not a nifti file")
        else:
            nib.save(nib.Nifti1Image(hu, affine), converted / "volumes" / f"{study_id}.nii.gz")
        if index not in missing_mask:
            nib.save(nib.Nifti1Image(ids, affine), segmented / "masks" / f"{study_id}.nii.gz")
        study_rows.append(
            {"study_id": study_id, "patient_id": patient_id, "status": "ok", "reason": "", "source_hash": f"src{index}"}
        )
        if index in missing_report:
            continue
        abnormal = [bool((index + k) % 3 == 0) for k in range(len(ANATOMIES))]
        for k, anatomy in enumerate(ANATOMIES):
            text = f"{anatomy} finding {index}." if abnormal[k] else (f"{anatomy} normal." if k < 3 else "")
            long_rows.append({"study_id": study_id, "anatomy": anatomy, "text": text, "abnormal": abnormal[k]})
        long_rows.append({"study_id": study_id, "anatomy": "other", "text": "Other.", "abnormal": False})
        report = {"study_id": study_id, "status": "ok", "reason": "", "report_text": f"Report {index}."}
        for position, label in enumerate(CTRATE_LABELS):
            report[label] = -1 if position == 0 and index % 2 else int((index + position) % 4 == 0)
        report_rows.append(report)
    for extra in range(upstream_quarantined):
        study_rows.append(
            {
                "study_id": f"st_q{extra}",
                "patient_id": "pa_q",
                "status": "quarantined",
                "reason": "no CT series",
                "source_hash": "",
            }
        )
    pq.write_table(pa.Table.from_pylist(study_rows), converted / "studies.parquet")
    long_table = pa.Table.from_pylist(
        long_rows,
        schema=pa.schema(
            [("study_id", pa.string()), ("anatomy", pa.string()), ("text", pa.string()), ("abnormal", pa.bool_())]
        ),
    )
    pq.write_table(long_table, reports_dir / "reports.parquet")
    label_fields = [(label, pa.int8()) for label in CTRATE_LABELS]
    studies_schema = pa.schema(
        [
            ("study_id", pa.string()),
            ("status", pa.string()),
            ("reason", pa.string()),
            ("report_text", pa.string()),
            *label_fields,
        ]
    )
    pq.write_table(pa.Table.from_pylist(report_rows, schema=studies_schema), reports_dir / "reports.studies.parquet")
    return Cohort(converted, segmented, reports_dir / "reports.parquet", tuple(study_ids), patient_of)
