"""Per-anatomy report text against a silver LLM decomposition: our rule path vs a keyword baseline.

    .venv/bin/python benchmarks/anatomy_text.py [--split all|dev|held-out] [--worst N --anatomy heart]

Input: the LLM decomposition of 768 CT-RATE train reports in ``../shared/data/report_decomposition_ctrate/``
(fVLM layout, ``desc_info`` = Findings, ``conc_info`` = Conclusion; silver, CC BY-NC-SA: read at run time,
never copied). The report text is the volume's own ``Findings`` and ``Conclusion`` strings of those files
(the ct_clip/ CSVs hold other CT-RATE reports: only 15 of the 768 volumes appear in their
``map_train_classifier.csv``), joined CT-RATE style (``Findings "" Conclusion``) and parsed as one report.

**Token-F1** (per anatomy): every text is lower-cased and cut into tokens ``[a-z0-9]+``. For each report
and anatomy, ``A`` is the multiset of tokens of the text we assign to the anatomy (Findings and
Impression pieces together) and ``S`` the multiset of the silver text (``desc_info[volume][organ]`` +
``conc_info[volume][organ]``; missing organ = empty). ``overlap = |A ∩ S|`` (multiset intersection).
Counts are pooled over reports (micro average): ``P = Σ overlap / Σ |A|``, ``R = Σ overlap / Σ |S|``,
``F1 = 2PR / (P + R)``.

**Keyword baseline**: a sentence goes to an anatomy when it contains one of its organ words
(:data:`KEYWORDS`: lung/lungs/pulmonary, heart/cardiac/pericardial, esophagus/esophageal, aorta/aortic).

**Splits**: ``dev`` = the first 400 volumes in file order (what the rules were tuned on), ``held-out`` =
the other 368 (never looked at while tuning). Results are in docs/report_parsing.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("FVLM_SHARED_DATA", REPO.parent / "shared" / "data"))
SILVER = SHARED / "report_decomposition_ctrate"
DESC = SILVER / "desc_info_manual_v3.train_only.json"
CONC = SILVER / "conc_info_manual_v3.train_only.json"
ANATOMIES = ("lung", "heart", "esophagus", "aorta")
DEV_SIZE = 400
KEYWORDS: dict[str, tuple[str, ...]] = {
    "lung": ("lung", "lungs", "pulmonary"),
    "heart": ("heart", "cardiac", "pericardial"),
    "esophagus": ("esophagus", "esophageal"),
    "aorta": ("aorta", "aortic"),
}
_TOKEN = re.compile(r"[a-z0-9]+")
_FLATTENED_BREAK = re.compile(r" {2,}")


def tokens(text: str) -> Counter[str]:
    return Counter(_TOKEN.findall(text.lower()))


class Score:
    """Pooled token counts of one anatomy (see the module docstring)."""

    def __init__(self) -> None:
        self.overlap = self.assigned = self.silver = 0

    def add(self, assigned_text: str, silver_text: str) -> None:
        assigned, silver = tokens(assigned_text), tokens(silver_text)
        self.overlap += sum((assigned & silver).values())
        self.assigned += sum(assigned.values())
        self.silver += sum(silver.values())

    @property
    def precision(self) -> float:
        return self.overlap / self.assigned if self.assigned else 0.0

    @property
    def recall(self) -> float:
        return self.overlap / self.silver if self.silver else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


class SilverReport(NamedTuple):
    volume: str
    text: str  # Findings "" Conclusion, as parse-reports reads a CT-RATE text column
    silver: dict[tuple[str, str], str]  # (anatomy, findings | impression) -> silver text
    decomposed: frozenset[str]  # the sections whose decomposition names at least one organ


def load_silver(desc_path: Path = DESC, conc_path: Path = CONC) -> list[SilverReport]:
    """The silver reports in file order."""
    desc = json.loads(desc_path.read_text(encoding="utf-8"))
    conc = json.loads(conc_path.read_text(encoding="utf-8"))
    rows = []
    for volume, organs in desc.items():
        conclusion = conc.get(volume, {})
        # the decomposition flattened the impression's line breaks to runs of spaces: put them back
        impression = _FLATTENED_BREAK.sub("\n", conclusion.get("Conclusion", "").strip())
        text = f'{organs.get("Findings", "").strip()} "" {impression}'
        silver = {}
        for section, part in (("findings", organs), ("impression", conclusion)):
            for name in ANATOMIES:
                silver[name, section] = part.get(name, "").strip()
        decomposed = frozenset(
            section
            for section, part, own in (("findings", organs, "Findings"), ("impression", conclusion, "Conclusion"))
            if any(key != own for key in part)
        )
        rows.append(SilverReport(volume, text, silver, decomposed))
    return rows


def split_rows(rows: list[SilverReport], split: str) -> list[SilverReport]:
    if split == "dev":
        return rows[:DEV_SIZE]
    if split == "held-out":
        return rows[DEV_SIZE:]
    return rows


Assigned = dict[tuple[str, str], str]  # (anatomy, section) -> text


def ours(texts: Iterable[str]) -> list[Assigned]:
    """(anatomy, section) -> assigned text per report, the pieces parse-reports writes
    (``report_parsing.analyze.anatomy_text_pieces``)."""
    from core.anatomy_sets import load_anatomy_set
    from report_parsing.analyze import anatomy_text_pieces
    from report_parsing.pipeline import analyze_many

    names = list(load_anatomy_set("ctrate4").anatomy_names)
    out = []
    texts = list(texts)
    for text, analysis in zip(texts, analyze_many(texts, "ctrate4"), strict=True):
        pieces = anatomy_text_pieces(analysis, len(names))
        assigned: dict[tuple[str, str], list[str]] = {}
        for index, name in enumerate(names):
            for start, end, sentence in pieces[index]:
                section = analysis.sentence_sections[sentence]
                assigned.setdefault((name, section), []).append(text[start:end])
        out.append({key: " ".join(parts) for key, parts in assigned.items()})
    return out


def keyword_baseline(texts: Iterable[str]) -> list[Assigned]:
    from report_parsing.analyze import ReportAnalysis, add_sentences

    words = {name: re.compile(r"\b(?:" + "|".join(KEYWORDS[name]) + r")\b") for name in ANATOMIES}
    out = []
    for text in texts:
        analysis = ReportAnalysis()
        add_sentences(text, analysis)
        assigned: dict[tuple[str, str], list[str]] = {}
        for (start, end), section in zip(analysis.sentences, analysis.sentence_sections, strict=True):
            sentence = text[start:end]
            for name in ANATOMIES:
                if words[name].search(sentence.lower()):
                    assigned.setdefault((name, section), []).append(sentence)
        out.append({key: " ".join(parts) for key, parts in assigned.items()})
    return out


def score(
    rows: list[SilverReport], method: Callable[[Iterable[str]], list[Assigned]], *, decomposed_only: bool = False
) -> dict[str, Score]:
    """Token counts per anatomy; ``decomposed_only``: leave out the sections whose decomposition names no
    organ at all (the LLM returned nothing for them)."""
    assigned = method([row.text for row in rows])
    scores = {name: Score() for name in ANATOMIES}
    for row, mine in zip(rows, assigned, strict=True):
        sections = row.decomposed if decomposed_only else ("findings", "impression")
        for name in ANATOMIES:
            scores[name].add(
                " ".join(mine.get((name, section), "") for section in sections),
                " ".join(row.silver[name, section] for section in sections),
            )
    return scores


def format_table(title: str, ours_scores: dict[str, Score], keyword_scores: dict[str, Score]) -> str:
    lines = [title, f"{'anatomy':<10}  {'ours P / R / F1':<20}  {'keywords P / R / F1':<20}  ours >= keywords"]
    for name in ANATOMIES:
        o, k = ours_scores[name], keyword_scores[name]
        lines.append(
            f"{name:<10}  {o.precision:.2f} / {o.recall:.2f} / {o.f1:.2f}    "
            f"{k.precision:.2f} / {k.recall:.2f} / {k.f1:.2f}    {'yes' if o.f1 >= k.f1 else 'NO'}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("all", "dev", "held-out", "each"), default="each")
    parser.add_argument("--worst", type=int, default=0, help="print the N reports with most wrong tokens")
    parser.add_argument("--anatomy", default="heart", help="anatomy for --worst")
    args = parser.parse_args(argv)
    if not DESC.is_file() or not CONC.is_file():
        print(f"benchmark input not found: {SILVER}", file=sys.stderr)
        return 1
    rows = load_silver()
    splits = ("dev", "held-out", "all") if args.split == "each" else (args.split,)
    for split in splits:
        part = split_rows(rows, split)
        label = {"dev": f"dev (first {DEV_SIZE}, tuned on)", "held-out": f"held out (last {len(rows) - DEV_SIZE})"}
        for decomposed_only in (False, True):
            scope = "sections the LLM decomposed" if decomposed_only else "every section"
            title = f"{label.get(split, 'all')}: {len(part)} reports, {scope}, token-F1 vs silver"
            print(
                format_table(
                    title,
                    score(part, ours, decomposed_only=decomposed_only),
                    score(part, keyword_baseline, decomposed_only=decomposed_only),
                )
            )
            print()
    if args.worst:
        part = split_rows(rows, "dev" if args.split == "each" else args.split)
        mine = ours([row.text for row in part])
        errors = []
        for row, assigned in zip(part, mine, strict=True):
            sections = sorted(row.decomposed)
            ours_text = " ".join(assigned.get((args.anatomy, section), "") for section in sections)
            silver_text = " ".join(row.silver[args.anatomy, section] for section in sections)
            a, s = tokens(ours_text), tokens(silver_text)
            errors.append((sum((a - s).values()) + sum((s - a).values()), row.volume, ours_text, silver_text))
        for wrong, volume, ours_text, silver_text in sorted(errors, reverse=True)[: args.worst]:
            print(f"--- {volume}: {wrong} wrong tokens\n  ours:   {ours_text}\n  silver: {silver_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
