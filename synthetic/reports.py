"""CT-RATE-style English reports (Findings + Impression) that describe exactly what was drawn.

Several phrasings per finding and per normal statement, explicit negations for absent findings,
measurements and laterality/lobes taken from the lesion records, and (for some studies) planted fake
PHI in the text: a prior-examination date and the reading physician's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from synthetic.report_templates import (
    ABDOMEN,
    AIRWAYS,
    AORTA_SEGMENTS,
    BONES,
    CORONARY_NAMES,
    FINDING_RULES,
    LOBE_PHRASES,
    LUNG_NEGATIVES,
    MENTION_KEYWORDS,
    NORMAL_IMPRESSION,
    PHYSICIAN,
    PLANT_CHANCE,
    PRIOR_EXAMINATION,
    Templates,
)

Lesion = dict[str, Any]


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

    def say(self, templates: Templates, fields: _Fields) -> str:
        """A plain template filled in; of a tuple, every template filled in, then one drawn."""
        if isinstance(templates, str):
            return templates.format_map(fields)
        return self.pick(*[template.format_map(fields) for template in templates])

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _mm(nodule: Lesion) -> int:
    return max(int(round(nodule["diameter_mm"])), 1)


class _Fields(dict[str, Any]):
    """The named fields of one sentence. ``{lobe}`` (of ``lobe_of``) and ``{lobes}`` (of ``lobes_of``) are
    drawn at each use: every template of a choice draws its own lobe phrases before the pick, as the
    hand-written f-strings did, so the random stream (and every report) stays the same."""

    def __init__(
        self, writer: _Writer, values: dict[str, Any], lobe_of: str | None = None, lobes_of: list[Lesion] | None = None
    ) -> None:
        super().__init__(values)
        self.writer, self.lobe_of, self.lobes_of = writer, lobe_of, lobes_of

    def __missing__(self, key: str) -> str:
        if key == "lobe" and self.lobe_of is not None:
            return self.writer.lobe(self.lobe_of)
        if key == "lobes" and self.lobes_of is not None:
            return self.writer.lobes(self.lobes_of)
        raise KeyError(f"report template field {{{key}}} has no value: see synthetic/report_templates.py")


FieldReader = Callable[[list[Lesion], dict[str, Any], "_Writer"], tuple[str, _Fields]]


# field readers: (the lesions one sentence describes, its rule, writer) -> (case, fields); named by rule["fields"]
def _one_measure(name: str, key: str, rounded: bool = True) -> FieldReader:
    def read(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
        value = lesions[0][key]
        return "one", _Fields(w, {name: round(value) if rounded else value})

    return read


def _coronary(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    return "one", _Fields(w, {"vessels": _join([CORONARY_NAMES[v] for v in lesions[0]["vessels"]])})


def _aorta(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    segments = lesions[0]["segments"]
    return "one", _Fields(w, {"segments": _join([name for s, name in AORTA_SEGMENTS.items() if s in segments])})


def _lymph_nodes(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    nodes = sorted(lesions, key=lambda n: -n["short_axis_mm"])
    if len(nodes) == 1:
        return "one", _Fields(w, {"mm": nodes[0]["short_axis_mm"], "station": nodes[0]["station"]})
    return "several", _Fields(w, {"mm": nodes[0]["short_axis_mm"], "stations": _join([n["station"] for n in nodes])})


def _pleural_effusion(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    if len(lesions) == 2:
        thick = max(lesions, key=lambda e: e["thickness_mm"])
        return "both", _Fields(w, {"side": thick["side"], "mm": round(thick["thickness_mm"])})
    e = lesions[0]
    return "one", _Fields(w, {"side": e["side"], "Side": e["side"].capitalize(), "mm": round(e["thickness_mm"])})


def _nodules(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    nodules = sorted(lesions, key=lambda n: -n["diameter_mm"])
    big, others = nodules[0], nodules[1:]
    if not others:
        return "one", _Fields(w, {"size": _mm(big)}, lobe_of=big["lobe"])
    if len(others) > 3:  # the others' lobes are drawn before the largest one's, as the old code did
        counted = {"count": len(others), "largest_other": _mm(others[0]), "others_lobes": w.lobes(others)}
        return "many", _Fields(w, {"size": _mm(big), **counted}, lobe_of=big["lobe"])
    listed = ", ".join(rule["other_nodule"].format_map(_Fields(w, {"size": _mm(n)}, lobe_of=n["lobe"])) for n in others)
    return "few", _Fields(w, {"size": _mm(big), "others": listed}, lobe_of=big["lobe"])


def _where(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    e = lesions[0]
    one_side = _Fields(w, {}, lobe_of=e["lobes"][0])
    where = rule["both_sides"] if e["side"] == "both" else rule["one_side"].format_map(one_side)
    return "one", _Fields(w, {"where": where, **({"Severity": e["severity"].capitalize()} if "severity" in e else {})})


def _lobe(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    e = lesions[0]
    return "one", _Fields(w, {"size": round(e["size_mm"])} if "size_mm" in e else {}, lobe_of=e["lobe"])


def _lobes(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    return "one", _Fields(w, {}, lobes_of=lesions)


def _device_kind(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    return lesions[0]["kind"], _Fields(w, {})


def _no_fields(lesions: list[Lesion], rule: dict[str, Any], w: _Writer) -> tuple[str, _Fields]:
    return "one", _Fields(w, {})


FIELD_READERS: dict[str, FieldReader] = {
    "cardiomegaly": _one_measure("ratio", "cardiothoracic_ratio", rounded=False),
    "thickness": _one_measure("thickness", "thickness_mm"),
    "size": _one_measure("size", "size_mm"),
    "coronary": _coronary,
    "aorta": _aorta,
    "lymph_nodes": _lymph_nodes,
    "pleural_effusion": _pleural_effusion,
    "nodules": _nodules,
    "where": _where,
    "lobe": _lobe,
    "lobes": _lobes,
    "device_kind": _device_kind,
    "none": _no_fields,
}


def _selected(lesion: Lesion, select: dict[str, str]) -> bool:
    return ("kind" not in select or lesion["kind"] == select["kind"]) and (
        "kind_not" not in select or lesion["kind"] != select["kind_not"]
    )


def _describe(rule: dict[str, Any], by_label: dict[str, list[Lesion]], w: _Writer) -> tuple[list[str], list[str]]:
    """(Findings sentences, impression phrases) of one rule of ``FINDING_RULES``."""
    lesions = [x for x in by_label.get(rule["label"], []) if _selected(x, rule.get("select", {}))]
    if not lesions:
        absent = rule["label"] not in by_label and "normal" in rule
        if absent and ("normal_chance" not in rule or w.chance(rule["normal_chance"])):
            return [w.say(rule["normal"], _Fields(w, {}))], []
        return [], []
    said, concluded = [], []
    for group in [[x] for x in lesions] if rule.get("per") == "lesion" else [lesions]:
        case, fields = FIELD_READERS[rule["fields"]](group, rule, w)
        if rule.get("say_all"):
            said.append({name: w.say(templates, fields) for name, templates in rule["say"].items()}[case])
        else:
            said.append(w.say(rule["say"][case], fields))
        concluded.append(rule["impression"][case].format_map(fields))
    return said, concluded


def write_report(
    lesions: list[dict[str, Any]],
    labels: dict[str, int],
    plan: dict[str, Any],
    phi: dict[str, Any],
    rng: np.random.Generator,
) -> tuple[str, str, dict[str, bool]]:
    """Return (Findings, Impression, which PHI went into the text): the templates of
    :mod:`synthetic.report_templates` said for the drawn ``lesions``."""
    w = _Writer(rng)
    by_label: dict[str, list[Lesion]] = {}
    for lesion in lesions:
        by_label.setdefault(lesion["label"], []).append(lesion)
    planted = {name: w.chance(p) for name, p in PLANT_CHANCE.items()}
    findings: list[str] = []
    if planted["prior_date"]:
        findings.append(w.say(PRIOR_EXAMINATION, _Fields(w, {"date": phi["report_prior_date"]})))
    findings.append(w.say(AIRWAYS, _Fields(w, {})))
    impression: list[str] = []
    for rule in FINDING_RULES:
        said, concluded = _describe(rule, by_label, w)
        findings += said
        impression += concluded
    for negative in LUNG_NEGATIVES:
        if not any(label in by_label for label in negative["absent"]) and w.chance(negative["chance"]):
            findings.append(w.say(negative["say"], _Fields(w, {})))
    findings.append(w.say(ABDOMEN[bool(plan.get("abdomen"))], _Fields(w, {})))
    findings.append(w.say(BONES, _Fields(w, {})))
    if not impression:
        impression.append(w.say(NORMAL_IMPRESSION, _Fields(w, {})))
    impression_text = " ".join(impression)
    if planted["physician"]:
        impression_text += PHYSICIAN.format(physician=phi["report_physician"])
    return " ".join(findings), impression_text, planted


def mentioned(label: str, text: str) -> bool:
    """Whether ``text`` mentions a finding of ``label`` (used by tests)."""
    lowered = text.lower()
    return any(word in lowered for word in MENTION_KEYWORDS[label])
