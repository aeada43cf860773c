"""One synthetic chest CT in memory: HU volume, TotalSegmentator label map, lesions, labels.

Arrays handed out are **RAS (z, y, x)**, exactly what ``fvlm convert`` produces after transposing its
RAS-canonical NIfTI: axis 0 runs inferior -> superior, axis 1 posterior -> anterior, axis 2 patient
left -> right. ``affine_ras`` is the affine of ``hu_zyx.transpose(2, 1, 0)`` (the NIfTI (x, y, z) array).
Study ``index`` of a cohort depends only on ``(seed, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from synthetic.anatomy import AnatomyFindings, build_anatomy
from synthetic.canvas import Canvas
from synthetic.difficulty import DEFAULT_DIFFICULTY
from synthetic.geometry import Grid, random_pose
from synthetic.lesions import anatomy_findings, draw_lesions, sample_labels
from synthetic.patients import patient_index

SizeName = Literal["demo", "small", "real"]


@dataclass(frozen=True)
class SizeSpec:
    matrix: int  # rows = columns of the axial images
    thin_mm: float  # slice thickness = spacing of the thin series
    thick_factor: int  # the second reconstruction averages this many thin slices


SIZES: dict[str, SizeSpec] = {
    "demo": SizeSpec(128, 5.0, 2),
    "small": SizeSpec(256, 2.5, 2),
    "real": SizeSpec(512, 1.25, 4),
}

STREAMS = ("plan", "anatomy", "labels", "lesions", "noise", "dicom", "report")


def study_rngs(seed: int, index: int) -> dict[str, np.random.Generator]:
    """Independent random streams of one study; they depend only on (seed, index)."""
    children = np.random.SeedSequence([int(seed), int(index), 0xF1A7]).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children, strict=False)}


@dataclass
class Phantom:
    index: int
    seed: int
    size: str
    hu_zyx: np.ndarray  # int16 HU, RAS (z, y, x)
    labels_zyx: np.ndarray  # uint8 TotalSegmentator `total` ids, same grid
    spacing_zyx: tuple[float, float, float]
    affine_ras: np.ndarray  # 4x4 affine of the (x, y, z) = transpose(2, 1, 0) array
    grid: Grid  # native DICOM-order grid (for the DICOM writer)
    labels: dict[str, int]  # the 18 CT-RATE labels
    lesions: list[dict[str, Any]]
    abdomen: bool
    plan: dict[str, Any] = field(default_factory=dict)

    def native_hu(self) -> np.ndarray:
        """HU in DICOM storage order (slice inferior->superior, row anterior->posterior, column right->left)."""
        return self.hu_zyx[:, ::-1, ::-1]

    @property
    def is_normal(self) -> bool:
        return not any(self.labels.values())


def patient_scale(seed: int, patient: int) -> tuple[float, float, float]:
    """Body size (left-right, antero-posterior, cranio-caudal scale) of a patient: the same in follow-ups."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(patient), 0xB0D1]))
    return (float(rng.uniform(0.86, 1.1)), float(rng.uniform(0.86, 1.12)), float(rng.uniform(0.93, 1.07)))


def _plan(
    rng: np.random.Generator, spec: SizeSpec, abdomen_fraction: float, scale: tuple[float, float, float]
) -> dict[str, Any]:
    abdomen = bool(rng.random() < abdomen_fraction)
    rng.uniform(size=3)  # keeps the stream layout stable
    body_width = 2 * 165.0 * scale[0]
    fov = float(max(rng.uniform(360.0, 420.0), body_width + 40.0))
    pixel = round(fov / spec.matrix, 4)
    spare = max((spec.matrix * pixel - body_width) / 2 - 12.0, 0.0)
    center_x = float(rng.uniform(-1, 1) * min(spare, 25.0))
    center_y = float(rng.uniform(-25.0, 25.0))
    w_top = 45.0 + float(rng.uniform(-5, 12))
    w_bottom = (-420.0 if abdomen else -305.0) + float(rng.uniform(-12, 12))
    return {
        "abdomen": abdomen,
        "scale": scale,
        "fov_mm": round(spec.matrix * pixel, 3),
        "pixel_mm": pixel,
        "center_lps": (center_x, center_y),
        "table_z_mm": float(rng.uniform(-160.0, -60.0)),
        "w_top": w_top,
        "w_bottom": w_bottom,
        "noise_hu": float(rng.uniform(10.0, 20.0)),
        "rotation_max_deg": 4.0,
    }


