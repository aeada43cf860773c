"""The sentence templates of the synthetic reports (:mod:`synthetic.reports` interprets them).

A template is a ``str.format`` string with named fields; a tuple of templates is a choice, one drawn per
report, a plain string is said as is (no draw). ``{lobe}`` / ``{lobes}`` are drawn anew for every template
they appear in, before the choice, so the random stream is the one the hand-written f-strings used.
"""

from __future__ import annotations

from typing import Any

Templates = str | tuple[str, ...]

LOBE_PHRASES = {
    "lung_upper_lobe_right": ("right lung upper lobe", "upper lobe of the right lung", "right upper lobe"),
    "lung_middle_lobe_right": ("right lung middle lobe", "middle lobe of the right lung", "right middle lobe"),
    "lung_lower_lobe_right": ("right lung lower lobe", "lower lobe of the right lung", "right lower lobe"),
    "lung_upper_lobe_left": ("left lung upper lobe", "upper lobe of the left lung", "left upper lobe"),
    "lung_lower_lobe_left": ("left lung lower lobe", "lower lobe of the left lung", "left lower lobe"),
}
CORONARY_NAMES = {"LAD": "left anterior descending artery", "RCA": "right coronary artery", "LCX": "circumflex artery"}
# in the order they are named
AORTA_SEGMENTS = {"ascending": "ascending aorta", "arch": "aortic arch", "descending": "descending aorta"}

# chance that the report names a prior examination / the reading physician (planted fake PHI)
PLANT_CHANCE = {"prior_date": 0.35, "physician": 0.45}
PRIOR_EXAMINATION: Templates = (
    "Compared with the examination of {date}.",
    "The examination was evaluated together with the previous CT dated {date}.",
    "Comparison was made with the chest CT of {date}.",
)
AIRWAYS: Templates = (
    "Trachea and both main bronchi are in the midline and their lumens are open.",
    "The trachea and main bronchi are patent.",
    "Trachea and lumen of both main bronchi are open. No occlusive pathology was detected.",
)

