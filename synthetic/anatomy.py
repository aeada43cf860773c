"""Normal chest (and upper abdomen) anatomy painted onto a :class:`Canvas` in the body frame.

Every structure carries TotalSegmentator's ``total`` class id (``core.anatomy_sets``); HU values
are non-contrast CT values. Geometry is built from smooth shapes (superellipse prisms, ellipsoids,
tubes along Catmull-Rom centre lines); the pose adds scale, rotation and a smooth deformation.
Anatomy-changing findings (cardiomegaly, pericardial effusion, hiatal hernia) are parameters here;
other lesions are drawn afterwards by :mod:`.lesions` using the returned :class:`Anatomy`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from synthetic.canvas import Canvas
from synthetic.geometry import (
    abs_pow,
    capsule,
    catmull_rom,
    ellipsoid,
    slice_profile,
    superellipse_section,
)

# HU of tissues (non-contrast)
HU_AIR = -1000.0
HU_FAT = -95.0
HU_MUSCLE = 45.0
HU_BLOOD = 40.0
HU_LIVER = 58.0
HU_SPLEEN = 48.0
HU_KIDNEY = 32.0
HU_CORTICAL = 700.0
HU_CANCELLOUS = 230.0
HU_CARTILAGE = 110.0
HU_FLUID = 12.0
HU_LUNG = -860.0

SIDES = {"right": -1.0, "left": 1.0}  # sign of u (u = patient left)
LOBES = {
    "right": ("lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right"),
    "left": ("lung_upper_lobe_left", "lung_lower_lobe_left"),
}
BODY_EXPONENT = 2.5
CAVITY_CENTER_V = 8.0


@functools.lru_cache(maxsize=1)
def class_ids() -> dict[str, int]:
    from core.anatomy_sets import totalseg_name_to_id

    return dict(totalseg_name_to_id())


def lung_label_ids() -> tuple[int, ...]:
    ids = class_ids()
    return tuple(ids[name] for side in LOBES.values() for name in side)


@dataclass(frozen=True)
class AnatomyFindings:
    """Findings that change the anatomy itself (drawn while the anatomy is built)."""

    cardiomegaly_scale: float = 1.0
    pericardial_effusion_mm: float = 0.0
    hiatal_hernia_mm: float = 0.0


@dataclass
class Anatomy:
    """Body-frame geometry the lesion and report code needs."""

    abdomen: bool
    fat_mm: float
    w_top: float
    w_bottom: float
    fissures: dict[str, float]
    heart_center: np.ndarray
    heart_semi: np.ndarray
    heart_axes: np.ndarray
    coronary_paths: dict[str, np.ndarray]
    aorta_path: np.ndarray
    aorta_radii: np.ndarray
    esophagus_path: np.ndarray
    carina: np.ndarray
    hila: dict[str, np.ndarray]
    airway_segments: list[dict[str, object]] = field(default_factory=list)
    vertebrae: dict[str, float] = field(default_factory=dict)  # name -> centre w
    heart_width_mm: float = 0.0
    thorax_width_mm: float = 0.0
    cavity_half: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
    diaphragm: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None

    def lung_distance(self, side: str) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
        return functools.partial(_lung_distance, self, SIDES[side])

    def lobe_of(self, side: str, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        """TotalSegmentator id of the lobe at body points (only meaningful inside the lung)."""
        ids = class_ids()
        f = self.fissures
        if side == "right":
            lower = w < f["right_oblique"] - (90.0 - v) * f["right_slope"]
            upper = w > f["right_horizontal"] + 0.15 * v
            return np.where(
                lower,
                ids["lung_lower_lobe_right"],
                np.where(upper, ids["lung_upper_lobe_right"], ids["lung_middle_lobe_right"]),
            ).astype(np.uint8)
        lower = w < f["left_oblique"] - (90.0 - v) * f["left_slope"]
        return np.where(lower, ids["lung_lower_lobe_left"], ids["lung_upper_lobe_left"]).astype(np.uint8)


# ------------------------------------------------------------------------------------------- textures


def smooth_field(rng: np.random.Generator, amplitude: float, wavelength: tuple[float, float], modes: int = 4):
    """A smooth random texture: sum of random plane waves, (u, v, w) -> HU offset."""
    directions = rng.normal(size=(modes, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * (2 * np.pi / rng.uniform(*wavelength, size=modes))[:, None]
    phase = rng.uniform(0, 2 * np.pi, size=modes)
    weight = np.float32(amplitude / np.sqrt(modes / 2))

    def texture(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        out = np.zeros(np.broadcast_shapes(u.shape, v.shape, w.shape), dtype=np.float32)
        for index in range(modes):
            out += np.sin(
                u * np.float32(k[index, 0])
                + v * np.float32(k[index, 1])
                + w * np.float32(k[index, 2])
                + np.float32(phase[index])
            )
        return out * weight

    return texture


# --------------------------------------------------------------------------------------- body outline


def _body_half(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.interp(w, [-520, -300, -200, 60], [150, 158, 165, 165]).astype(np.float32)
    b = np.interp(w, [-520, -300, -200, 60], [122, 120, 120, 112]).astype(np.float32)
    return a, b


def _lung_distance(anatomy: Anatomy, sign: float, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    a, b = anatomy.cavity_half(slice_profile(w))
    q = abs_pow(u / a, BODY_EXPONENT) + abs_pow((v - CAVITY_CENTER_V) / b, BODY_EXPONENT)
    cavity = (q - 1.0) * (np.minimum(a, b) / np.float32(BODY_EXPONENT))
    medial = np.float32(8.0) - np.float32(sign) * u  # mediastinal organs are painted over the lungs later
    floor = anatomy.diaphragm(u, v) - w
    apex = ((u - np.float32(sign * 62.0)) / 72.0) ** 2 + ((v - 18.0) / 70.0) ** 2 + ((w + 20.0) / 62.0) ** 2
    apex_sd = np.where(w > -20.0, (np.sqrt(apex) - 1.0) * 62.0, -1e3)
    return np.maximum(np.maximum(cavity, medial), np.maximum(floor, apex_sd)).astype(np.float32)


# geometry of the mediastinal structures: catmull-rom control points (u, v, w) in mm, radii in mm
PULMONARY_TRUNK = [(10, -42, -135), (14, -24, -100), (4, -2, -92)]
PULMONARY_ARTERY_TARGETS = ((-44, 10, -100), (44, 12, -96))  # right, left hilum
HEART_APEX_DIRECTION = (0.72, -0.45, -0.52)  # long axis, before normalising
HEART_SEMI_AXES_MM = (62.0, 47.0, 44.0)  # along the long axis, anterior, their cross product
# solid upper-abdominal organs under the diaphragm: (label, center, semi-axes, paint box lo, hi, HU)
SOLID_ORGANS = (
    ("liver", (-48.0, 12.0, -285.0), (100.0, 88.0, 95.0), (-150, -80, -390), (60, 105, -170), HU_LIVER),
    ("spleen", (88.0, 58.0, -282.0), (30.0, 42.0, 50.0), (55, 15, -335), (120, 100, -230), HU_SPLEEN),
)
AORTA_CONTROL = [
    (-2, -18, -158),
    (-14, -28, -115),
    (-10, -22, -76),
    (4, -5, -52),
    (20, 16, -58),
    (26, 32, -88),
    (26, 36, -150),
    (20, 38, -230),
    (12, 40, -300),
    (6, 38, -440),
]
AORTA_RADII_MM = [14, 15.5, 15, 13, 12.5, 12, 12, 11.5, 11, 10]  # at each control point
AORTIC_BRANCHES = (  # (label, control points, radius)
    ("brachiocephalic_trunk", [(-2, -12, -56), (-12, -12, -10), (-20, -10, 60)], 6.5),
    ("common_carotid_artery_left", [(8, -6, -53), (12, -6, 0), (18, -2, 60)], 4.5),
    ("subclavian_artery_left", [(16, 6, -56), (28, 8, 5), (62, 12, 35)], 5.0),
)
SUPERIOR_VENA_CAVA = [(-32, -10, 60), (-32, -12, -80), (-24, -10, -140)]
INFERIOR_VENA_CAVA = [(-22, 4, -198), (-25, 28, -300), (-22, 34, -450)]
TRACHEA_ABOVE_CARINA = [(0, -8, 70), (-1, -4, 0), (0, 6, -40)]
ESOPHAGUS_ABOVE_HIATUS = [(3, 17, 70), (5, 19, -60), (10, 22, -150), (20, 18, -205)]
NORMAL_NODE_STATIONS = ((-16, -4, -32), (15, -2, -45), (0, 30, -88), (-6, -40, -70), (16, -6, -76))


def build_anatomy(
    canvas: Canvas,
    rng: np.random.Generator,
    *,
    abdomen: bool,
    w_top: float,
    w_bottom: float,
    table_y_lps: float,
    findings: AnatomyFindings,
) -> Anatomy:
    ids = class_ids()
    fat_mm = float(np.clip(rng.gamma(6.0, 2.8), 7.0, 35.0))
    wall_mm = 20.0 + fat_mm

    def cavity_half(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, b = _body_half(w)
        return a - np.float32(wall_mm), b - np.float32(wall_mm)

    dome = {"right": -205.0 + rng.uniform(-12, 12), "left": -222.0 + rng.uniform(-12, 12)}

    dome_left, dome_step = np.float32(dome["left"]), np.float32(dome["right"] - dome["left"])

    def diaphragm(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Height w of the diaphragm domes (right higher), lowest in the posterior recesses."""
        lateral = np.abs(u) - np.float32(60.0)
        out = dome_left + dome_step * (u < 0) - np.float32(0.0045) * lateral * lateral
        out -= np.float32(0.003) * v * v * (np.float32(1.0) + np.float32(1.5) * (v > 0))
        return out

    w_lo, w_hi = w_bottom - 30.0, w_top + 30.0
    fissures = {
        "right_oblique": -65.0 + rng.uniform(-10, 10),
        "right_slope": rng.uniform(0.85, 1.15),
        "right_horizontal": -125.0 + rng.uniform(-8, 8),
        "left_oblique": -55.0 + rng.uniform(-10, 10),
        "left_slope": rng.uniform(0.85, 1.15),
    }

    _paint_scanner_table(canvas, table_y_lps)

    body_center = lambda w: (np.float32(0.0), np.float32(5.0))  # noqa: E731
    fat_texture = smooth_field(rng, 8.0, (20.0, 60.0), modes=2)

    def shrink(mm: float):
        def half(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            a, b = _body_half(w)
            return a - np.float32(mm), b - np.float32(mm)

        return half

    lo, hi = (-200.0, -140.0, w_lo), (200.0, 150.0, w_hi)
    canvas.paint(superellipse_section(body_center, _body_half, BODY_EXPONENT, (w_lo, w_hi)), lo, hi, HU_FAT, 0)
    canvas.paint(superellipse_section(body_center, shrink(fat_mm), BODY_EXPONENT, (w_lo, w_hi)), lo, hi, HU_MUSCLE, 0)
    canvas.paint(
        superellipse_section(body_center, shrink(fat_mm + 10.0), BODY_EXPONENT, (w_lo, w_hi)),
        lo,
        hi,
        lambda u, v, w: -90.0 + fat_texture(u, v, w),
        0,
    )

    # --- below the diaphragm: abdominal content and organs --------------------------------------------
    inner = superellipse_section(body_center, shrink(fat_mm + 10.0), BODY_EXPONENT, (w_lo, w_hi))
    bowel_texture = smooth_field(rng, 45.0, (15.0, 40.0), modes=4)
    below_diaphragm = lambda u, v, w: np.maximum(inner(u, v, w), w - (diaphragm(u, v) - 4.0))  # noqa: E731
    canvas.paint(
        lambda u, v, w: np.maximum(inner(u, v, w), w - diaphragm(u, v)), lo, (200.0, 150.0, -150.0), HU_MUSCLE, 0
    )
    canvas.paint(
        below_diaphragm,
        lo,
        (200.0, 150.0, -150.0),
        lambda u, v, w: np.clip(5.0 + bowel_texture(u, v, w), -90.0, 45.0),
        0,
    )
    organ_texture = smooth_field(rng, 4.0, (15.0, 40.0), modes=2)

    def under(shape):
        return lambda u, v, w: np.maximum(shape(u, v, w), below_diaphragm(u, v, w))

    for name, center, semi, box_lo, box_hi, hu in SOLID_ORGANS:
        canvas.paint(
            under(ellipsoid(center, semi)),
            box_lo,
            box_hi,
            lambda u, v, w, hu=hu: hu + organ_texture(u, v, w),
            ids[name],
        )
    stomach_center, stomach_semi = np.array([60.0, -8.0, -272.0]), np.array([45.0, 40.0, 50.0])
    _paint_stomach(canvas, under, stomach_center, stomach_semi, ids["stomach"])
    for side, sign in SIDES.items():
        center = (sign * 68.0, 64.0, -372.0 if side == "left" else -382.0)
        kidney = ellipsoid(center, (27.0, 25.0, 50.0))
        canvas.paint(
            kidney,
            (center[0] - 30, 36, center[2] - 55),
            (center[0] + 30, 92, center[2] + 55),
            HU_KIDNEY,
            ids[f"kidney_{side}"],
            only_labels=(0,),
        )

    # --- lungs -------------------------------------------------------------------------------------------
    anatomy = Anatomy(
        abdomen=abdomen,
        fat_mm=fat_mm,
        w_top=w_top,
        w_bottom=w_bottom,
        fissures=fissures,
        heart_center=np.zeros(3),
        heart_semi=np.zeros(3),
        heart_axes=np.eye(3),
        coronary_paths={},
        aorta_path=np.zeros((0, 3)),
        aorta_radii=np.zeros(0),
        esophagus_path=np.zeros((0, 3)),
        carina=np.array([0.0, 14.0, -68.0]),
        hila={"right": np.array([-48.0, 14.0, -100.0]), "left": np.array([50.0, 16.0, -108.0])},
        cavity_half=cavity_half,
        diaphragm=diaphragm,
    )
    _paint_lungs(canvas, rng, anatomy, w_lo)
    _paint_heart(canvas, rng, anatomy, findings, fat_texture, organ_texture, ids)

    _paint_great_vessels(canvas, rng, anatomy, ids)
    _paint_airways_and_esophagus(canvas, rng, anatomy, findings, ids)
    _paint_pulmonary_vessels(canvas, rng, anatomy)
    _paint_normal_lymph_nodes(canvas, rng)

    # --- spine, ribs, sternum ----------------------------------------------------------------------------
    anatomy.vertebrae = _paint_spine(canvas, rng, w_lo, w_hi, ids)
    _paint_ribs_and_sternum(canvas, anatomy, cavity_half, ids)
    return anatomy


def _paint_scanner_table(canvas: Canvas, table_y_lps: float) -> None:
    """The table: a plate under the patient in the scanner frame, not moved by the pose."""
    grid = canvas.grid
    y_axis = grid.axis_lps(1)
    table_rows = (y_axis >= table_y_lps) & (y_axis < table_y_lps + 14.0)
    if table_rows.any():
        x_axis = grid.axis_lps(2)
        table_cols = np.abs(x_axis) < 230.0
        shell = np.where((y_axis < table_y_lps + 3.0) | (y_axis >= table_y_lps + 11.0), 250.0, -850.0)
        plate = canvas.hu[:, table_rows, :]
        plate[:, :, table_cols] = shell[table_rows][None, :, None]
        canvas.hu[:, table_rows, :] = plate


def _paint_lungs(canvas: Canvas, rng: np.random.Generator, anatomy: Anatomy, w_lo: float) -> None:
    """Both lungs, denser where dependent, labelled by lobe."""
    lung_texture = smooth_field(rng, 14.0, (10.0, 40.0), modes=3)

    def lung_hu(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        gravity = 28.0 * np.clip((v - CAVITY_CENTER_V) / 85.0, -1.0, 1.0)  # dependent lung is denser
        return HU_LUNG + gravity + lung_texture(u, v, w)

    for side, sign in SIDES.items():
        box = canvas.voxel_box((min(0, sign * 160), -100, w_lo), (max(0, sign * 160), 110, 60))
        if box is None:
            continue
        u, v, w = canvas.coords(box)
        inside = anatomy.lung_distance(side)(u, v, w) < 0
        ui, vi, wi = u[inside], v[inside], w[inside]
        canvas.hu[box][inside] = lung_hu(ui, vi, wi)
        canvas.label[box][inside] = anatomy.lobe_of(side, ui, vi, wi)


def _paint_heart(
    canvas: Canvas,
    rng: np.random.Generator,
    anatomy: Anatomy,
    findings: AnatomyFindings,
    fat_texture: Callable[..., np.ndarray],
    organ_texture: Callable[..., np.ndarray],
    ids: dict[str, int],
) -> None:
    """Heart (scaled by cardiomegaly), epicardial fat, pericardial fluid if drawn, left atrial appendage and coronary
    arteries; their geometry and the heart and thorax widths are kept in ``anatomy``."""
    scale = findings.cardiomegaly_scale
    apex_dir = np.array(HEART_APEX_DIRECTION)
    apex_dir /= np.linalg.norm(apex_dir)
    anterior = np.array([0.0, -1.0, 0.0]) - apex_dir * (-apex_dir[1])
    anterior /= np.linalg.norm(anterior)
    axes = np.stack([apex_dir, anterior, np.cross(apex_dir, anterior)], axis=1)  # columns = local axes
    semi = np.array(HEART_SEMI_AXES_MM) * rng.uniform(0.92, 1.08) * np.array([scale, scale, 0.5 + 0.5 * scale])
    center = np.array([12.0 + 22.0 * (scale - 1.0), -24.0 - 6.0 * (scale - 1.0), -172.0 - 15.0 * (scale - 1.0)])
    reach = float(semi.max()) + 30.0
    heart_lo, heart_hi = tuple(center - reach), tuple(center + reach)
    if findings.pericardial_effusion_mm > 0:
        t = findings.pericardial_effusion_mm
        canvas.paint(
            ellipsoid(tuple(center + np.array([0, 3.0, -3.0])), tuple(semi + 5.0 + t), axes),
            heart_lo,
            heart_hi,
            lambda u, v, w: HU_FLUID + 0 * u,
            0,
        )
    canvas.paint(
        ellipsoid(tuple(center), tuple(semi + 5.0), axes),
        heart_lo,
        heart_hi,
        lambda u, v, w: -88.0 + fat_texture(u, v, w),
        0,
    )
    canvas.paint(
        ellipsoid(tuple(center), tuple(semi), axes),
        heart_lo,
        heart_hi,
        lambda u, v, w: HU_BLOOD + organ_texture(u, v, w),
        ids["heart"],
    )
    laa_center = center + axes @ np.array([-0.15 * semi[0], 0.35 * semi[1], 0.9 * semi[2]])
    canvas.paint(
        ellipsoid(tuple(laa_center), (13.0, 9.0, 10.0)),
        tuple(laa_center - 15),
        tuple(laa_center + 15),
        HU_BLOOD,
        ids["atrial_appendage_left"],
    )
    coronary_paths = _coronary_paths(center, semi * 1.045, axes)
    for path in coronary_paths.values():
        canvas.paint_tube(path, 1.6, HU_BLOOD, None, soft=True)
    anatomy.heart_center, anatomy.heart_semi, anatomy.heart_axes = center, semi, axes
    anatomy.coronary_paths = coronary_paths
    extent_u = np.sqrt(((axes * semi[None, :]) ** 2)[0].sum())  # half-width of the ellipsoid along u
    anatomy.heart_width_mm = float(2 * extent_u)
    anatomy.thorax_width_mm = float(2 * anatomy.cavity_half(np.array([center[2]], dtype=np.float32))[0][0])


def _paint_great_vessels(canvas: Canvas, rng: np.random.Generator, anatomy: Anatomy, ids: dict[str, int]) -> None:
    """Pulmonary trunk and arteries, aorta (its path and radii kept in ``anatomy``), arch branches, venae cavae."""
    pa = catmull_rom(PULMONARY_TRUNK, 5)
    canvas.paint_tube(pa, 13.0, HU_BLOOD, 0, only_labels=(0,))
    for target in PULMONARY_ARTERY_TARGETS:
        canvas.paint_tube(
            catmull_rom([(4, -2, -92), (target[0] * 0.5, 4, -96), target], 4), 10.0, HU_BLOOD, 0, only_labels=(0,)
        )
    aorta_path = catmull_rom(AORTA_CONTROL, 5)
    aorta_radii = np.interp(
        np.linspace(0, len(AORTA_RADII_MM) - 1, len(aorta_path)), np.arange(len(AORTA_RADII_MM)), AORTA_RADII_MM
    )
    aorta_radii *= rng.uniform(0.9, 1.12)
    canvas.paint_tube(aorta_path, aorta_radii, HU_BLOOD, ids["aorta"])
    anatomy.aorta_path, anatomy.aorta_radii = aorta_path, aorta_radii
    for name, ctrl, radius in AORTIC_BRANCHES:
        canvas.paint_tube(catmull_rom(ctrl, 4), radius, HU_BLOOD, ids[name])
    canvas.paint_tube(catmull_rom(SUPERIOR_VENA_CAVA, 5), 10.0, HU_BLOOD, ids["superior_vena_cava"])
    canvas.paint_tube(
        catmull_rom(INFERIOR_VENA_CAVA, 5),
        11.0,
        HU_BLOOD,
        ids["inferior_vena_cava"],
        only_labels=(0, ids["liver"]),
    )


def _paint_airways_and_esophagus(
    canvas: Canvas, rng: np.random.Generator, anatomy: Anatomy, findings: AnatomyFindings, ids: dict[str, int]
) -> None:
    """Trachea, main bronchi and the esophagus (its path kept in ``anatomy``), with the hiatal hernia if drawn."""
    trachea = catmull_rom([*TRACHEA_ABOVE_CARINA, anatomy.carina], 5)
    canvas.paint_tube(trachea, 10.5, 25.0, ids["trachea"])
    canvas.paint_tube(trachea, 8.5, HU_AIR, ids["trachea"])
    for side, hilum in anatomy.hila.items():
        main = catmull_rom([anatomy.carina, (anatomy.carina + hilum) / 2 + np.array([0, 0, 4.0]), hilum], 4)
        radius = 7.0 if side == "right" else 6.0
        canvas.paint_tube(main, radius + 1.6, 25.0, None, soft=True)
        canvas.paint_tube(main, radius, HU_AIR, None, soft=True)
    gej = np.array([36.0, 6.0, anatomy.diaphragm(np.array([36.0]), np.array([6.0]))[0] - 22.0])
    esophagus = catmull_rom([*ESOPHAGUS_ABOVE_HIATUS, tuple(gej)], 5)
    canvas.paint_tube(esophagus, 8.0, 35.0, ids["esophagus"])
    if rng.random() < 0.5:
        span = slice(int(rng.integers(0, len(esophagus) // 2)), None)
        canvas.paint_tube(esophagus[span][:6], 2.5, HU_AIR, None, soft=True)
    anatomy.esophagus_path = esophagus
    if findings.hiatal_hernia_mm > 0:
        _paint_hiatal_hernia(canvas, anatomy, findings.hiatal_hernia_mm, ids["stomach"])


def _paint_pulmonary_vessels(canvas: Canvas, rng: np.random.Generator, anatomy: Anatomy) -> None:
    """Branching vessels in both lungs, with their bronchi up to generation 2 (kept in ``anatomy.airway_segments``)."""
    lungs = lung_label_ids()
    for side in SIDES:
        # finer grids resolve smaller vessels: one more branching generation per halving of the pixel
        generations = 4 if canvas.voxel_mm > 2.0 else (5 if canvas.voxel_mm > 1.0 else 6)
        for segment in _vessel_tree(rng, anatomy, side, generations):
            p0, p1, radius, generation = segment["p0"], segment["p1"], segment["radius"], segment["generation"]
            lo_box, hi_box = np.minimum(p0, p1) - radius - 2, np.maximum(p0, p1) + radius + 2
            canvas.paint(
                capsule(p0, p1, radius, radius * 0.85),
                tuple(lo_box),
                tuple(hi_box),
                HU_BLOOD,
                None,
                soft=True,
                only_labels=lungs,
            )
            if generation <= 2:
                offset = segment["offset"]
                b0, b1 = p0 + offset * (radius + 2.5), p1 + offset * (radius + 2.5)
                lumen = radius * 0.85
                canvas.paint(
                    capsule(b0, b1, lumen + 1.2),
                    tuple(lo_box - 5),
                    tuple(hi_box + 5),
                    20.0,
                    None,
                    soft=True,
                    only_labels=lungs,
                )
                canvas.paint(
                    capsule(b0, b1, lumen),
                    tuple(lo_box - 5),
                    tuple(hi_box + 5),
                    HU_AIR,
                    None,
                    soft=True,
                    only_labels=lungs,
                )
                anatomy.airway_segments.append(
                    {
                        "side": side,
                        "p0": b0,
                        "p1": b1,
                        "lumen_mm": lumen,
                        "generation": generation,
                        "lobe": segment["lobe"],
                    }
                )


def _paint_normal_lymph_nodes(canvas: Canvas, rng: np.random.Generator) -> None:
    """Small (normal-sized) mediastinal lymph nodes, each station drawn with chance 0.6."""
    for station in NORMAL_NODE_STATIONS:
        if rng.random() < 0.6:
            node = np.asarray(station, dtype=float) + rng.normal(0, 2.0, 3)
            size = rng.uniform(2.5, 4.5)
            canvas.paint(
                ellipsoid(tuple(node), (size, size * 0.8, size * 1.2)),
                tuple(node - 8),
                tuple(node + 8),
                30.0,
                None,
                only_labels=(0,),
            )


def _paint_stomach(canvas: Canvas, under, center: np.ndarray, semi: np.ndarray, label: int) -> None:
    lo, hi = tuple(center - semi - 5), tuple(center + semi + 5)
    canvas.paint(under(ellipsoid(tuple(center), tuple(semi))), lo, hi, 40.0, label)
    air_level = np.float32(center[2] + 0.45 * semi[2])
    canvas.paint(
        under(ellipsoid(tuple(center), tuple(semi - 3.5))),
        lo,
        hi,
        lambda u, v, w: np.where(w > air_level, HU_AIR, 15.0).astype(np.float32),
        label,
    )


def _paint_hiatal_hernia(canvas: Canvas, anatomy: Anatomy, size_mm: float, label: int) -> None:
    """A part of the stomach pushed above the diaphragm beside the distal esophagus (air + fluid)."""
    base = anatomy.esophagus_path[-6]
    center = np.array([base[0] + 6.0, base[1] + 4.0, base[2] + 0.2 * size_mm])
    semi = np.array([0.5 * size_mm, 0.42 * size_mm, 0.55 * size_mm])
    lo, hi = tuple(center - semi - 4), tuple(center + semi + 4)
    canvas.paint(ellipsoid(tuple(center), tuple(semi)), lo, hi, 40.0, label)
    air_level = np.float32(center[2] + 0.2 * semi[2])
    canvas.paint(
        ellipsoid(tuple(center), tuple(semi - 3.0)),
        lo,
        hi,
        lambda u, v, w: np.where(w > air_level, HU_AIR, 18.0).astype(np.float32),
        label,
    )


def _coronary_paths(center: np.ndarray, semi: np.ndarray, axes: np.ndarray) -> dict[str, np.ndarray]:
    def on_surface(x_frac: np.ndarray, angle: np.ndarray) -> np.ndarray:
        ring = np.sqrt(np.clip(1 - x_frac**2, 0, 1))
        local = np.stack([x_frac * semi[0], ring * semi[1] * np.cos(angle), ring * semi[2] * np.sin(angle)], axis=1)
        return center + local @ axes.T

    t = np.linspace(0, 1, 12)
    return {
        "LAD": on_surface(-0.45 + 1.35 * t, np.full_like(t, 0.25)),
        "RCA": on_surface(np.full_like(t, -0.5), -0.2 - 2.6 * t),
        "LCX": on_surface(np.full_like(t, -0.5), 0.5 + 1.9 * t),
    }


def _vessel_tree(rng: np.random.Generator, anatomy: Anatomy, side: str, generations: int = 4) -> list[dict]:
    sign = SIDES[side]
    inside = anatomy.lung_distance(side)
    starts = [(0.35, -0.05, 0.95), (0.6, -0.75, 0.1), (0.75, 0.1, -0.55), (0.35, 0.7, -0.6), (0.2, -0.35, -0.9)]
    segments: list[dict] = []
    stack = []
    for direction in starts:
        d = np.array([sign * direction[0], direction[1], direction[2]])
        stack.append((anatomy.hila[side].astype(float), d / np.linalg.norm(d), 30.0, 5.0, 0))
    while stack:
        start, direction, length, radius, generation = stack.pop()
        end = start + direction * length
        if inside(*(np.array([x], dtype=np.float32) for x in end))[0] > -1.0:
            end = start + direction * length * 0.5
            if inside(*(np.array([x], dtype=np.float32) for x in end))[0] > -1.0:
                continue
        perpendicular = np.cross(direction, rng.normal(size=3))
        perpendicular /= np.linalg.norm(perpendicular) + 1e-9
        lobe = int(anatomy.lobe_of(side, *(np.array([x], dtype=np.float32) for x in end))[0])
        segments.append(
            {"p0": start, "p1": end, "radius": radius, "generation": generation, "offset": perpendicular, "lobe": lobe}
        )
        if generation >= generations:
            continue
        for turn in (-1.0, 1.0):
            angle = np.deg2rad(rng.uniform(22, 38)) * turn
            child = direction * np.cos(angle) + perpendicular * np.sin(angle) + rng.normal(0, 0.08, 3)
            stack.append(
                (end, child / np.linalg.norm(child), length * rng.uniform(0.72, 0.85), radius * 0.7, generation + 1)
            )
    return segments


def _spine_v(w: np.ndarray | float) -> np.ndarray:
    w = np.asarray(w, dtype=float)
    return 44.0 + 8.0 * np.sin(np.pi * np.clip((28.0 - w) / 300.0, 0, 1)) - 10.0 * np.clip((-250.0 - w) / 150.0, 0, 1)


def _paint_spine(
    canvas: Canvas, rng: np.random.Generator, w_lo: float, w_hi: float, ids: dict[str, int]
) -> dict[str, float]:
    names = [f"vertebrae_T{k}" for k in range(1, 13)] + [f"vertebrae_L{k}" for k in range(1, 6)]
    centers, pitch, w = [], [], 28.0
    for index, name in enumerate(names):
        step = 24.0 if name.startswith("vertebrae_T") else 28.0
        if index:
            w -= (pitch[-1] + step) / 2
        centers.append(w)
        pitch.append(step)
    # paraspinal muscles along the whole range
    for side, sign in SIDES.items():

        def muscle_center(w_: np.ndarray, s=sign):
            return np.float32(s * 31.0), (_spine_v(w_) + 45.0).astype(np.float32)

        canvas.paint(
            superellipse_section(muscle_center, (23.0, 17.0), 2.5, (w_lo, w_hi)),
            (sign * 31 - 30, 55, w_lo),
            (sign * 31 + 30, 120, w_hi),
            HU_MUSCLE,
            ids[f"autochthon_{side}"],
        )
    placed: dict[str, float] = {}
    canal_points = []
    for index, (name, center_w, step) in enumerate(zip(names, centers, pitch, strict=False)):
        if center_w + step < w_lo or center_w - step > w_hi:
            continue
        label = ids[name]
        vc = float(_spine_v(center_w))
        ru, rv = 13.0 + 0.9 * (index + 1), 11.0 + 0.6 * (index + 1)
        disc = 4.0 if name.startswith("vertebrae_T") else 8.0
        half_h = (step - disc) / 2
        lo, hi = (-ru - 40, vc - rv - 5, center_w - step), (ru + 40, vc + rv + 60, center_w + step)
        canvas.paint(
            superellipse_section((0.0, vc), (ru + 1, rv + 1), 2.5, (center_w - step / 2, center_w + step / 2)),
            lo,
            hi,
            80.0,
            0,
        )  # discs (the body paints over its own height)
        canvas.paint(
            superellipse_section((0.0, vc), (ru, rv), 2.5, (center_w - half_h, center_w + half_h)),
            lo,
            hi,
            HU_CORTICAL,
            label,
        )
        canvas.paint(
            superellipse_section(
                (0.0, vc), (ru - 2.2, rv - 2.2), 2.2, (center_w - half_h + 1.8, center_w + half_h - 1.8)
            ),
            lo,
            hi,
            HU_CANCELLOUS + rng.uniform(-40, 40),
            label,
        )
        canal_v = vc + rv + 9.0
        canal_points.append((0.0, canal_v, center_w))
        lumbar = name.startswith("vertebrae_L")
        parts = []
        for sign in (-1.0, 1.0):
            parts.append(((sign * ru * 0.55, vc + rv - 3, center_w), (sign * 10.5, canal_v, center_w), 3.8))
            parts.append(((sign * 10.5, canal_v, center_w), (sign * 5.0, canal_v + 10.0, center_w - 2), 3.2))
            parts.append(
                (
                    (sign * 10.5, canal_v, center_w + 2),
                    (sign * (32.0 if lumbar else 27.0), canal_v + 6.0, center_w + 4),
                    4.0,
                )
            )
        tip = (0.0, canal_v + (33.0 if lumbar else 30.0), center_w - (5.0 if lumbar else 16.0))
        parts.append(((0.0, canal_v + 9.0, center_w - 2), tip, 5.0 if lumbar else 4.0))
        for p0, p1, radius in parts:
            p0a, p1a = np.asarray(p0), np.asarray(p1)
            canvas.paint(
                capsule(p0a, p1a, radius),
                tuple(np.minimum(p0a, p1a) - radius - 1),
                tuple(np.maximum(p0a, p1a) + radius + 1),
                420.0,
                label,
            )
        placed[name] = center_w
    if len(canal_points) >= 2:
        canal = catmull_rom(canal_points, 3)
        canvas.paint_tube(canal, 8.5, 8.0, 0)
        canvas.paint_tube(canal, 5.0, 35.0, ids["spinal_cord"])
    return placed


def _superellipse_point(a: float, b: float, phi: float, exponent: float = BODY_EXPONENT) -> tuple[float, float]:
    s, c = np.sin(phi), np.cos(phi)
    return (np.sign(s) * abs(s) ** (2 / exponent) * a, np.sign(c) * abs(c) ** (2 / exponent) * b)


RIB_END_PHI = (2.35, 2.55, 2.6, 2.6, 2.55, 2.5, 2.45, 2.3, 2.1, 1.9, 1.45, 1.05)
RIB_DROP_MM = (25, 45, 55, 65, 75, 80, 85, 85, 85, 80, 60, 40)


def _paint_ribs_and_sternum(canvas: Canvas, anatomy: Anatomy, cavity_half, ids: dict[str, int]) -> None:
    sternum_top, sternum_bottom = 8.0, -178.0
    for number in range(1, 13):
        w_k = anatomy.vertebrae.get(f"vertebrae_T{number}")
        if w_k is None:
            continue
        for side, sign in SIDES.items():
            points = []
            phis = np.linspace(0.32, RIB_END_PHI[number - 1], 14)
            for phi in phis:
                w = w_k + 6.0 * np.sin(min(phi, 1.0) * np.pi) - RIB_DROP_MM[number - 1] * (phi / np.pi) ** 1.5
                a, b = (float(x[0]) for x in cavity_half(np.array([w], dtype=np.float32)))
                if w > -20.0:  # narrower around the lung apex
                    shrink = np.sqrt(max(1 - ((w + 20.0) / 70.0) ** 2, 0.05))
                    a, b = min(a, 62 + 72 * shrink), min(b, 72 * shrink + 10)
                pu, pv = _superellipse_point(a + 7.0, b + 7.0, phi)
                points.append((sign * pu, CAVITY_CENTER_V + pv, w))
            path = np.asarray(points)
            label = ids[f"rib_{side}_{number}"]
            radius = 6.5 if number == 1 else 5.5
            canvas.paint_tube(path, radius, HU_CORTICAL - 100.0, label)
            canvas.paint_tube(path, radius - 1.8, HU_CANCELLOUS - 30.0, label)
            if number <= 7:
                end = path[-1]
                level = float(np.clip(end[2] - 8.0, sternum_bottom + 10, sternum_top - 5))
                b_here = float(cavity_half(np.array([level], dtype=np.float32))[1][0])
                target = np.array([sign * 16.0, CAVITY_CENTER_V - b_here - 5.0, level])
                canvas.paint_tube(
                    np.vstack([end, (end + target) / 2 + np.array([0, -4.0, 0]), target]),
                    5.0,
                    HU_CARTILAGE,
                    ids["costal_cartilages"],
                    only_labels=(0,),
                )

    def sternum_center(w: np.ndarray):
        _, b = cavity_half(w)
        return np.float32(0.0), (CAVITY_CENTER_V - b - 6.0).astype(np.float32)

    def sternum_half(w: np.ndarray):
        width = np.where(w > -40.0, 26.0, np.where(w > -160.0, 16.0, 9.0)).astype(np.float32)
        return width, np.full_like(w, 6.5, dtype=np.float32)

    def sternum_inner(w: np.ndarray):
        width, depth = sternum_half(w)
        return width - 2.0, depth - 2.0

    lo, hi = (-40.0, -150.0, sternum_bottom), (40.0, -40.0, sternum_top)
    canvas.paint(
        superellipse_section(sternum_center, sternum_half, 2.5, (sternum_bottom, sternum_top)),
        lo,
        hi,
        HU_CORTICAL - 100.0,
        ids["sternum"],
    )
    canvas.paint(
        superellipse_section(sternum_center, sternum_inner, 2.5, (sternum_bottom + 2, sternum_top - 2)),
        lo,
        hi,
        HU_CANCELLOUS - 20.0,
        ids["sternum"],
    )
