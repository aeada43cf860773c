"""CT-RATE-style English reports (Findings + Impression) that describe exactly what was drawn.

Several phrasings per finding and per normal statement, explicit negations for absent findings,
measurements and laterality/lobes taken from the lesion records, and (for some studies) planted fake
PHI in the text: a prior-examination date and the reading physician's name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LOBE_PHRASES = {
    "lung_upper_lobe_right": ("right lung upper lobe", "upper lobe of the right lung", "right upper lobe"),
    "lung_middle_lobe_right": ("right lung middle lobe", "middle lobe of the right lung", "right middle lobe"),
    "lung_lower_lobe_right": ("right lung lower lobe", "lower lobe of the right lung", "right lower lobe"),
    "lung_upper_lobe_left": ("left lung upper lobe", "upper lobe of the left lung", "left upper lobe"),
    "lung_lower_lobe_left": ("left lung lower lobe", "lower lobe of the left lung", "left lower lobe"),
}
CORONARY_NAMES = {"LAD": "left anterior descending artery", "RCA": "right coronary artery", "LCX": "circumflex artery"}

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


class _Writer:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def pick(self, *options: str) -> str:
        return str(options[int(self.rng.integers(0, len(options)))])

    def lobe(self, name: str) -> str:
        return self.pick(*LOBE_PHRASES[name])

    def lobes(self, lesions: list[dict[str, Any]]) -> str:
        """Each lesion's lobe named once, in order: "right lower lobe and lower lobe of the left lung"."""
        return _join([self.lobe(name) for name in dict.fromkeys(x["lobe"] for x in lesions)])

    def pick_for_lobes(self, lesions: list[dict[str, Any]], *templates: str) -> str:
        """One of ``templates`` with ``{lobes}`` = :meth:`lobes`. Each template draws its own lobe phrases
        before the pick, as the single-lesion f-strings did, so a one-lesion sentence uses the same random
        draws as before."""
        return self.pick(*[template.format(lobes=self.lobes(lesions)) for template in templates])

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def write_report(
    lesions: list[dict[str, Any]],
    labels: dict[str, int],
    plan: dict[str, Any],
    phi: dict[str, Any],
    rng: np.random.Generator,
) -> tuple[str, str, dict[str, bool]]:
    """Return (Findings, Impression, which PHI went into the text)."""
    w = _Writer(rng)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for lesion in lesions:
        by_label.setdefault(lesion["label"], []).append(lesion)
    has = by_label.__contains__
    findings: list[str] = []
    impression: list[str] = []
    planted = {"prior_date": w.chance(0.35), "physician": w.chance(0.45)}
    if planted["prior_date"]:
        findings.append(
            w.pick(
                f"Compared with the examination of {phi['report_prior_date']}.",
                f"The examination was evaluated together with the previous CT dated {phi['report_prior_date']}.",
                f"Comparison was made with the chest CT of {phi['report_prior_date']}.",
            )
        )

    # airways
    findings.append(
        w.pick(
            "Trachea and both main bronchi are in the midline and their lumens are open.",
            "The trachea and main bronchi are patent.",
            "Trachea and lumen of both main bronchi are open. No occlusive pathology was detected.",
        )
    )
    # heart
    if has("Cardiomegaly"):
        ratio = by_label["Cardiomegaly"][0]["cardiothoracic_ratio"]
        findings.append(
            w.pick(
                f"The heart is enlarged, with a cardiothoracic ratio of about {ratio:.2f}.",
                "Cardiomegaly is observed.",
                "Heart size is increased (cardiomegaly).",
            )
        )
        impression.append("Cardiomegaly.")
    else:
        findings.append(
            w.pick(
                "Heart contour and size are normal.",
                "Heart size is within normal limits.",
                "The heart has normal dimensions.",
            )
        )
    if has("Pericardial effusion"):
        thickness = round(by_label["Pericardial effusion"][0]["thickness_mm"])
        findings.append(
            w.pick(
                f"Pericardial effusion measuring {thickness} mm in thickness is observed.",
                f"There is pericardial fluid reaching {thickness} mm in thickness.",
            )
        )
        impression.append("Pericardial effusion.")
    else:
        findings.append(
            w.pick(
                "No pericardial effusion was detected.",
                "Pericardial effusion-thickening was not observed.",
                "There is no pericardial effusion.",
            )
        )
    if has("Coronary artery wall calcification"):
        vessels = by_label["Coronary artery wall calcification"][0]["vessels"]
        named = _join([CORONARY_NAMES[v] for v in vessels])
        findings.append(
            w.pick(
                f"Calcified atherosclerotic plaques are observed in the coronary arteries ({named}).",
                f"Coronary artery wall calcifications are noted in the {named}.",
            )
        )
        impression.append("Coronary artery calcification.")
    elif w.chance(0.3):
        findings.append("No coronary artery calcification was seen.")
    if has("Arterial wall calcification"):
        segments = by_label["Arterial wall calcification"][0]["segments"]
        order = ("ascending", "arch", "descending")
        where = _join(
            [
                {"ascending": "ascending aorta", "arch": "aortic arch", "descending": "descending aorta"}[s]
                for s in order
                if s in segments
            ]
        )
        findings.append(
            w.pick(
                f"Calcific atheromatous plaques are seen in the wall of the thoracic aorta ({where}).",
                f"Atherosclerotic wall calcifications are present in the {where}.",
            )
        )
        impression.append("Atherosclerotic calcification of the aortic wall.")
    else:
        findings.append(
            w.pick(
                "Calibration of the thoracic aorta is normal.",
                "The thoracic aorta has a normal diameter.",
                "Thoracic main vascular structures are of natural calibration.",
            )
        )
    # mediastinum
    if has("Lymphadenopathy"):
        nodes = sorted(by_label["Lymphadenopathy"], key=lambda n: -n["short_axis_mm"])
        if len(nodes) == 1:
            node = nodes[0]
            findings.append(
                w.pick(
                    f"A lymph node measuring {node['short_axis_mm']} mm in short axis is observed in the {node['station']} region.",
                    f"An enlarged lymph node ({node['short_axis_mm']} mm short axis) is present at the {node['station']} station.",
                )
            )
        else:
            stations = _join([n["station"] for n in nodes])
            findings.append(
                f"Enlarged lymph nodes are present in the {stations} stations, the largest "
                f"{nodes[0]['short_axis_mm']} mm in short axis."
            )
        impression.append("Mediastinal lymphadenopathy.")
    else:
        findings.append(
            w.pick(
                "No lymphadenopathy in pathological size was detected in the mediastinum or hilar regions.",
                "No mediastinal or hilar lymphadenopathy was observed.",
                "Lymph nodes in the mediastinum are of normal size.",
            )
        )
    if has("Hiatal hernia"):
        size = round(by_label["Hiatal hernia"][0]["size_mm"])
        findings.append(
            w.pick(
                f"A hiatal hernia measuring approximately {size} mm is observed.",
                "A sliding type hiatal hernia is present.",
                f"Part of the stomach herniates through the hiatus (hiatal hernia, about {size} mm).",
            )
        )
        impression.append("Hiatal hernia.")
    else:
        findings.append(
            w.pick(
                "Thoracic esophagus calibration is normal and no significant wall thickening was detected.",
                "The esophagus is unremarkable.",
                "No hiatal hernia was detected.",
            )
        )
    if has("Medical material"):
        kind = by_label["Medical material"][0]["kind"]
        findings.append(
            {
                "pacemaker": w.pick(
                    "A cardiac pacemaker is present, with its generator in the left pectoral region and the "
                    "lead extending into the right ventricle.",
                    "Pacemaker generator and lead are observed in the left hemithorax.",
                ),
                "port_catheter": w.pick(
                    "A port catheter is observed in the right anterior chest wall, its tip in the superior vena cava.",
                    "A venous port catheter is present on the right.",
                ),
                "sternotomy_wires": w.pick(
                    "Sternotomy wires are observed following median sternotomy.",
                    "Median sternotomy with sternotomy wires.",
                ),
            }[kind]
        )
        impression.append(
            {"pacemaker": "Pacemaker.", "port_catheter": "Port catheter.", "sternotomy_wires": "Sternotomy."}[kind]
        )
    # pleura
    if has("Pleural effusion"):
        effusions = by_label["Pleural effusion"]
        if len(effusions) == 2:
            thick = max(effusions, key=lambda e: e["thickness_mm"])
            findings.append(
                w.pick(
                    f"Bilateral pleural effusion is observed, more prominent on the {thick['side']} ({round(thick['thickness_mm'])} mm).",
                    f"Pleural effusion is present in both hemithoraces, reaching {round(thick['thickness_mm'])} mm on the {thick['side']}.",
                )
            )
            impression.append("Bilateral pleural effusion.")
        else:
            e = effusions[0]
            findings.append(
                w.pick(
                    f"Pleural effusion reaching {round(e['thickness_mm'])} mm in thickness is observed in the {e['side']} hemithorax.",
                    f"There is a {e['side']} pleural effusion with a thickness of {round(e['thickness_mm'])} mm.",
                )
            )
            impression.append(f"{e['side'].capitalize()} pleural effusion.")
    else:
        findings.append(
            w.pick(
                "No pleural effusion was detected.",
                "Pleural effusion-thickening was not detected in both hemithoraces.",
                "There is no pleural effusion.",
            )
        )
    # lungs
    lung_positive = False
    plates = [x for x in by_label.get("Atelectasis", []) if x["kind"] != "compressive_atelectasis"]
    for lesion in by_label.get("Atelectasis", []):
        lung_positive = True
        if lesion["kind"] == "compressive_atelectasis":
            findings.append(
                w.pick(
                    f"Compressive atelectasis is observed in the adjacent parenchyma of the {w.lobe(lesion['lobe'])}.",
                    f"Passive atelectasis is seen adjacent to the effusion in the {w.lobe(lesion['lobe'])}.",
                )
            )
            impression.append("Atelectasis.")
    if plates:  # one sentence for all plates (learnable draws 2-3), naming each lobe once
        findings.append(
            w.pick_for_lobes(
                plates,
                "Plate-like atelectasis is observed in the {lobes}.",
                "Subsegmental atelectasis is present in the {lobes}.",
            )
        )
        impression.append("Atelectasis.")
    if has("Lung nodule"):
        lung_positive = True
        nodules = sorted(by_label["Lung nodule"], key=lambda n: -n["diameter_mm"])
        big = nodules[0]
        size = max(int(round(big["diameter_mm"])), 1)
        if len(nodules) == 1:
            findings.append(
                w.pick(
                    f"A {size} mm solid nodule is observed in the {w.lobe(big['lobe'])}.",
                    f"There is a solid nodule measuring {size} mm in diameter in the {w.lobe(big['lobe'])}.",
                    f"A {size} mm nodule is present in the {w.lobe(big['lobe'])}.",
                )
            )
            impression.append(f"{size} mm nodule in the {w.lobe(big['lobe'])}.")
        elif len(nodules) > 4:  # learnable: many nodules are summarised, as a radiologist would
            largest_other = max(int(round(nodules[1]["diameter_mm"])), 1)
            others_lobes = w.lobes(nodules[1:])
            findings.append(
                f"Multiple solid nodules are observed, the largest {size} mm in the {w.lobe(big['lobe'])}; "
                f"{len(nodules) - 1} others measuring up to {largest_other} mm are seen in the {others_lobes}."
            )
            impression.append(f"Multiple lung nodules, the largest {size} mm.")
        else:
            others = ", ".join(
                f"{max(int(round(n['diameter_mm'])), 1)} mm in the {w.lobe(n['lobe'])}" for n in nodules[1:]
            )
            findings.append(
                f"Multiple solid nodules are observed, the largest {size} mm in the {w.lobe(big['lobe'])}; "
                f"others measure {others}."
            )
            impression.append(f"Multiple lung nodules, the largest {size} mm.")
    if has("Emphysema"):
        lung_positive = True
        e = by_label["Emphysema"][0]
        where = "the upper lobes of both lungs" if e["side"] == "both" else f"the {w.lobe(e['lobes'][0])}"
        findings.append(
            w.pick(
                f"{e['severity'].capitalize()} centrilobular emphysematous changes are observed in {where}.",
                f"Emphysema is present in {where}.",
            )
        )
        impression.append("Emphysema.")
    for lesion in by_label.get("Consolidation", []):
        lung_positive = True
        findings.append(
            w.pick(
                f"A consolidation area is observed in the {w.lobe(lesion['lobe'])}.",
                f"Consolidation measuring approximately {round(lesion['size_mm'])} mm is present in the "
                f"{w.lobe(lesion['lobe'])}.",
            )
        )
        impression.append(f"Consolidation in the {w.lobe(lesion['lobe'])}.")
    for lesion in by_label.get("Lung opacity", []):
        lung_positive = True
        findings.append(
            w.pick(
                f"Ground-glass opacity is observed in the {w.lobe(lesion['lobe'])}.",
                f"An area of ground glass density is seen in the {w.lobe(lesion['lobe'])}.",
            )
        )
        impression.append("Ground-glass opacity.")
    bronchiectasis = by_label.get("Bronchiectasis", [])
    if bronchiectasis:  # one sentence naming each lobe once (learnable draws two lobes)
        lung_positive = True
        findings.append(
            w.pick_for_lobes(
                bronchiectasis,
                "Cylindrical bronchiectasis is observed in the {lobes}.",
                "Bronchiectatic changes are present in the {lobes}.",
            )
        )
        impression.append("Bronchiectasis.")
    if has("Peribronchial thickening"):
        lung_positive = True
        findings.append(
            w.pick(
                "Peribronchial thickening is observed in both lungs.",
                "Bronchial wall thickening (peribronchial thickening) is noted bilaterally.",
            )
        )
        impression.append("Peribronchial thickening.")
    for lesion in by_label.get("Interlobular septal thickening", []):
        lung_positive = True
        where = "the lower lobes of both lungs" if lesion["side"] == "both" else f"the {w.lobe(lesion['lobes'][0])}"
        findings.append(
            w.pick(
                f"Interlobular septal thickening is observed in {where}.",
                f"Smooth interlobular septal thickening is present in {where}.",
            )
        )
        impression.append("Interlobular septal thickening.")
    if has("Mosaic attenuation pattern"):
        lung_positive = True
        findings.append(
            w.pick(
                "A mosaic attenuation pattern is observed in both lungs.",
                "Mosaic attenuation is present in both lung parenchyma.",
            )
        )
        impression.append("Mosaic attenuation pattern.")
    for lesion in by_label.get("Pulmonary fibrotic sequela", []):
        lung_positive = True
        findings.append(
            w.pick(
                f"Fibrotic sequela bands are observed in the {w.lobe(lesion['lobe'])}.",
                f"Linear densities consistent with sequelae changes are seen in the {w.lobe(lesion['lobe'])}.",
            )
        )
        impression.append("Fibrotic sequelae.")
    negatives = []
    if not has("Lung nodule") and not has("Consolidation") and w.chance(0.8):
        negatives.append(
            w.pick(
                "No mass or nodule was detected in both lungs.",
                "No nodule or mass lesion is observed in the lung parenchyma.",
            )
        )
    if not has("Emphysema") and w.chance(0.3):
        negatives.append("No emphysema was observed.")
    if not has("Consolidation") and not has("Lung opacity") and w.chance(0.5):
        negatives.append(
            w.pick(
                "No consolidation or ground-glass opacity was detected.",
                "There is no active infiltration in both lungs.",
            )
        )
    if not lung_positive and w.chance(0.5):
        negatives.append("Both lungs are normally aerated.")
    findings.extend(negatives)
    # abdomen and bones
    if plan.get("abdomen"):
        findings.append(
            w.pick(
                "Liver, spleen, stomach and both kidneys within the sections are of normal appearance.",
                "Upper abdominal organs in the examination area are unremarkable.",
            )
        )
    else:
        findings.append(
            w.pick(
                "No pathology was detected in the sections passing through the upper abdomen.",
                "Upper abdominal sections entering the examination area are natural.",
            )
        )
    findings.append(
        w.pick(
            "No lytic or destructive lesion was detected in the bone structures.",
            "Bone structures are unremarkable.",
            "No fracture or lytic-sclerotic lesion was observed in the bones.",
        )
    )

    if not impression:
        impression.append(
            w.pick(
                "No significant pathology was detected in the thorax.",
                "Normal chest CT.",
                "Unremarkable non-contrast chest CT.",
            )
        )
    impression_text = " ".join(impression)
    if planted["physician"]:
        impression_text += f" Reported by {phi['report_physician']}."
    return " ".join(findings), impression_text, planted


def mentioned(label: str, text: str) -> bool:
    """Whether ``text`` mentions a finding of ``label`` (used by tests)."""
    lowered = text.lower()
    return any(word in lowered for word in MENTION_KEYWORDS[label])
