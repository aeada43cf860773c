"""Synthetic CT cohort generator (``fvlm demo-data``): phantom chest CTs, lesions, DICOM, reports, labels.

Library entry points (heavy imports happen inside the functions):

* :func:`generate_cohort` - write a cohort to disk (DICOM, masks, reports.csv, labels.csv, cohort.json,
  phi_planted.json), in parallel over studies;
* :func:`make_phantom` - one study in memory: HU volume and TotalSegmentator label map in RAS (z, y, x),
  spacing, affine, lesions, labels (no files).
"""

from __future__ import annotations

from typing import Any


def generate_cohort(*args: Any, **kwargs: Any):  # -> CohortSummary
    from synthetic.cohort import generate_cohort as _generate

    return _generate(*args, **kwargs)


def make_phantom(*args: Any, **kwargs: Any):  # -> Phantom
    from synthetic.phantom import make_phantom as _make

    return _make(*args, **kwargs)


__all__ = ["generate_cohort", "make_phantom"]
