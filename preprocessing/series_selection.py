"""Choose the one series per study that becomes the volume, with a recorded policy.

Eligibility (each exclusion is recorded with its reason):

* modality CT and SOP class CT Image Storage or Enhanced CT Image Storage (secondary captures,
  dose reports / SR, presentation states ... are out);
* ImageType not LOCALIZER / SCOUT / SURVIEW, not DERIVED\\SECONDARY (screen captures, MIPs);
* axial: the slice normal within 45 degrees of the patient's head-foot axis (tilted gantry is
  still axial; sagittal / coronal reformats are out);
* at least ``min_slices`` slices, single-sample (grey) pixels.

Among eligible series the ``series_preference`` keys are applied in order (``original``
first is implicit: ORIGINAL beats DERIVED\\PRIMARY):

``thinnest``            smallest slice spacing (from positions; SliceThickness as fallback)
``soft_tissue_kernel``  soft-tissue / standard kernel before lung / bone / sharp kernels
``most_slices``         more slices first
``largest_coverage``    longest extent along the slice normal
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from preprocessing.dicom_discovery import SeriesFiles, SliceHeader, orientation_problem

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ACCEPTED_SOP_CLASSES = {CT_IMAGE_STORAGE, ENHANCED_CT_IMAGE_STORAGE}
EXCLUDED_IMAGE_TYPES = {"LOCALIZER", "SCOUT", "SURVIEW", "TOPOGRAM", "REF_SURVIEW", "DOSE_INFO", "SCREEN SAVE"}
KNOWN_PREFERENCES = ("thinnest", "soft_tissue_kernel", "most_slices", "largest_coverage")
AXIAL_MIN_COS = math.cos(math.radians(45.0))

_SOFT_KERNEL = re.compile(
    r"^(B[0-9]?[1-4][0-9]|BR[1-4][0-9]|I[1-4][0-9]|Q[1-4][0-9]|STANDARD|STND|SOFT|BODY|FC0?[0-9]|FC1[0-9]|A|B|C|UB)F?",
    re.IGNORECASE,
)
_SHARP_KERNEL = re.compile(
    r"(LUNG|BONE|SHARP|DETAIL|EDGE|B[5-9][0-9]|BR[5-9][0-9]|BL[5-9][0-9]|I[5-9][0-9]|FC5[0-9]|YC|YD)", re.IGNORECASE
)


@dataclass(frozen=True)
class SeriesSummary:
    series_uid: str
    description: str
    series_number: int | None
    kernel: str
    n_slices: int
    spacing_mm: float | None
    coverage_mm: float
    original: bool
    kernel_class: str  # soft | sharp | unknown
    excluded: str | None  # reason, or None when eligible


def slice_normal(orientation: tuple[float, ...]) -> tuple[float, float, float]:
    r = orientation[:3]
    c = orientation[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n)) or 1.0
    return (n[0] / norm, n[1] / norm, n[2] / norm)


def kernel_class(kernel: str) -> str:
    name = kernel.split("\\")[0].strip()
    if not name:
        return "unknown"
    if _SHARP_KERNEL.search(name):
        return "sharp"
    if _SOFT_KERNEL.match(name):
        return "soft"
    return "unknown"


def _positions_along_normal(slices: list[SliceHeader]) -> list[float]:
    with_geometry = [s for s in slices if s.position_mm and s.orientation]
    if not with_geometry:
        return []
    normal = slice_normal(with_geometry[0].orientation)  # type: ignore[arg-type]
    return sorted(sum(p * n for p, n in zip(s.position_mm, normal, strict=False)) for s in with_geometry)  # type: ignore[arg-type]


def summarize(series: SeriesFiles, *, min_slices: int) -> SeriesSummary:
    slices = series.slices
    first = slices[0]
    positions = _positions_along_normal(slices)
    steps = [b - a for a, b in zip(positions, positions[1:], strict=False) if b - a > 1e-3]
    spacing = sorted(steps)[len(steps) // 2] if steps else first.slice_thickness_mm
    coverage = positions[-1] - positions[0] if positions else 0.0
    image_type = set(first.image_type)
    original = bool(first.image_type) and first.image_type[0] == "ORIGINAL"
    excluded: str | None = None
    if first.modality != "CT":
        excluded = f"modality {first.modality or 'missing'} (not CT)"
    elif first.sop_class_uid not in ACCEPTED_SOP_CLASSES:
        excluded = (
            f"SOP class {first.sop_class_uid or 'missing'} is not a CT image (secondary capture / dose report / other)"
        )
    elif image_type & EXCLUDED_IMAGE_TYPES:
        excluded = f"localizer/scout image type ({'/'.join(sorted(image_type & EXCLUDED_IMAGE_TYPES))})"
    elif len(first.image_type) > 1 and first.image_type[0] == "DERIVED" and first.image_type[1] == "SECONDARY":
        excluded = "derived secondary images (DERIVED\\SECONDARY)"
    elif first.samples_per_pixel != 1:
        excluded = f"{first.samples_per_pixel} samples per pixel (colour image, not a CT volume)"
    elif any(s.defect for s in slices):
        bad = next(s for s in slices if s.defect)
        excluded = f"{bad.relative_path}: {bad.defect}"
    elif first.orientation is None or first.position_mm is None:
        excluded = "no ImageOrientationPatient / ImagePositionPatient (geometry unknown)"
    elif orientation_problem(first.orientation):
        excluded = f"{first.relative_path}: {orientation_problem(first.orientation)}"
    elif abs(slice_normal(first.orientation)[2]) < AXIAL_MIN_COS:
        excluded = "not axial (slice normal more than 45 degrees from the head-foot axis)"
    elif len(slices) < min_slices:
        excluded = f"{len(slices)} slice(s), fewer than convert.min_slices={min_slices} (params.yaml)"
    return SeriesSummary(
        series_uid=series.series_uid,
        description=series.description,
        series_number=series.series_number,
        kernel=series.convolution_kernel,
        n_slices=len(slices),
        spacing_mm=spacing,
        coverage_mm=coverage,
        original=original,
        kernel_class=kernel_class(series.convolution_kernel),
        excluded=excluded,
    )


def _sort_key(summary: SeriesSummary, preference: list[str]) -> tuple:
    key: list[float] = [0.0 if summary.original else 1.0]
    for item in preference:
        if item == "thinnest":
            key.append(summary.spacing_mm if summary.spacing_mm else math.inf)
        elif item == "soft_tissue_kernel":
            key.append({"soft": 0.0, "unknown": 1.0, "sharp": 2.0}[summary.kernel_class])
        elif item == "most_slices":
            key.append(-float(summary.n_slices))
        elif item == "largest_coverage":
            key.append(-summary.coverage_mm)
    key.append(float(summary.series_number) if summary.series_number is not None else math.inf)
    return (*key, summary.series_uid)


@dataclass(frozen=True)
class Selection:
    chosen: SeriesSummary | None
    candidates: list[SeriesSummary]  # every series of the study, chosen first, then by rank
    policy: str

    @property
    def reason(self) -> str:
        """Why nothing was chosen (empty when a series was chosen)."""
        if self.chosen is not None:
            return ""
        if not self.candidates:
            return "no image series in study"
        reasons = "; ".join(
            f"series {c.series_number if c.series_number is not None else '?'}: {c.excluded}" for c in self.candidates
        )
        return f"no eligible axial CT series ({reasons})"


def select_series(series: list[SeriesFiles], *, preference: list[str], min_slices: int) -> Selection:
    """Rank the study's series by the policy; ``chosen`` is None when none is eligible."""
    unknown = [p for p in preference if p not in KNOWN_PREFERENCES]
    if unknown:
        raise ValueError(f"unknown series_preference {unknown}; known: {', '.join(KNOWN_PREFERENCES)}")
    summaries = [summarize(s, min_slices=min_slices) for s in series if s.slices]
    eligible = sorted((s for s in summaries if s.excluded is None), key=lambda s: _sort_key(s, preference))
    rejected = sorted(
        (s for s in summaries if s.excluded is not None), key=lambda s: (s.series_number or 0, s.series_uid)
    )
    policy = "original_first," + ",".join(preference) + f";min_slices={min_slices}"
    return Selection(chosen=eligible[0] if eligible else None, candidates=eligible + rejected, policy=policy)
