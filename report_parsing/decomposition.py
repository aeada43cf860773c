"""Released per-anatomy decompositions as the anatomy text: fVLM's ``desc_info.json`` / ``conc_info.json``.

Layout (the public fVLM CT-RATE code, and any LLM output written the same way): one JSON object per file,
``volume -> {organ: text}``; ``desc_info`` holds the Findings decomposition (plus the whole ``Findings``
text under that key), ``conc_info`` the Impression one (``Conclusion``). Organ keys are TotalSegmentator
class names or their stems (``lung``, ``heart``, ``esophagus``, ``aorta``, ``kidney``, ``rib`` ...).

What parse-reports makes of it (``reports.decomposition``), per study x anatomy of the anatomy set:

* organ keys map to the anatomy whose name is the key or whose TotalSegmentator classes are the key or
  start with ``key_`` (``lung`` -> the 5 lobes, ``kidney`` -> ``kidney_left``/``_right``); other keys go to
  ``other``;
* text = Conclusion part then Findings part, each ending with ``.`` (the order fVLM trains on); an anatomy
  the decomposition does not name gets fVLM's template ``{anatomy} shows no significant abnormalities.``;
* abnormal = the anatomy is named and its text does not start with that template (fVLM's flag);
* the 18 labels stay those of our labeller (the report text is parsed as usual).

A study whose key is not in the decomposition keeps the rule-based anatomy text (counted in the
summary). Keys are matched as given, then as CT-RATE volume names without the reconstruction suffix
(``train_1_a_1.nii.gz`` -> ``train_1_a``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

DESC_NAMES = ("desc_info.json",)
CONC_NAMES = ("conc_info.json",)
_WHOLE_TEXT_KEYS = frozenset({"Findings", "Conclusion", "Impression"})
_RECONSTRUCTION = re.compile(r"(?:\.nii(?:\.gz)?)$")
_RECONSTRUCTION_INDEX = re.compile(r"_\d+$")


class DecompositionError(ValueError):
    """A decomposition file that cannot be used (the message names the file and what to do)."""


def normal_template(anatomy: str) -> str:
    """fVLM's text for an organ the decomposition does not name (also its normal flag's test)."""
    return f"{anatomy} shows no significant abnormalities."


@dataclass(frozen=True)
class AnatomyText:
    text: str
    abnormal: bool
    named: bool  # the decomposition names the anatomy (else the text is the normal template)


def _find(folder: Path, names: tuple[str, ...], pattern: str) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    matches = sorted(folder.glob(pattern))
    return matches[0] if len(matches) == 1 else None


def decomposition_files(path: str | Path) -> tuple[Path | None, Path | None]:
    """(desc_info, conc_info) of a folder holding them (``desc_info*.json`` / ``conc_info*.json``), or of
    one file (a ``desc_info`` / ``conc_info`` file by its name; another name is read as ``desc_info``)."""
    path = Path(path)
    if path.is_dir():
        desc, conc = _find(path, DESC_NAMES, "desc_info*.json"), _find(path, CONC_NAMES, "conc_info*.json")
        if desc is None and conc is None:
            raise DecompositionError(
                f"{path}: no desc_info*.json / conc_info*.json here: point reports.decomposition at the folder "
                "holding fVLM's desc_info.json and conc_info.json (or at one of them)"
            )
        return desc, conc
    if not path.is_file():
        raise DecompositionError(
            f"{path}: decomposition not found (reports.decomposition): give a folder or a JSON file"
        )
    return (None, path) if path.name.startswith("conc_info") else (path, None)


def _read(path: Path) -> dict[str, dict[str, str]]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecompositionError(f"{path}: cannot read the decomposition JSON: {error}") from error
    if not isinstance(raw, dict):
        raise DecompositionError(f"{path}: expected an object volume -> {{organ: text}}, got {type(raw).__name__}")
    for volume, organs in raw.items():
        if not isinstance(organs, dict) or not all(isinstance(v, str) for v in organs.values()):
            raise DecompositionError(
                f"{path}: volume {volume!r}: expected an object organ -> text (strings), as fVLM's desc_info.json"
            )
    return raw


class Decomposition:
    """The per-anatomy text of every volume of a decomposition, for one anatomy set."""

    def __init__(self, desc: dict[str, dict[str, str]], conc: dict[str, dict[str, str]], anatomy_set_name: str) -> None:
        from core.anatomy_sets import load_anatomy_set

        anatomy_set = load_anatomy_set(anatomy_set_name)
        self.anatomy_names = tuple(anatomy_set.anatomy_names)
        self._classes = [tuple(anatomy.classes) for anatomy in anatomy_set.anatomies]
        self.desc, self.conc = desc, conc
        self.unknown_organs: set[str] = set()

    @classmethod
    def load(cls, path: str | Path, anatomy_set_name: str) -> Decomposition:
        desc_path, conc_path = decomposition_files(path)
        return cls(_read(desc_path) if desc_path else {}, _read(conc_path) if conc_path else {}, anatomy_set_name)

    def anatomy_of(self, organ: str) -> int | None:
        """Index of the anatomy an organ key belongs to (None: ``other``)."""
        key = organ.strip().lower()
        for index, (name, classes) in enumerate(zip(self.anatomy_names, self._classes, strict=True)):
            if key == name or any(c == key or c.startswith(f"{key}_") for c in classes):
                return index
        return None

    def key_for(self, study_key: str) -> str | None:
        """The decomposition's volume key of a study (as given, else without the CT-RATE reconstruction
        suffix), or None."""
        for candidate in (study_key, _RECONSTRUCTION.sub("", study_key)):
            if candidate in self.desc or candidate in self.conc:
                return candidate
            stem = _RECONSTRUCTION_INDEX.sub("", candidate)
            if stem in self.desc or stem in self.conc:
                return stem
        return None

    def texts(self, volume: str) -> list[AnatomyText]:
        """Per anatomy of the set plus a last ``other`` slot: fVLM's text and abnormal flag."""
        n = len(self.anatomy_names)
        parts: list[list[str]] = [[] for _ in range(n + 1)]
        # fVLM: conclusion text first, then the findings text
        for source in (self.conc.get(volume, {}), self.desc.get(volume, {})):
            for organ, text in source.items():
                text = text.strip()
                if organ in _WHOLE_TEXT_KEYS or not text:
                    continue
                index = self.anatomy_of(organ)
                if index is None:
                    self.unknown_organs.add(organ)
                    index = n
                parts[index].append(text if text.endswith(".") else f"{text}.")
        out = []
        for index in range(n + 1):
            name = self.anatomy_names[index] if index < n else "other"
            if parts[index]:
                text = " ".join(parts[index])
                out.append(AnatomyText(text, not text.startswith(normal_template(name)), True))
            else:
                out.append(AnatomyText(normal_template(name) if index < n else "", False, False))
        return out
