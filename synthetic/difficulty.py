"""How hard the synthetic findings are: lesion sizes, contrast and label prevalence per ``difficulty``.

* ``paper``: the original generator (CT-RATE-like prevalences 7-32 %, lesions sized like real findings:
  4-20 mm nodules, 1.5-3 mm calcified spots, thin septa ...). At the demo model grid (8 x 4 x 4 mm voxels)
  most of them shrink to a handful of voxels or vanish in the resampling (see docs/learnability.md):
  a few hundred volumes cannot teach a model these labels.
* ``learnable`` (the default of ``fvlm demo-data``): every finding keeps the same kind, place and
  appearance (a nodule is still a solid round nodule in one lobe, a calcification still a bright spot on
  the coronary / aortic wall), but lesions are drawn at the large end of what occurs clinically (a
  "mass-like" nodule, extensive emphysema, bulky nodes, heavy calcification) and every label has a
  prevalence of about 25-30 %, so that each one keeps tens of voxels of clear contrast on the demo grid
  and val / test splits of a few dozen studies hold ~10 positives per label. Generator version 2 made
  emphysema diffuse (its lobes lose 70-110 HU), added calcified coronary segments and curvilinear aortic
  plaques, multifocal ground glass and 2.5 mm device leads; version 3 bulky lymph nodes that displace the
  lung (moved until most of each lies in fat or lung), 2-4 nodules and lobar consolidation; version 4
  subpleural reticulation with the fibrotic bands (the lobe's outer 15-25 mm gains 120-180 HU), 5-9
  nodules, 4-6 node stations, 2-3 atelectatic plates and bronchiectasis in two lobes
  (docs/learnability.md has what each bought).

The ``paper`` numbers are exactly the ones the generator had before this option existed (same random
draws in the same order): a ``paper`` cohort is byte-identical to the cohorts of earlier versions.
"""

from __future__ import annotations

from typing import Any, Literal

Difficulty = Literal["learnable", "paper"]
DIFFICULTIES: tuple[str, ...] = ("learnable", "paper")
DEFAULT_DIFFICULTY: Difficulty = "learnable"

_PAPER: dict[str, Any] = {
    "normal_fraction": 0.30,
    "prevalence": {
        "Medical material": 0.10,
        "Arterial wall calcification": 0.22,
        "Cardiomegaly": 0.10,
        "Pericardial effusion": 0.07,
        "Coronary artery wall calcification": 0.18,
        "Hiatal hernia": 0.10,
        "Lymphadenopathy": 0.18,
        "Emphysema": 0.17,
        "Atelectasis": 0.13,
        "Lung nodule": 0.32,
        "Lung opacity": 0.15,
        "Pulmonary fibrotic sequela": 0.15,
        "Pleural effusion": 0.11,
        "Mosaic attenuation pattern": 0.07,
        "Peribronchial thickening": 0.07,
        "Consolidation": 0.10,
        "Bronchiectasis": 0.08,
        "Interlobular septal thickening": 0.07,
    },
    "cardiomegaly_scale": (1.22, 1.42),
    "pericardial_effusion_mm": (6.0, 18.0),
    "hiatal_hernia_mm": (30.0, 55.0),
    "pleural_effusion_mm": (10.0, 42.0),
    "nodule_first_mm": (4.0, 20.0),
    "nodule_extra_mm": (4.0, 9.0),
    "consolidation_mm": (25.0, 45.0),
    "opacity_mm": (25.0, 50.0),
    "opacity_hu": -610.0,
    "atelectasis_semi_mm": ((20.0, 35.0), (4.0, 7.0), (8.0, 14.0)),
    "emphysema_holes": (25, 70),
    "emphysema_radius_mm": (3.0, 9.0),
    "emphysema_hu": -965.0,
    "coronary_spots": (1, 4),
    "coronary_radius_mm": (1.5, 3.0),
    "coronary_hu": (400.0, 1000.0),
    "aortic_spots": (3, 12),
    "aortic_radius_mm": (1.5, 3.2),
    "aortic_hu": (300.0, 900.0),
    "node_count": (1, 4),
    "node_short_mm": (12.0, 24.0),
    "bronchiectasis_count": (4, 8),
    "bronchiectasis_lumen_mm": (3.5, 5.5),
    "bronchiectasis_wall_mm": 2.0,
    "bronchiectasis_half_mm": 15.0,
    "peribronchial_wall_mm": 3.2,
    "septal_cell_mm": (14.0, 20.0),
    "septal_width": 0.12,
    "septal_hu": -260.0,
    "septal_depth_mm": 28.0,
    "mosaic_hu": (-60.0, 70.0),
    "fibrotic_count": (2, 6),
    "fibrotic_half_mm": (10.0, 25.0),
    "fibrotic_radius_mm": (1.2, 2.2),
}

