"""Helpers of the prediction tests (a plain module, imported by test_predict*.py): a tiny NIfTI study
with its TotalSegmentator mask, and the check of a payload against the versioned JSON schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_study(folder: Path, with_heart: bool = True) -> tuple[Path, Path]:
    """A 96 x 96 x 40 (x, y, z) RAS HU volume at 2 x 2 x 4 mm with TotalSegmentator ids for ctrate4."""
    import nibabel as nib

    from core.anatomy_sets import totalseg_name_to_id

    ids = totalseg_name_to_id()
    hu = np.full((96, 96, 40), -1000, dtype=np.int16)
    hu[8:88, 8:88, :] = 0  # body
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[12:44, 20:76, 8:32] = ids["lung_upper_lobe_right"]
    mask[52:84, 20:76, 8:32] = ids["lung_upper_lobe_left"]
    hu[mask > 0] = -850
    if with_heart:
        mask[40:64, 50:74, 10:22] = ids["heart"]
    mask[46:50, 30:34, 4:36] = ids["esophagus"]
    mask[50:56, 36:42, 4:36] = ids["aorta"]
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "seg.nii.gz")
    return folder / "ct.nii.gz", folder / "seg.nii.gz"


def validate_prediction(payload: dict[str, Any]) -> None:
    """The payload against the versioned JSON schema of docs/predict.md (jsonschema)."""
    import jsonschema

    from training.inference.predict import PREDICTION_SCHEMA_FILE

    schema = json.loads(PREDICTION_SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(json.loads(json.dumps(payload)), schema, cls=jsonschema.Draft202012Validator)


def predict(
    config: Any,
    model_ref: str | Path,
    input_path: str | Path,
    *,
    work_dir: Path,
    mask_path: str | Path | None = None,
    thresholds_path: str | Path | None = None,
) -> dict[str, Any]:
    """``fvlm predict`` as the command runs it: the job of ``config`` -> ``run_predict``."""
    from training.inference.predict import PredictJob, run_predict

    job = PredictJob.from_config(
        config, model=model_ref, input_path=input_path, mask=mask_path, thresholds=thresholds_path
    )
    return run_predict(job, work_dir)