# One rule per finding, in report order. Keys:
#   label      the CT-RATE label whose lesions the rule describes
#   fields     how the named fields are read from the lesions (a function in synthetic.reports)
#   per        "label": one sentence for all its lesions; "lesion": one sentence per lesion
#   select     only lesions of this kind ("kind") / of another kind ("kind_not")
#   say        case -> templates (the case is chosen by ``fields``; "one" when there is only one)
#   say_all    draw every case's sentence, keep the lesion's (the random stream of the old dict literal)
#   impression case -> impression template
#   normal     templates when the label is absent; normal_chance: said with that chance only
FINDING_RULES: tuple[dict[str, Any], ...] = (
    {
        "label": "Cardiomegaly",
        "fields": "cardiomegaly",
        "say": {
            "one": (
                "The heart is enlarged, with a cardiothoracic ratio of about {ratio:.2f}.",
                "Cardiomegaly is observed.",
                "Heart size is increased (cardiomegaly).",
            )
        },
        "impression": {"one": "Cardiomegaly."},
        "normal": (
            "Heart contour and size are normal.",
            "Heart size is within normal limits.",
            "The heart has normal dimensions.",
        ),
    },
    {
        "label": "Pericardial effusion",
        "fields": "thickness",
        "say": {
            "one": (
                "Pericardial effusion measuring {thickness} mm in thickness is observed.",
                "There is pericardial fluid reaching {thickness} mm in thickness.",
            )
        },
        "impression": {"one": "Pericardial effusion."},
        "normal": (
            "No pericardial effusion was detected.",
            "Pericardial effusion-thickening was not observed.",
            "There is no pericardial effusion.",
        ),
    },
    {
        "label": "Coronary artery wall calcification",
        "fields": "coronary",
        "say": {
            "one": (
                "Calcified atherosclerotic plaques are observed in the coronary arteries ({vessels}).",
                "Coronary artery wall calcifications are noted in the {vessels}.",
            )
        },
        "impression": {"one": "Coronary artery calcification."},
        "normal": "No coronary artery calcification was seen.",
        "normal_chance": 0.3,
    },
    {
        "label": "Arterial wall calcification",
        "fields": "aorta",
        "say": {
            "one": (
                "Calcific atheromatous plaques are seen in the wall of the thoracic aorta ({segments}).",
                "Atherosclerotic wall calcifications are present in the {segments}.",
            )
        },
        "impression": {"one": "Atherosclerotic calcification of the aortic wall."},
        "normal": (
            "Calibration of the thoracic aorta is normal.",
            "The thoracic aorta has a normal diameter.",
            "Thoracic main vascular structures are of natural calibration.",
        ),
    },
    {
        "label": "Lymphadenopathy",
        "fields": "lymph_nodes",
        "say": {
            "one": (
                "A lymph node measuring {mm} mm in short axis is observed in the {station} region.",
                "An enlarged lymph node ({mm} mm short axis) is present at the {station} station.",
            ),
            "several": "Enlarged lymph nodes are present in the {stations} stations, the largest {mm} mm in short axis.",
        },
        "impression": {"one": "Mediastinal lymphadenopathy.", "several": "Mediastinal lymphadenopathy."},
        "normal": (
            "No lymphadenopathy in pathological size was detected in the mediastinum or hilar regions.",
            "No mediastinal or hilar lymphadenopathy was observed.",
            "Lymph nodes in the mediastinum are of normal size.",
        ),
    },
    {
        "label": "Hiatal hernia",
        "fields": "size",
        "say": {
            "one": (
                "A hiatal hernia measuring approximately {size} mm is observed.",
                "A sliding type hiatal hernia is present.",
                "Part of the stomach herniates through the hiatus (hiatal hernia, about {size} mm).",
            )
        },
        "impression": {"one": "Hiatal hernia."},
        "normal": (
            "Thoracic esophagus calibration is normal and no significant wall thickening was detected.",
            "The esophagus is unremarkable.",
            "No hiatal hernia was detected.",
        ),
    },
    {
        "label": "Medical material",
        "fields": "device_kind",
        "say_all": True,
        "say": {
            "pacemaker": (
                "A cardiac pacemaker is present, with its generator in the left pectoral region and the lead extending into the right ventricle.",
                "Pacemaker generator and lead are observed in the left hemithorax.",
            ),
            "port_catheter": (
                "A port catheter is observed in the right anterior chest wall, its tip in the superior vena cava.",
                "A venous port catheter is present on the right.",
            ),
            "sternotomy_wires": (
                "Sternotomy wires are observed following median sternotomy.",
                "Median sternotomy with sternotomy wires.",
            ),
        },
        "impression": {"pacemaker": "Pacemaker.", "port_catheter": "Port catheter.", "sternotomy_wires": "Sternotomy."},
    },
    {
        "label": "Pleural effusion",
        "fields": "pleural_effusion",
        "say": {
            "both": (
                "Bilateral pleural effusion is observed, more prominent on the {side} ({mm} mm).",
                "Pleural effusion is present in both hemithoraces, reaching {mm} mm on the {side}.",
            ),
            "one": (
                "Pleural effusion reaching {mm} mm in thickness is observed in the {side} hemithorax.",
                "There is a {side} pleural effusion with a thickness of {mm} mm.",
            ),
        },
        "impression": {"both": "Bilateral pleural effusion.", "one": "{Side} pleural effusion."},
        "normal": (
            "No pleural effusion was detected.",
            "Pleural effusion-thickening was not detected in both hemithoraces.",
            "There is no pleural effusion.",
        ),
    },
    # lungs
    {
        "label": "Atelectasis",
        "fields": "lobe",
        "per": "lesion",
        "select": {"kind": "compressive_atelectasis"},
        "say": {
            "one": (
                "Compressive atelectasis is observed in the adjacent parenchyma of the {lobe}.",
                "Passive atelectasis is seen adjacent to the effusion in the {lobe}.",
            )
        },
        "impression": {"one": "Atelectasis."},
    },
    {  # one sentence for all plates (learnable draws 2-3), naming each lobe once
        "label": "Atelectasis",
        "fields": "lobes",
        "select": {"kind_not": "compressive_atelectasis"},
        "say": {
            "one": (
                "Plate-like atelectasis is observed in the {lobes}.",
                "Subsegmental atelectasis is present in the {lobes}.",
            )
        },
        "impression": {"one": "Atelectasis."},
    },
    {  # learnable draws many nodules: more than four are summarised, as a radiologist would
        "label": "Lung nodule",
        "fields": "nodules",
        "say": {
            "one": (
                "A {size} mm solid nodule is observed in the {lobe}.",
                "There is a solid nodule measuring {size} mm in diameter in the {lobe}.",
                "A {size} mm nodule is present in the {lobe}.",
            ),
            "few": "Multiple solid nodules are observed, the largest {size} mm in the {lobe}; others measure {others}.",
            "many": "Multiple solid nodules are observed, the largest {size} mm in the {lobe}; {count} others measuring up to {largest_other} mm are seen in the {others_lobes}.",
        },
        "other_nodule": "{size} mm in the {lobe}",
        "impression": {
            "one": "{size} mm nodule in the {lobe}.",
            "few": "Multiple lung nodules, the largest {size} mm.",
            "many": "Multiple lung nodules, the largest {size} mm.",
        },
    },
    {
        "label": "Emphysema",
        "fields": "where",
        "both_sides": "the upper lobes of both lungs",
        "one_side": "the {lobe}",
        "say": {
            "one": (
                "{Severity} centrilobular emphysematous changes are observed in {where}.",
                "Emphysema is present in {where}.",
            )
        },
        "impression": {"one": "Emphysema."},
    },
    {
        "label": "Consolidation",
        "fields": "lobe",
        "per": "lesion",
        "say": {
            "one": (
                "A consolidation area is observed in the {lobe}.",
                "Consolidation measuring approximately {size} mm is present in the {lobe}.",
            )
        },
        "impression": {"one": "Consolidation in the {lobe}."},
    },
    {
        "label": "Lung opacity",
        "fields": "lobe",
        "per": "lesion",
        "say": {
            "one": (
                "Ground-glass opacity is observed in the {lobe}.",
                "An area of ground glass density is seen in the {lobe}.",
            )
        },
        "impression": {"one": "Ground-glass opacity."},
    },
    {  # one sentence naming each lobe once (learnable draws two lobes)
        "label": "Bronchiectasis",
        "fields": "lobes",
        "say": {
            "one": (
                "Cylindrical bronchiectasis is observed in the {lobes}.",
                "Bronchiectatic changes are present in the {lobes}.",
            )
        },
        "impression": {"one": "Bronchiectasis."},
    },
    {
        "label": "Peribronchial thickening",
        "fields": "none",
        "say": {
            "one": (
                "Peribronchial thickening is observed in both lungs.",
                "Bronchial wall thickening (peribronchial thickening) is noted bilaterally.",
            )
        },
        "impression": {"one": "Peribronchial thickening."},
    },
    {
        "label": "Interlobular septal thickening",
        "fields": "where",
        "per": "lesion",
        "both_sides": "the lower lobes of both lungs",
        "one_side": "the {lobe}",
        "say": {
            "one": (
                "Interlobular septal thickening is observed in {where}.",
                "Smooth interlobular septal thickening is present in {where}.",
            )
        },
        "impression": {"one": "Interlobular septal thickening."},
    },
    {
        "label": "Mosaic attenuation pattern",
        "fields": "none",
        "say": {
            "one": (
                "A mosaic attenuation pattern is observed in both lungs.",
                "Mosaic attenuation is present in both lung parenchyma.",
            )
        },
        "impression": {"one": "Mosaic attenuation pattern."},
    },
    {
        "label": "Pulmonary fibrotic sequela",
        "fields": "lobe",
        "per": "lesion",
        "say": {
            "one": (
                "Fibrotic sequela bands are observed in the {lobe}.",
                "Linear densities consistent with sequelae changes are seen in the {lobe}.",
            )
        },
        "impression": {"one": "Fibrotic sequelae."},
    },
)

