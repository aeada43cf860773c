"""``run_convert`` on a folder with keyword settings (the tests' shorthand for a ConvertJob)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from preprocessing.convert import ConvertJob, ConvertSettings, ConvertSummary, run_convert

_JOB_FIELDS = {f.name for f in dataclasses.fields(ConvertJob)} - {"input_dir", "output_dir", "settings"}


def convert_dir(input_dir: Path, output_dir: Path, **kwargs: Any) -> ConvertSummary:
    """``kwargs``: ConvertJob fields (workers, decode_threads, input_format, metadata_csv) and
    ConvertSettings fields (salt, strict, min_slices, output_extension, ...)."""
    job_fields = {k: kwargs.pop(k) for k in list(kwargs) if k in _JOB_FIELDS}
    if "series_preference" in kwargs:
        kwargs["series_preference"] = tuple(kwargs["series_preference"])
    job = ConvertJob(
        input_dir=Path(input_dir), output_dir=Path(output_dir), settings=ConvertSettings(**kwargs), **job_fields
    )
    return run_convert(job)