_LEARNABLE: dict[str, Any] = {
    **_PAPER,
    "normal_fraction": 0.25,
    # ~26-30 % marginal prevalence per label (opacity and atelectasis also come with consolidation /
    # effusion, so their own draw is lower)
    "prevalence": {name: 0.26 for name in _PAPER["prevalence"]} | {"Lung opacity": 0.20, "Atelectasis": 0.20},
    "cardiomegaly_scale": (1.3, 1.5),
    "pericardial_effusion_mm": (12.0, 24.0),
    "hiatal_hernia_mm": (45.0, 65.0),
    "pleural_effusion_mm": (20.0, 45.0),
    "nodule_first_mm": (20.0, 34.0),  # mass-like (> 3 cm is a "mass" clinically; still solid, round, in one lobe)
    "nodule_extra_mm": (18.0, 26.0),
    "nodule_count": (5, 10),  # v4: 5-9 nodules (a dominant mass + metastases); v3 2-4, v2 one in 60 %
    "consolidation_mm": (65.0, 95.0),  # v3: lobar (clipped to its lobe), was 45-70 mm
    "opacity_mm": (50.0, 75.0),
    "opacity_hu": -420.0,  # dense ground glass (vessels still visible through -300..-700 HU)
    "atelectasis_semi_mm": ((30.0, 45.0), (9.0, 13.0), (15.0, 22.0)),
    "atelectasis_plates": (2, 4),  # v4: 2-3 plates (v3: one)
    "emphysema_holes": (45, 80),
    "emphysema_radius_mm": (9.0, 16.0),  # bullous / panlobular-sized air spaces
    "emphysema_hu": -1000.0,
    "emphysema_lobe_hu": (-110.0, -70.0),  # + diffuse low attenuation of the lobe (lung -860 -> ~-950 HU)
    "coronary_spots": (3, 6),
    "coronary_plaque_mm": (20.0, 35.0),  # + one calcified segment per vessel
    "coronary_plaque_radius_mm": (2.0, 3.0),
    "coronary_radius_mm": (3.5, 5.5),
    "coronary_hu": (900.0, 1500.0),
    "aortic_spots": (12, 20),
    "aortic_radius_mm": (4.0, 6.0),
    "aortic_hu": (800.0, 1400.0),
    "aortic_plaques": (2, 5),  # + curvilinear plaques along the wall
    "aortic_plaque_mm": (25.0, 50.0),
    "aortic_plaque_radius_mm": (2.5, 3.5),
    "device_lead_mm": 2.5,  # pacing lead / catheter radius (paper 1.3 mm): the part of a device inside the ROI
    "opacity_patches": (2, 4),  # multifocal ground glass
    "node_count": (4, 7),  # v4: 4-6 stations (v3: 3-4)
    "node_short_mm": (24.0, 36.0),  # bulky adenopathy
    "node_min_fraction": 0.6,  # v3: moved until >= 60 % lies in fat / lung (v2: often a few voxels between organs)
    "bronchiectasis_count": (8, 12),
    "bronchiectasis_lobes": 2,  # v4: two lobes (v3: one)
    "bronchiectasis_lumen_mm": (6.0, 9.0),
    "bronchiectasis_wall_mm": 3.5,
    "bronchiectasis_half_mm": 22.0,
    "peribronchial_wall_mm": 8.0,
    "septal_cell_mm": (14.0, 20.0),
    "septal_width": 0.3,
    "septal_hu": -150.0,
    "septal_depth_mm": 50.0,
    "mosaic_hu": (-170.0, 170.0),
    "fibrotic_count": (5, 9),
    "fibrotic_half_mm": (20.0, 35.0),
    "fibrotic_radius_mm": (3.5, 5.5),
    "fibrotic_rim_mm": (15.0, 25.0),  # v4: + subpleural reticulation: the lobe's outer 15-25 mm
    "fibrotic_rim_hu": (120.0, 180.0),  # gains 120-180 HU (lung -860 -> ~-710 HU, reticular texture)
}

SPECS: dict[str, dict[str, Any]] = {"paper": _PAPER, "learnable": _LEARNABLE}


def lesion_spec(difficulty: str = DEFAULT_DIFFICULTY) -> dict[str, Any]:
    """The parameter table of ``difficulty`` ("learnable" or "paper")."""
    try:
        return SPECS[difficulty]
    except KeyError:
        raise ValueError(f"unknown difficulty {difficulty!r} (choose from {', '.join(DIFFICULTIES)})") from None