def make_phantom(
    seed: int,
    index: int,
    size: SizeName = "demo",
    *,
    abdomen_fraction: float = 0.3,
    labels: dict[str, int] | None = None,
    draw: bool = True,
    difficulty: str = DEFAULT_DIFFICULTY,
) -> Phantom:
    """Build study ``index`` of cohort ``seed`` in memory (no files).

    ``labels`` overrides the sampled findings (e.g. ``{"Lung nodule": 1}``, others 0) - for tests and
    benchmarks; ``draw=False`` skips lesion drawing (the normal anatomy of the same patient);
    ``difficulty`` (``learnable`` / ``paper``) sets lesion sizes, contrast and label prevalence
    (``synthetic.difficulty``).
    """
    from scipy import ndimage

    from core.anatomy_sets import CTRATE_LABELS

    spec = SIZES[size]
    rngs = study_rngs(seed, index)
    plan = _plan(rngs["plan"], spec, abdomen_fraction, patient_scale(seed, patient_index(seed, index)))
    sampled = sample_labels(rngs["labels"], difficulty)
    if labels is not None:
        sampled = {name: int(bool(labels.get(name, 0))) for name in CTRATE_LABELS}
    findings = anatomy_findings(sampled, rngs["labels"], difficulty) if draw else AnatomyFindings()

    scale = plan["scale"]
    center_x, center_y = plan["center_lps"]
    translation = (center_x, center_y - 5.0 * scale[1], plan["table_z_mm"])
    pose = random_pose(rngs["plan"], scale, translation, plan["rotation_max_deg"])
    pixel = plan["pixel_mm"]
    z_top = translation[2] + plan["w_top"] * scale[2]
    z_bottom = translation[2] + plan["w_bottom"] * scale[2]
    slices = int(np.floor((z_top - z_bottom) / spec.thin_mm)) + 1
    slices -= slices % spec.thick_factor  # whole thick slabs
    half = (spec.matrix - 1) / 2 * pixel
    grid = Grid(
        (slices, spec.matrix, spec.matrix),
        (spec.thin_mm, pixel, pixel),
        (round(-half, 4), round(-half, 4), round(z_bottom, 3)),
    )
    canvas = Canvas(grid, pose)
    table_y = center_y + (5.0 + 128.0) * scale[1] + 2.0
    anatomy = build_anatomy(
        canvas,
        rngs["anatomy"],
        abdomen=plan["abdomen"],
        w_top=plan["w_top"],
        w_bottom=plan["w_bottom"],
        table_y_lps=table_y,
        findings=findings,
    )
    lesions = draw_lesions(canvas, anatomy, sampled, findings, rngs["lesions"], difficulty) if draw else []
    final_labels = {name: 0 for name in CTRATE_LABELS}
    if draw:
        for lesion in lesions:
            final_labels[lesion["label"]] = 1
    plan["table_y_mm"] = round(table_y, 2)
    plan["cardiothoracic_ratio"] = round(anatomy.heart_width_mm / anatomy.thorax_width_mm, 3)
    plan["fat_mm"] = round(anatomy.fat_mm, 1)
    plan["vertebrae"] = sorted(anatomy.vertebrae, key=lambda n: -anatomy.vertebrae[n])

    # partial-volume blur (slice profile + in-plane PSF), then quantum noise
    hu = ndimage.gaussian_filter(canvas.hu, sigma=(0.45, 0.6, 0.6), mode="nearest")
    noise = rngs["noise"].standard_normal(hu.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.5, 0.5))
    noise *= np.float32(plan["noise_hu"] / max(float(noise[::4, ::4, ::4].std()), 1e-6))
    hu += noise
    np.clip(hu, -1024, 3071, out=hu)
    native = np.rint(hu).astype(np.int16)
    del hu, noise

    for lesion in lesions:
        kji = _nearest_voxel(canvas, np.asarray(lesion["center_body"], dtype=float))
        lesion["center_lps"] = [round(x, 2) for x in canvas.native_to_lps(kji)]
        k, j, i = kji
        lesion["center_zyx"] = [int(k), int(grid.shape_kji[1] - 1 - j), int(grid.shape_kji[2] - 1 - i)]
        lesion["center_body"] = [round(float(x), 2) for x in lesion["center_body"]]

    return Phantom(
        index=index,
        seed=seed,
        size=size,
        hu_zyx=np.ascontiguousarray(native[:, ::-1, ::-1]),
        labels_zyx=np.ascontiguousarray(canvas.label[:, ::-1, ::-1]),
        spacing_zyx=grid.spacing_kji,
        affine_ras=grid.ras_affine(),
        grid=grid,
        labels=final_labels,
        lesions=lesions,
        abdomen=plan["abdomen"],
        plan=plan,
    )


def _nearest_voxel(canvas: Canvas, body: np.ndarray) -> tuple[int, int, int]:
    """The native voxel whose (deformed) body coordinates are closest to ``body``."""
    k0, j0, i0 = canvas.body_point_to_native(body)
    shape = canvas.grid.shape_kji
    reach = [int(np.ceil((canvas.pose.max_deformation_mm + 3) / s)) + 1 for s in canvas.grid.spacing_kji]
    box = tuple(slice(max(c - r, 0), min(c + r + 1, n)) for c, r, n in zip((k0, j0, i0), reach, shape, strict=False))
    if any(b.stop <= b.start for b in box):
        return (int(np.clip(k0, 0, shape[0] - 1)), int(np.clip(j0, 0, shape[1] - 1)), int(np.clip(i0, 0, shape[2] - 1)))
    u, v, w = canvas.coords(box)
    distance = (u - body[0]) ** 2 + (v - body[1]) ** 2 + (w - body[2]) ** 2
    k, j, i = np.unravel_index(int(np.argmin(distance)), distance.shape)
    return (int(k + box[0].start), int(j + box[1].start), int(i + box[2].start))
