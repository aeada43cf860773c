"""Anatomy sets, loaded from ``anatomy_sets.yaml``: the one definition shared by all stages.

An :class:`AnatomySet` says, for each anatomy (in index order: mask value ``k + 1``, text slot ``k``),
which TotalSegmentator ``total`` classes form it, which words point a report sentence at it, which of
the 18 CT-RATE labels belong to it and the zero-shot (negative, positive) prompt pair per label (a named
set of ``prompt_sets.yaml``, :func:`load_prompt_sets`, or the set's own ``prompts``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ANATOMY_SETS_FILE = Path(__file__).with_name("anatomy_sets.yaml")
PROMPT_SETS_FILE = Path(__file__).with_name("prompt_sets.yaml")  # set name -> label -> [negative, positive]

CTRATE_LABELS: tuple[str, ...] = (
    "Medical material",
    "Arterial wall calcification",
    "Cardiomegaly",
    "Pericardial effusion",
    "Coronary artery wall calcification",
    "Hiatal hernia",
    "Lymphadenopathy",
    "Emphysema",
    "Atelectasis",
    "Lung nodule",
    "Lung opacity",
    "Pulmonary fibrotic sequela",
    "Pleural effusion",
    "Mosaic attenuation pattern",
    "Peribronchial thickening",
    "Consolidation",
    "Bronchiectasis",
    "Interlobular septal thickening",
)


@dataclass(frozen=True)
class Anatomy:
    name: str
    classes: tuple[str, ...]  # TotalSegmentator `total` class names
    vocabulary: tuple[str, ...]  # lower-case words / phrases


@dataclass(frozen=True)
class AnatomySet:
    name: str
    description: str
    anatomies: tuple[Anatomy, ...]
    label_anatomy: dict[str, str | None]  # CT-RATE label -> anatomy name (None: not in this set)
    prompts: dict[str, tuple[str, str]]  # label -> (negative prompt, positive prompt)
    normal_prompts: dict[str, str] = field(default_factory=dict)  # anatomy -> its normal description

    @property
    def anatomy_names(self) -> tuple[str, ...]:
        return tuple(anatomy.name for anatomy in self.anatomies)

    @property
    def labels(self) -> tuple[str, ...]:
        return CTRATE_LABELS

    def index(self, anatomy_name: str) -> int:
        return self.anatomy_names.index(anatomy_name)

    def scored_labels(self) -> tuple[str, ...]:
        """Labels with an anatomy in this set (evaluated zero-shot), in CT-RATE order."""
        return tuple(label for label in CTRATE_LABELS if self.label_anatomy.get(label))

    def class_ids(self) -> dict[str, tuple[int, ...]]:
        """Anatomy name -> TotalSegmentator `total` class ids."""
        name_to_id = totalseg_name_to_id()
        return {a.name: tuple(name_to_id[c] for c in a.classes) for a in self.anatomies}

    def lookup_table(self, max_class_id: int = 255) -> Any:
        """uint8 array mapping a TotalSegmentator id to this set's anatomy index + 1 (0 = none).

        When anatomies share a class, the first anatomy in set order wins.
        """
        import numpy as np

        table = np.zeros(max_class_id + 1, dtype=np.uint8)
        for position, ids in enumerate(self.class_ids().values(), start=1):
            for class_id in ids:
                if table[class_id] == 0:
                    table[class_id] = position
        return table


@functools.lru_cache(maxsize=1)
def totalseg_name_to_id() -> dict[str, int]:
    """TotalSegmentator `total` task: class name -> label id (its own class map)."""
    from totalsegmentator.map_to_binary import class_map

    return {name: int(class_id) for class_id, name in class_map["total"].items()}


@functools.lru_cache(maxsize=1)
def _raw_sets() -> dict[str, Any]:
    return yaml.safe_load(ANATOMY_SETS_FILE.read_text())


def available_sets() -> tuple[str, ...]:
    return tuple(_raw_sets())


@functools.cache
def load_prompt_sets() -> dict[str, dict[str, tuple[str, str]]]:
    """``prompt_sets.yaml``: set name -> CT-RATE label -> (negative, positive), every set giving all 18 labels."""
    raw = yaml.safe_load(PROMPT_SETS_FILE.read_text()) or {}
    sets: dict[str, dict[str, tuple[str, str]]] = {}
    for set_name, pairs in raw.items():
        missing = sorted(set(CTRATE_LABELS) - set(pairs or {}))
        unknown = sorted(set(pairs or {}) - set(CTRATE_LABELS))
        if missing or unknown:
            raise ValueError(
                f"{PROMPT_SETS_FILE}: prompt set {set_name!r} must give the 18 CT-RATE labels "
                f"(missing {missing}, unknown {unknown})"
            )
        for label, pair in pairs.items():
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(p, str) and p for p in pair):
                raise ValueError(
                    f"{PROMPT_SETS_FILE}: {set_name!r} / {label!r} must be [negative, positive], got {pair!r}"
                )
        sets[str(set_name)] = {label: (pair[0], pair[1]) for label, pair in pairs.items()}
    return sets


def prompt_set(name: str) -> dict[str, tuple[str, str]]:
    """One prompt set of ``prompt_sets.yaml`` (label -> (negative, positive))."""
    sets = load_prompt_sets()
    if name not in sets:
        raise KeyError(f"unknown prompt set {name!r} (in {PROMPT_SETS_FILE}); known: {', '.join(sets)}")
    return sets[name]


@functools.cache
def load_anatomy_set(name: str) -> AnatomySet:
    raw_sets = _raw_sets()
    if name not in raw_sets:
        raise KeyError(f"unknown anatomy set {name!r}; known: {', '.join(raw_sets)}")
    raw = raw_sets[name]
    anatomies = []
    for anatomy_name, spec in raw["anatomies"].items():
        classes = spec.get("classes")
        if classes is None:
            classes = raw_sets[spec["classes_from"]]["anatomies"][anatomy_name]["classes"]
        vocabulary = spec.get("vocabulary")
        if vocabulary is None:
            vocabulary = raw_sets[spec["vocabulary_from"]]["anatomies"][anatomy_name]["vocabulary"]
        anatomies.append(Anatomy(anatomy_name, tuple(classes), tuple(w.lower() for w in vocabulary)))
    labels = dict(raw["labels"])
    unknown = set(labels) - set(CTRATE_LABELS)
    if unknown or len(labels) != len(CTRATE_LABELS):
        raise ValueError(f"anatomy set {name!r}: labels must be exactly the 18 CT-RATE labels ({sorted(unknown)})")
    prompts_source = raw
    while "prompts" not in prompts_source and "prompt_set" not in prompts_source:
        prompts_source = raw_sets[prompts_source["extends_labels_from"]]
    if "prompt_set" in prompts_source:  # a named set of prompt_sets.yaml
        prompts = dict(prompt_set(str(prompts_source["prompt_set"])))
    else:
        prompts = {label: (pair[0], pair[1]) for label, pair in prompts_source["prompts"].items()}
    names = {a.name for a in anatomies}
    # the set's own normal descriptions win over those inherited with the prompts
    inherited = {**prompts_source.get("normal_prompts", {}), **raw.get("normal_prompts", {})}
    normal_prompts = {anatomy: str(text) for anatomy, text in inherited.items() if anatomy in names}
    for label, anatomy_name in labels.items():
        if anatomy_name is not None and anatomy_name not in names:
            raise ValueError(f"anatomy set {name!r}: label {label!r} maps to unknown anatomy {anatomy_name!r}")
        if anatomy_name is not None and label not in prompts:
            raise ValueError(f"anatomy set {name!r}: label {label!r} has no prompt pair")
    return AnatomySet(name, raw.get("description", ""), tuple(anatomies), labels, prompts, normal_prompts)