LUNG_LABELS = (
    "Atelectasis",
    "Lung nodule",
    "Emphysema",
    "Consolidation",
    "Lung opacity",
    "Bronchiectasis",
    "Peribronchial thickening",
    "Interlobular septal thickening",
    "Mosaic attenuation pattern",
    "Pulmonary fibrotic sequela",
)
# negations after the lung findings: said with ``chance`` when none of ``absent`` was drawn
LUNG_NEGATIVES: tuple[dict[str, Any], ...] = (
    {
        "absent": ("Lung nodule", "Consolidation"),
        "chance": 0.8,
        "say": (
            "No mass or nodule was detected in both lungs.",
            "No nodule or mass lesion is observed in the lung parenchyma.",
        ),
    },
    {"absent": ("Emphysema",), "chance": 0.3, "say": "No emphysema was observed."},
    {
        "absent": ("Consolidation", "Lung opacity"),
        "chance": 0.5,
        "say": (
            "No consolidation or ground-glass opacity was detected.",
            "There is no active infiltration in both lungs.",
        ),
    },
    {"absent": LUNG_LABELS, "chance": 0.5, "say": "Both lungs are normally aerated."},
)

# upper abdomen: whether the study's field of view covers it (plan["abdomen"])
ABDOMEN: dict[bool, Templates] = {
    True: (
        "Liver, spleen, stomach and both kidneys within the sections are of normal appearance.",
        "Upper abdominal organs in the examination area are unremarkable.",
    ),
    False: (
        "No pathology was detected in the sections passing through the upper abdomen.",
        "Upper abdominal sections entering the examination area are natural.",
    ),
}
BONES: Templates = (
    "No lytic or destructive lesion was detected in the bone structures.",
    "Bone structures are unremarkable.",
    "No fracture or lytic-sclerotic lesion was observed in the bones.",
)
NORMAL_IMPRESSION: Templates = (
    "No significant pathology was detected in the thorax.",
    "Normal chest CT.",
    "Unremarkable non-contrast chest CT.",
)
PHYSICIAN = " Reported by {physician}."

# words that must appear (any of them, case-insensitive) in the Findings for each drawn lesion kind
MENTION_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Medical material": ("pacemaker", "port catheter", "sternotomy"),
    "Arterial wall calcification": ("aorta", "aortic"),
    "Cardiomegaly": ("cardiomegaly", "heart is enlarged", "heart size is increased", "enlarged heart"),
    "Pericardial effusion": ("pericardial effusion", "pericardial fluid"),
    "Coronary artery wall calcification": ("coronary",),
    "Hiatal hernia": ("hiatal hernia",),
    "Lymphadenopathy": ("lymph node", "lymphadenopathy"),
    "Emphysema": ("emphysema",),
    "Atelectasis": ("atelectasis",),
    "Lung nodule": ("nodule",),
    "Lung opacity": ("ground-glass", "ground glass"),
    "Pulmonary fibrotic sequela": ("sequela", "fibrotic"),
    "Pleural effusion": ("pleural effusion",),
    "Mosaic attenuation pattern": ("mosaic",),
    "Peribronchial thickening": ("peribronchial",),
    "Consolidation": ("consolidation",),
    "Bronchiectasis": ("bronchiectasis", "bronchiectatic"),
    "Interlobular septal thickening": ("septal thickening",),
}
