"""Findings: which of the 18 CT-RATE labels a study has, and the lesions drawn into the image for them.

Lesions are image content plus ground truth; they never add mask classes. They only change voxels they
claim (``only_labels`` keeps them inside their organ), with one documented exception: pleural fluid
takes the place of lung, so its voxels leave the lobe labels (label 0), as TotalSegmentator would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from synthetic.anatomy import (
    BODY_EXPONENT,
    CAVITY_CENTER_V,
    LOBES,
    SIDES,
    Anatomy,
    AnatomyFindings,
    class_ids,
    lung_label_ids,
    smooth_field,
)
from synthetic.canvas import Canvas
from synthetic.difficulty import DEFAULT_DIFFICULTY, lesion_spec
from synthetic.geometry import capsule, catmull_rom, ellipsoid

Lesion = dict[str, Any]


def sample_labels(rng: np.random.Generator, difficulty: str = DEFAULT_DIFFICULTY) -> dict[str, int]:
    """The 18 CT-RATE labels of one study (about 30 % entirely normal; 25 % for ``learnable``)."""
    from core.anatomy_sets import CTRATE_LABELS

    spec = lesion_spec(difficulty)
    normal_fraction, prevalence = spec["normal_fraction"], spec["prevalence"]
    labels = {name: 0 for name in CTRATE_LABELS}
    if rng.random() < normal_fraction:
        return labels
    draws = rng.random(len(CTRATE_LABELS))
    for name, draw in zip(CTRATE_LABELS, draws, strict=False):
        labels[name] = int(draw < prevalence[name] / (1 - normal_fraction) * 0.85)
    if labels["Consolidation"] and rng.random() < 0.5:
        labels["Lung opacity"] = 1
    if labels["Pleural effusion"] and rng.random() < 0.55:
        labels["Atelectasis"] = 1
    if not any(labels.values()):
        names = list(CTRATE_LABELS)
        weights = np.array([prevalence[n] for n in names])
        labels[names[int(rng.choice(len(names), p=weights / weights.sum()))]] = 1
    return labels


def anatomy_findings(
    labels: dict[str, int], rng: np.random.Generator, difficulty: str = DEFAULT_DIFFICULTY
) -> AnatomyFindings:
    spec = lesion_spec(difficulty)
    return AnatomyFindings(
        cardiomegaly_scale=float(rng.uniform(*spec["cardiomegaly_scale"])) if labels.get("Cardiomegaly") else 1.0,
        pericardial_effusion_mm=float(rng.uniform(*spec["pericardial_effusion_mm"]))
        if labels.get("Pericardial effusion")
        else 0.0,
        hiatal_hernia_mm=float(rng.uniform(*spec["hiatal_hernia_mm"])) if labels.get("Hiatal hernia") else 0.0,
    )


# ------------------------------------------------------------------------------------------- helpers


def _point(canvas: Canvas, kji: Sequence[int]) -> np.ndarray:
    k, j, i = kji
    return np.array([canvas.u[k, j, i], canvas.v[k, j, i], canvas.w[k, j, i]], dtype=float)


def _random_voxels(
    canvas: Canvas, rng: np.random.Generator, labels: Sequence[int], count: int
) -> list[tuple[int, int, int]]:
    flat = np.flatnonzero(np.isin(canvas.label, np.asarray(labels, dtype=np.uint8)))
    if flat.size == 0:
        return []
    picks = rng.choice(flat, size=min(count, flat.size), replace=False)
    return [tuple(int(x) for x in np.unravel_index(p, canvas.label.shape)) for p in picks]


def _fits(canvas: Canvas, center: np.ndarray, radius: float, allowed: Sequence[int]) -> bool:
    box = canvas.voxel_box(tuple(center - radius), tuple(center + radius))
    if box is None:
        return False
    u, v, w = canvas.coords(box)
    inside = (u - center[0]) ** 2 + (v - center[1]) ** 2 + (w - center[2]) ** 2 <= radius**2
    return bool(inside.any() and np.isin(canvas.label[box][inside], np.asarray(allowed, dtype=np.uint8)).all())


def _centroid(u: np.ndarray, v: np.ndarray, w: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Body-frame centroid of a region (the voxel nearest to it is recorded later)."""
    return np.array([u[region].mean(), v[region].mean(), w[region].mean()], dtype=float)


def _side_of_lobe(name: str) -> str:
    return "right" if name.endswith("_right") else "left"


def _pick_lobe(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = list(weights)
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


ALL_LOBES = (
    "lung_upper_lobe_right",
    "lung_middle_lobe_right",
    "lung_lower_lobe_right",
    "lung_upper_lobe_left",
    "lung_lower_lobe_left",
)


def _blob(center: np.ndarray, size_mm: float, rng: np.random.Generator, parts: int = 4):
    pieces = []
    for _ in range(parts):
        offset = rng.normal(0, size_mm * 0.25, 3)
        semi = rng.uniform(0.3, 0.55, 3) * size_mm
        pieces.append(ellipsoid(tuple(center + offset), tuple(semi)))

    def distance(u, v, w):
        out = pieces[0](u, v, w)
        for piece in pieces[1:]:
            out = np.minimum(out, piece(u, v, w))
        return out

    return distance


# ------------------------------------------------------------------------------------------- drawing


def draw_lesions(
    canvas: Canvas,
    anatomy: Anatomy,
    labels: dict[str, int],
    findings: AnatomyFindings,
    rng: np.random.Generator,
    difficulty: str = DEFAULT_DIFFICULTY,
) -> list[Lesion]:
    """Draw one or more lesions for every positive label; returns their ground-truth records."""
    spec = lesion_spec(difficulty)
    lesions: list[Lesion] = []
    ids = class_ids()
    lungs = lung_label_ids()
    if findings.cardiomegaly_scale > 1.0:
        lesions.append(
            {
                "label": "Cardiomegaly",
                "kind": "cardiomegaly",
                "center_body": anatomy.heart_center.tolist(),
                "cardiothoracic_ratio": round(anatomy.heart_width_mm / anatomy.thorax_width_mm, 2),
                "scale": round(findings.cardiomegaly_scale, 3),
            }
        )
    if findings.pericardial_effusion_mm > 0:
        lesions.append(
            {
                "label": "Pericardial effusion",
                "kind": "pericardial_effusion",
                "center_body": anatomy.heart_center.tolist(),
                "thickness_mm": round(findings.pericardial_effusion_mm, 1),
            }
        )
    if findings.hiatal_hernia_mm > 0:
        base = anatomy.esophagus_path[-6]
        lesions.append(
            {
                "label": "Hiatal hernia",
                "kind": "hiatal_hernia",
                "center_body": base.tolist(),
                "size_mm": round(findings.hiatal_hernia_mm, 1),
            }
        )

    if labels.get("Pleural effusion"):
        sides = [str(rng.choice(["right", "left"]))] if rng.random() < 0.55 else ["right", "left"]
        with_atelectasis = bool(labels.get("Atelectasis")) and rng.random() < 0.7
        for side in sides:
            lesions.extend(
                _pleural_effusion(
                    canvas, anatomy, side, float(rng.uniform(*spec["pleural_effusion_mm"])), with_atelectasis, rng
                )
            )
    if labels.get("Atelectasis") and not any(x["label"] == "Atelectasis" for x in lesions):
        plates = int(rng.integers(*spec["atelectasis_plates"])) if spec.get("atelectasis_plates") else 1
        for _ in range(plates):  # learnable (v4): 2-3 plates (subsegmental atelectasis in several segments)
            lesions.extend(_atelectasis(canvas, rng, spec))
    if labels.get("Lung nodule"):
        if spec.get("nodule_count"):  # learnable: always several (a dominant mass + satellites / metastases)
            count = int(rng.integers(*spec["nodule_count"]))
        else:
            count = 1 if rng.random() < 0.6 else int(rng.integers(2, 4))
        for index in range(count):
            diameter = (
                float(rng.uniform(*spec["nodule_first_mm"]))
                if index == 0
                else float(rng.uniform(*spec["nodule_extra_mm"]))
            )
            lesion = _nodule(canvas, rng, diameter)
            if lesion:
                lesions.append(lesion)
    if labels.get("Consolidation"):
        lesions.append(
            _patch(
                canvas,
                rng,
                "Consolidation",
                "consolidation",
                {
                    "lung_lower_lobe_right": 3,
                    "lung_lower_lobe_left": 3,
                    "lung_middle_lobe_right": 1,
                    "lung_upper_lobe_right": 1,
                    "lung_upper_lobe_left": 1,
                },
                25.0,
                spec["consolidation_mm"],
                "set",
            )
        )
    if labels.get("Lung opacity"):
        patches = int(rng.integers(*spec["opacity_patches"])) if spec.get("opacity_patches") else 1
        for _ in range(patches):  # learnable: multifocal ground glass (each patch in a lobe drawn at random)
            lesions.append(
                _patch(
                    canvas,
                    rng,
                    "Lung opacity",
                    "ground_glass_opacity",
                    {n: 1 for n in ALL_LOBES},
                    spec["opacity_hu"],
                    spec["opacity_mm"],
                    "max",
                )
            )
    if labels.get("Emphysema"):
        lesions.append(_emphysema(canvas, rng, spec))
    if labels.get("Coronary artery wall calcification"):
        lesions.append(_coronary_calcification(canvas, anatomy, rng, spec))
    if labels.get("Arterial wall calcification"):
        lesions.append(_aortic_calcification(canvas, anatomy, rng, spec))
    if labels.get("Lymphadenopathy"):
        lesions.extend(_lymph_nodes(canvas, rng, lungs, spec))
    if labels.get("Bronchiectasis"):
        affected: list[str] = []
        for _ in range(int(spec.get("bronchiectasis_lobes", 1))):  # learnable (v4): two lobes
            lesion = _bronchiectasis(canvas, anatomy, rng, lungs, spec, avoid=affected)
            affected.append(lesion["lobe"])
            lesions.append(lesion)
    if labels.get("Peribronchial thickening"):
        lesions.append(_peribronchial(canvas, anatomy, lungs, spec))
    if labels.get("Interlobular septal thickening"):
        lesions.append(_septal(canvas, anatomy, rng, spec))
    if labels.get("Mosaic attenuation pattern"):
        lesions.append(_mosaic(canvas, rng, lungs, spec))
    if labels.get("Pulmonary fibrotic sequela"):
        lesions.append(_fibrotic(canvas, anatomy, rng, spec))
    if labels.get("Medical material"):
        lesions.append(_medical_material(canvas, anatomy, rng, ids, spec))
    return [lesion for lesion in lesions if lesion]


def _nodule(canvas: Canvas, rng: np.random.Generator, diameter: float) -> Lesion | None:
    lobe = _pick_lobe(
        rng,
        {
            "lung_upper_lobe_right": 3,
            "lung_middle_lobe_right": 1,
            "lung_lower_lobe_right": 2,
            "lung_upper_lobe_left": 3,
            "lung_lower_lobe_left": 2,
        },
    )
    side_lobes = [class_ids()[n] for n in LOBES[_side_of_lobe(lobe)]]
    radius = diameter / 2
    for kji in _random_voxels(canvas, rng, [class_ids()[lobe]], 40):
        center = _point(canvas, kji)
        if not _fits(canvas, center, radius + 2.0, side_lobes):
            continue
        semi = radius * rng.uniform(0.9, 1.1, 3)
        hu = float(rng.uniform(25, 50))
        claimed = canvas.paint(
            ellipsoid(tuple(center), tuple(semi)),
            tuple(center - radius - 2),
            tuple(center + radius + 2),
            hu,
            None,
            soft=True,
            only_labels=side_lobes,
        )
        if claimed:
            return {
                "label": "Lung nodule",
                "kind": "solid_nodule",
                "lobe": lobe,
                "side": _side_of_lobe(lobe),
                "center_body": center.tolist(),
                "diameter_mm": round(diameter, 1),
                "hu": round(hu),
                "voxels": claimed,
            }
    return None


def _patch(
    canvas: Canvas,
    rng: np.random.Generator,
    label: str,
    kind: str,
    weights: dict[str, float],
    hu: float,
    size_range: tuple[float, float],
    mode: str,
) -> Lesion:
    lobe = _pick_lobe(rng, weights)
    lobe_id = class_ids()[lobe]
    size = float(rng.uniform(*size_range))
    texture = smooth_field(rng, 25.0, (8.0, 20.0))
    for kji in _random_voxels(canvas, rng, [lobe_id], 10):
        center = _point(canvas, kji)
        claimed = canvas.paint(
            _blob(center, size, rng),
            tuple(center - size),
            tuple(center + size),
            lambda u, v, w: hu + texture(u, v, w),
            None,
            only_labels=(lobe_id,),
            mode=mode,
        )
        if claimed:
            return {
                "label": label,
                "kind": kind,
                "lobe": lobe,
                "side": _side_of_lobe(lobe),
                "center_body": center.tolist(),
                "size_mm": round(size, 1),
                "voxels": claimed,
            }
    return {}


def _pleural_effusion(
    canvas: Canvas, anatomy: Anatomy, side: str, thickness: float, with_atelectasis: bool, rng: np.random.Generator
) -> list[Lesion]:
    sign = SIDES[side]
    lobes = np.asarray([class_ids()[n] for n in LOBES[side]], dtype=np.uint8)
    box = canvas.voxel_box((min(0, sign * 170), -100, anatomy.w_bottom - 40), (max(0, sign * 170), 120, 40))
    if box is None:
        return []
    u, v, w = canvas.coords(box)
    a, b = anatomy.cavity_half(w)
    ratio = np.clip(np.abs(u / a), 0, 0.999) ** BODY_EXPONENT
    v_post = CAVITY_CENTER_V + b * (1 - ratio) ** (1 / BODY_EXPONENT)
    floor = anatomy.diaphragm(u, v)
    dome = float(anatomy.diaphragm(np.array([sign * 60.0], dtype=np.float32), np.array([0.0], dtype=np.float32))[0])
    top = dome + 2.2 * thickness + 25.0
    depth = thickness * np.sqrt(np.clip((top - w) / 70.0, 0.0, 1.0))
    in_lung = np.isin(canvas.label[box], lobes)
    fluid = in_lung & ((v > v_post - depth) | (w < floor + 0.5 * thickness))
    lesions: list[Lesion] = []
    if not fluid.any():
        return []
    spacing = canvas.grid.spacing_kji
    volume_ml = float(fluid.sum() * spacing[0] * spacing[1] * spacing[2] / 1000.0)
    if with_atelectasis:
        band = in_lung & ~fluid & (v > v_post - depth - 9.0) & (w < top - 10.0)
        if band.any():
            canvas.hu[box][band] = 28.0 + rng.normal(0, 4, int(band.sum())).astype(np.float32)
            center = _centroid(u, v, w, band)
            lesions.append(
                {
                    "label": "Atelectasis",
                    "kind": "compressive_atelectasis",
                    "side": side,
                    "lobe": LOBES[side][-1],
                    "center_body": center.tolist(),
                    "voxels": int(band.sum()),
                }
            )
    canvas.hu[box][fluid] = 10.0 + rng.normal(0, 3, int(fluid.sum())).astype(np.float32)
    canvas.label[box][fluid] = 0
    center = _centroid(u, v, w, fluid)
    lesions.insert(
        0,
        {
            "label": "Pleural effusion",
            "kind": "pleural_effusion",
            "side": side,
            "center_body": center.tolist(),
            "thickness_mm": round(thickness, 1),
            "volume_ml": round(volume_ml, 1),
            "voxels": int(fluid.sum()),
        },
    )
    return lesions


def _atelectasis(canvas: Canvas, rng: np.random.Generator, spec: dict[str, Any]) -> list[Lesion]:
    lobe = _pick_lobe(
        rng,
        {"lung_lower_lobe_right": 3, "lung_lower_lobe_left": 3, "lung_middle_lobe_right": 1, "lung_upper_lobe_left": 1},
    )
    lobe_id = class_ids()[lobe]
    for kji in _random_voxels(canvas, rng, [lobe_id], 10):
        center = _point(canvas, kji)
        angle = rng.uniform(0, np.pi)
        axes = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
        ranges = spec["atelectasis_semi_mm"]
        semi = (float(rng.uniform(*ranges[0])), float(rng.uniform(*ranges[1])), float(rng.uniform(*ranges[2])))
        reach = max(36.0, semi[0] + 1.0)
        claimed = canvas.paint(
            ellipsoid(tuple(center), semi, axes),
            tuple(center - reach),
            tuple(center + reach),
            lambda u, v, w: 22.0 + 0 * u,
            None,
            only_labels=(lobe_id,),
        )
        if claimed:
            return [
                {
                    "label": "Atelectasis",
                    "kind": "plate_atelectasis",
                    "lobe": lobe,
                    "side": _side_of_lobe(lobe),
                    "center_body": center.tolist(),
                    "length_mm": round(2 * semi[0]),
                    "voxels": claimed,
                }
            ]
    return []


def _emphysema(canvas: Canvas, rng: np.random.Generator, spec: dict[str, Any]) -> Lesion:
    bilateral = rng.random() < 0.7
    lobes = (
        ["lung_upper_lobe_right", "lung_upper_lobe_left"]
        if bilateral
        else [str(rng.choice(["lung_upper_lobe_right", "lung_upper_lobe_left"]))]
    )
    if rng.random() < 0.3:
        lobes += ["lung_lower_lobe_right", "lung_lower_lobe_left"] if bilateral else []
    lobe_ids = [class_ids()[n] for n in lobes]
    claimed, holes = 0, 0
    if spec.get("emphysema_lobe_hu"):  # diffuse low attenuation of the affected lobes' parenchyma (not the vessels)
        parenchyma = np.isin(canvas.label, np.asarray(lobe_ids, dtype=np.uint8)) & (canvas.hu < -500.0)
        canvas.hu[parenchyma] += np.float32(rng.uniform(*spec["emphysema_lobe_hu"]))
        claimed += int(parenchyma.sum())
    count = int(rng.integers(*spec["emphysema_holes"]))
    hole_hu = float(spec["emphysema_hu"])
    for kji in _random_voxels(canvas, rng, lobe_ids, count):
        center = _point(canvas, kji)
        radius = float(rng.uniform(*spec["emphysema_radius_mm"]))
        got = canvas.paint(
            ellipsoid(tuple(center), (radius, radius, radius)),
            tuple(center - radius - 1),
            tuple(center + radius + 1),
            lambda u, v, w: hole_hu + 0 * u,
            None,
            only_labels=lobe_ids,
            mode="min",
        )
        claimed += got
        holes += bool(got)
    return {
        "label": "Emphysema",
        "kind": "centrilobular_emphysema",
        "lobes": lobes,
        "side": "both" if bilateral else _side_of_lobe(lobes[0]),
        "severity": "moderate" if count > 50 else "mild",
        "regions": holes,
        "voxels": claimed,
        "center_body": _point(canvas, _random_voxels(canvas, rng, lobe_ids, 1)[0]).tolist(),
    }


def _points_along(path: np.ndarray, length_mm: float) -> int:
    """How many consecutive points of ``path`` (about evenly spaced) cover ``length_mm`` (at least 2)."""
    step = float(np.linalg.norm(np.diff(path, axis=0), axis=1).mean())
    return max(2, int(np.ceil(length_mm / step)) + 1)


def _aortic_segment(index: int, n: int) -> str:
    """Which part of the aorta point ``index`` of its ``n``-point centreline lies in."""
    return "ascending" if index < n * 0.3 else "arch" if index < n * 0.45 else "descending"


def _coronary_calcification(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator, spec: dict[str, Any]) -> Lesion:
    vessels = list(anatomy.coronary_paths)
    chosen = sorted({str(x) for x in rng.choice(vessels, size=int(rng.integers(1, 4)))})
    spots: list[np.ndarray] = []
    plaques: list[np.ndarray] = []
    for name in chosen:
        path = anatomy.coronary_paths[name]
        for _ in range(int(rng.integers(*spec["coronary_spots"]))):
            point = path[int(rng.integers(0, len(path) // 2 + 2))]
            radius = float(rng.uniform(*spec["coronary_radius_mm"]))
            hu = float(rng.uniform(*spec["coronary_hu"]))
            reach = max(4.0, radius + 1.0)
            canvas.paint(
                ellipsoid(tuple(point), (radius, radius, radius)),
                tuple(point - reach),
                tuple(point + reach),
                hu,
                None,
                soft=True,
                mode="max",
                only_labels=(0, class_ids()["heart"]),
            )
            spots.append(point)
        if spec.get("coronary_plaque_mm"):  # a calcified segment along the vessel (heavy, "tram-track" calcium)
            length = float(rng.uniform(*spec["coronary_plaque_mm"]))
            first = int(rng.integers(0, len(path) // 2))
            segment = path[first : first + _points_along(path, length)]
            canvas.paint_tube(
                segment,
                float(rng.uniform(*spec["coronary_plaque_radius_mm"])),
                float(rng.uniform(*spec["coronary_hu"])),
                None,
                soft=True,
                mode="max",
                only_labels=(0, class_ids()["heart"]),
            )
            plaques.append(segment.mean(axis=0))
    return {
        "label": "Coronary artery wall calcification",
        "kind": "coronary_calcification",
        "vessels": chosen,
        "spots": len(spots),
        **({"plaques": len(plaques)} if plaques else {}),
        "center_body": np.mean(spots + plaques, axis=0).tolist(),
    }


def _aortic_calcification(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator, spec: dict[str, Any]) -> Lesion:
    path, radii = anatomy.aorta_path, anatomy.aorta_radii
    n = len(path)
    segments: set[str] = set()
    spots = []
    for _ in range(int(rng.integers(*spec["aortic_spots"]))):
        index = int(rng.integers(n // 5, n - 2))
        tangent = path[min(index + 1, n - 1)] - path[max(index - 1, 0)]
        tangent /= np.linalg.norm(tangent)
        normal = np.cross(tangent, rng.normal(size=3))
        normal /= np.linalg.norm(normal)
        point = path[index] + normal * radii[index] * 0.95
        radius = float(rng.uniform(*spec["aortic_radius_mm"]))
        reach = max(6.0, radius * 1.5 + 1.0)
        canvas.paint(
            ellipsoid(tuple(point), (radius, radius, radius * 1.5), None),
            tuple(point - reach),
            tuple(point + reach),
            float(rng.uniform(*spec["aortic_hu"])),
            None,
            soft=True,
            mode="max",
            only_labels=(0, class_ids()["aorta"]),
        )
        segments.add(_aortic_segment(index, n))
        spots.append(point)
    plaque_mm = spec.get("aortic_plaque_mm")
    for _ in range(int(rng.integers(*spec["aortic_plaques"])) if plaque_mm else 0):
        # a curvilinear plaque: the wall traced along the vessel on one side (heavy atherosclerosis)
        start = int(rng.integers(n // 5, n - 3))
        stop = min(n, start + _points_along(path, float(rng.uniform(*plaque_mm))))
        side = rng.normal(size=3)
        wall = []
        for index in range(start, stop):
            tangent = path[min(index + 1, n - 1)] - path[max(index - 1, 0)]
            normal = np.cross(tangent / np.linalg.norm(tangent), side)
            wall.append(path[index] + normal / np.linalg.norm(normal) * radii[index] * 0.95)
        canvas.paint_tube(
            np.asarray(wall),
            float(rng.uniform(*spec["aortic_plaque_radius_mm"])),
            float(rng.uniform(*spec["aortic_hu"])),
            None,
            soft=True,
            mode="max",
            only_labels=(0, class_ids()["aorta"]),
        )
        segments.add(_aortic_segment(start + (stop - start) // 2, n))
        spots.append(np.mean(wall, axis=0))
    return {
        "label": "Arterial wall calcification",
        "kind": "aortic_wall_calcification",
        "segments": sorted(segments),
        "spots": len(spots),
        "center_body": np.mean(spots, axis=0).tolist(),
    }


NODE_STATIONS = {
    "right upper paratracheal": (-18.0, -6.0, -25.0),
    "right lower paratracheal": (-18.0, 0.0, -55.0),
    "subcarinal": (0.0, 32.0, -92.0),
    "prevascular": (-4.0, -45.0, -62.0),
    "aortopulmonary window": (16.0, -4.0, -76.0),
    "right hilar": (-52.0, 22.0, -110.0),
    "left hilar": (54.0, 24.0, -116.0),
}


def _lymph_nodes(canvas: Canvas, rng: np.random.Generator, lungs: Sequence[int], spec: dict[str, Any]) -> list[Lesion]:
    names = list(NODE_STATIONS)
    chosen = [
        names[i] for i in sorted(rng.choice(len(names), size=int(rng.integers(*spec["node_count"])), replace=False))
    ]
    lesions = []
    bulky = spec.get("node_min_fraction")  # learnable: a bulky node displaces the lung beside it
    for station in chosen:
        center = np.asarray(NODE_STATIONS[station]) + rng.normal(0, 2.0, 3)
        short = float(rng.uniform(*spec["node_short_mm"]))
        semi = (short / 2, short / 2 * rng.uniform(1.0, 1.2), short / 2 * rng.uniform(1.2, 1.6))
        allowed = (0,) + tuple(lungs) if "hilar" in station or bulky else (0,)
        reach = max(20.0, short * 0.8 + 1.0)
        if bulky:  # move it (as a radiologist would find it) until most of it lies in fat / lung, not in an organ
            expected = 4.0 / 3.0 * np.pi * float(np.prod(semi)) / float(np.prod(canvas.grid.spacing_kji))
            for _ in range(8):
                if canvas.count(ellipsoid(tuple(center), semi), center - reach, center + reach, allowed) >= (
                    bulky * expected
                ):
                    break
                center = center + rng.normal(0, 6.0, 3)
        claimed = canvas.paint(
            ellipsoid(tuple(center), semi),
            tuple(center - reach),
            tuple(center + reach),
            float(rng.uniform(20, 35)),
            None,
            only_labels=allowed,
        )
        if claimed:
            lesions.append(
                {
                    "label": "Lymphadenopathy",
                    "kind": "enlarged_lymph_node",
                    "station": station,
                    "center_body": center.tolist(),
                    "short_axis_mm": round(short),
                    "voxels": claimed,
                }
            )
    return lesions


def _bronchiectasis(
    canvas: Canvas,
    anatomy: Anatomy,
    rng: np.random.Generator,
    lungs: Sequence[int],
    spec: dict[str, Any],
    avoid: Sequence[str] = (),
) -> Lesion:
    weights = {
        "lung_lower_lobe_right": 3,
        "lung_lower_lobe_left": 3,
        "lung_middle_lobe_right": 2,
        "lung_upper_lobe_left": 1,
        "lung_upper_lobe_right": 1,
    }
    lobe = _pick_lobe(rng, {name: weight for name, weight in weights.items() if name not in avoid})
    lobe_id = class_ids()[lobe]
    claimed, points = 0, []
    half, wall = float(spec["bronchiectasis_half_mm"]), float(spec["bronchiectasis_wall_mm"])
    for kji in _random_voxels(canvas, rng, [lobe_id], int(rng.integers(*spec["bronchiectasis_count"]))):
        center = _point(canvas, kji)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        p0, p1 = center - direction * half, center + direction * half
        lumen = float(rng.uniform(*spec["bronchiectasis_lumen_mm"]))
        pad = max(10.0, lumen + wall + 2.0)
        lo, hi = tuple(np.minimum(p0, p1) - pad), tuple(np.maximum(p0, p1) + pad)
        claimed += canvas.paint(capsule(p0, p1, lumen + wall), lo, hi, 15.0, None, soft=True, only_labels=(lobe_id,))
        canvas.paint(capsule(p0, p1, lumen), lo, hi, -1000.0, None, soft=True, only_labels=(lobe_id,))
        points.append(center)
    return {
        "label": "Bronchiectasis",
        "kind": "cylindrical_bronchiectasis",
        "lobe": lobe,
        "side": _side_of_lobe(lobe),
        "center_body": np.mean(points, axis=0).tolist() if points else anatomy.hila["right"].tolist(),
        "voxels": claimed,
    }


def _peribronchial(canvas: Canvas, anatomy: Anatomy, lungs: Sequence[int], spec: dict[str, Any]) -> Lesion:
    claimed = 0
    wall = float(spec["peribronchial_wall_mm"])
    for segment in anatomy.airway_segments:
        p0, p1, lumen = segment["p0"], segment["p1"], float(segment["lumen_mm"])
        pad = lumen + max(6.0, wall + 2.0)
        lo, hi = tuple(np.minimum(p0, p1) - pad), tuple(np.maximum(p0, p1) + pad)
        claimed += canvas.paint(capsule(p0, p1, lumen + wall), lo, hi, 25.0, None, soft=True, only_labels=lungs)
        canvas.paint(capsule(p0, p1, lumen), lo, hi, -1000.0, None, soft=True, only_labels=lungs)
    return {
        "label": "Peribronchial thickening",
        "kind": "peribronchial_thickening",
        "side": "both",
        "center_body": anatomy.carina.tolist(),
        "voxels": claimed,
    }


def _septal(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator, spec: dict[str, Any]) -> Lesion:
    sides = ["right", "left"] if rng.random() < 0.7 else [str(rng.choice(["right", "left"]))]
    cell = float(rng.uniform(*spec["septal_cell_mm"]))
    width, septal_hu, depth = float(spec["septal_width"]), float(spec["septal_hu"]), float(spec["septal_depth_mm"])
    claimed = 0
    for side in sides:
        lobe_id = class_ids()[LOBES[side][-1]]
        sign = SIDES[side]
        box = canvas.voxel_box((min(0, sign * 170), -100, anatomy.w_bottom - 40), (max(0, sign * 170), 120, -60))
        if box is None:
            continue
        u, v, w = canvas.coords(box)
        near_pleura = anatomy.lung_distance(side)(u, v, w) > -depth
        lattice = np.minimum(
            np.minimum(np.abs(np.sin(np.pi * u / cell)), np.abs(np.sin(np.pi * (v + 3.1) / cell))),
            np.abs(np.sin(np.pi * (w + 7.3) / cell)),
        )
        septa = near_pleura & (lattice < width) & (canvas.label[box] == lobe_id)
        canvas.hu[box][septa] = np.maximum(canvas.hu[box][septa], septal_hu)
        claimed += int(septa.sum())
    return {
        "label": "Interlobular septal thickening",
        "kind": "interlobular_septal_thickening",
        "side": "both" if len(sides) == 2 else sides[0],
        "lobes": [LOBES[s][-1] for s in sides],
        "center_body": anatomy.hila[sides[0]].tolist(),
        "voxels": claimed,
    }


def _mosaic(canvas: Canvas, rng: np.random.Generator, lungs: Sequence[int], spec: dict[str, Any]) -> Lesion:
    field = smooth_field(rng, 1.0, (25.0, 60.0), modes=6)
    inside = np.isin(canvas.label, np.asarray(lungs, dtype=np.uint8))
    pattern = field(canvas.u[inside], canvas.v[inside], canvas.w[inside])
    darker, brighter = spec["mosaic_hu"]
    canvas.hu[inside] += np.where(pattern > 0.1, darker, np.where(pattern < -0.3, brighter, 0.0)).astype(np.float32)
    return {
        "label": "Mosaic attenuation pattern",
        "kind": "mosaic_attenuation",
        "side": "both",
        "center_body": [0.0, 10.0, -150.0],
        "voxels": int(inside.sum()),
    }


def _fibrotic(canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator, spec: dict[str, Any]) -> Lesion:
    lobe = _pick_lobe(
        rng,
        {
            "lung_upper_lobe_right": 3,
            "lung_upper_lobe_left": 3,
            "lung_middle_lobe_right": 1,
            "lung_lower_lobe_right": 1,
            "lung_lower_lobe_left": 1,
        },
    )
    lobe_id = class_ids()[lobe]
    claimed, points = 0, []
    for kji in _random_voxels(canvas, rng, [lobe_id], int(rng.integers(*spec["fibrotic_count"]))):
        center = _point(canvas, kji)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        half = float(rng.uniform(*spec["fibrotic_half_mm"]))
        p0, p1 = center - direction * half, center + direction * half
        radius = float(rng.uniform(*spec["fibrotic_radius_mm"]))
        pad = max(4.0, radius + 2.0)
        claimed += canvas.paint(
            capsule(p0, p1, radius),
            tuple(np.minimum(p0, p1) - pad),
            tuple(np.maximum(p0, p1) + pad),
            -40.0,
            None,
            soft=True,
            only_labels=(lobe_id,),
        )
        points.append(center)
    lesion: Lesion = {
        "label": "Pulmonary fibrotic sequela",
        "kind": "fibrotic_bands",
        "lobe": lobe,
        "side": _side_of_lobe(lobe),
        "center_body": np.mean(points, axis=0).tolist() if points else [0.0, 0.0, -100.0],
        "voxels": claimed,
    }
    if spec.get("fibrotic_rim_mm"):  # learnable (v4): + subpleural reticulation, a denser rim of the lobe
        reticulation = _subpleural_reticulation(canvas, anatomy, rng, lobe, spec)
        lesion["voxels"] = claimed + reticulation
        lesion["reticulation_voxels"] = reticulation
    return lesion


def _subpleural_reticulation(
    canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator, lobe: str, spec: dict[str, Any]
) -> int:
    """Fine subpleural reticulation of ``lobe``: within ``fibrotic_rim_mm`` of the pleura its parenchyma
    gains ``fibrotic_rim_hu`` (at 8 x 4 x 4 mm a reticular net averages into a denser rim), with a
    reticular texture; vessels and the bands drawn before are left as they are."""
    inside = (canvas.label == class_ids()[lobe]) & (canvas.hu < -500.0)
    index = np.nonzero(inside)
    u, v, w = canvas.u[index], canvas.v[index], canvas.w[index]
    rim = anatomy.lung_distance(_side_of_lobe(lobe))(u, v, w) > -float(rng.uniform(*spec["fibrotic_rim_mm"]))
    texture = smooth_field(rng, 1.0, (6.0, 12.0), modes=8)(u[rim], v[rim], w[rim])
    gain = float(rng.uniform(*spec["fibrotic_rim_hu"]))
    canvas.hu[tuple(axis[rim] for axis in index)] += (gain * (1.0 + 0.4 * np.tanh(texture))).astype(np.float32)
    return int(rim.sum())


def _medical_material(
    canvas: Canvas, anatomy: Anatomy, rng: np.random.Generator, ids: dict[str, int], spec: dict[str, Any]
) -> Lesion:
    kind = str(rng.choice(["pacemaker", "port_catheter", "sternotomy_wires"]))
    claimed = 0
    if kind == "sternotomy_wires":
        spots = []
        for w in np.linspace(-20, -150, int(rng.integers(4, 7))):
            _, b = anatomy.cavity_half(np.array([w], dtype=np.float32))
            center = np.array([0.0, CAVITY_CENTER_V - float(b[0]) - 6.0, w])
            claimed += canvas.paint(
                ellipsoid(tuple(center), (14.0, 8.5, 1.2)),
                tuple(center - 16),
                tuple(center + 16),
                3000.0,
                None,
                soft=True,
            )
            spots.append(center)
        return {
            "label": "Medical material",
            "kind": kind,
            "center_body": np.mean(spots, axis=0).tolist(),
            "voxels": claimed,
        }
    sign = 1.0 if kind == "pacemaker" else -1.0
    w_device = -15.0
    skin_v = 5.0 - 112.0 - 3.0 * np.clip((w_device + 200) / 260, 0, 1)
    device = np.array([sign * 72.0, skin_v + max(anatomy.fat_mm * 0.6, 6.0), w_device])
    semi = (24.0, 4.5, 20.0) if kind == "pacemaker" else (14.0, 7.0, 14.0)
    claimed += canvas.paint(ellipsoid(tuple(device), semi), tuple(device - 26), tuple(device + 26), 3000.0, None)
    heart_apex = anatomy.heart_center + anatomy.heart_axes[:, 0] * anatomy.heart_semi[0] * 0.55
    route = [device, (sign * 45.0, -55.0, 25.0), (-30.0, -12.0, 20.0), (-30.0, -12.0, -90.0)]
    route += [tuple(heart_apex)] if kind == "pacemaker" else [(-24.0, -10.0, -150.0)]
    claimed += canvas.paint_tube(catmull_rom(route, 6), float(spec.get("device_lead_mm", 1.3)), 2600.0, None, soft=True)
    return {
        "label": "Medical material",
        "kind": kind,
        "side": "left" if sign > 0 else "right",
        "center_body": device.tolist(),
        "voxels": claimed,
    }
