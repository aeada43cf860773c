"""Planted person names for de-identification tests and benchmarks: many first / last names (English,
Turkish, Spanish, German, Arabic, ...; some are English words too: Rose, Hunter, Baker), in the patterns
that reach reports (a bare sentence, a kinship mention, "of Last, First", "Patient First Last", titles,
signatures), inserted at a sentence boundary of a real report text at test time (nothing is stored)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

FIRST_NAMES = (
    "Wilhelmina Tobias Quentina Bartholomew Ayse Mehmet Elif Mustafa Zeynep Emre Fatma Hakan Leyla Burak Selin "
    "Gregory Margaret Jonathan Priya Rajesh Aisha Omar Fatima Youssef Lucia Alejandro Sofia Mateo Ingrid Lars "
    "Henrik Annelise Dmitri Natasha Kenji Yuki Chen Wei Olumide Chiamaka Siobhan Declan Rose Hunter Grace Joy "
    "Carmen Esperanza Giuseppe Francesca Bogdan Agnieszka Thaddeus Philippa Cornelius Evangeline Ebru Volkan"
).split()
LAST_NAMES = (
    "Pemberton Zyxwvut Yilmaz Kaya Demir Sahin Celik Ozturk Aydin Arslan Dogan Kilicarslan Whitfield Ashworth "
    "Okonkwo Adeyemi Nakamura Takahashi Kowalski Nowak Schneider Fischer Lindqvist Johansson Rossi Esposito "
    "Fernandez Gutierrez Castillo Haddad Khalil Mansour Patel Sharma Ivanova Petrov Murphy Gallagher Baker "
    "Hunter Thornbury Featherstone Vasquez Moreau Lefebvre Dubois Okafor Mwangi Haverford Blackwood"
).split()
REASONS = ("dyspnea", "chest pain", "cough", "follow-up", "fever", "a routine control")

# (kind, template): {first} / {last} filled in; every kind but "title" / "signature" has no cue the rules know
PATTERNS: tuple[tuple[str, str], ...] = (
    ("bare", "{first} {last} was scanned for {reason}."),
    ("bare", "{first} {last} underwent the examination without complication."),
    ("bare", "The findings were explained to {first} {last} by phone."),
    ("kinship", "The results were discussed with her son {first} {last}."),
    ("kinship", "His wife {first} {last} accompanied the patient."),
    ("kinship", "Her husband, {first}, was present."),
    ("comma", "Compared with the prior examination of {last}, {first}."),
    ("patient", "Patient {first} {last} tolerated the procedure well."),
    ("title", "Mr. {last} was informed."),
    ("signature", "Dictated by {first} {last}, MD."),
)


@dataclass(frozen=True)
class Plant:
    text: str  # the report with the sentence inserted
    kind: str
    first: str
    last: str
    sentence: str


def plant(report: str, rng: random.Random, kind: str | None = None) -> Plant:
    """``report`` with one planted-name sentence after a random sentence end (or at the end)."""
    choices = [p for p in PATTERNS if kind is None or p[0] == kind]
    chosen_kind, template = rng.choice(choices)
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    sentence = template.format(first=first, last=last, reason=rng.choice(REASONS))
    ends = [match.end() for match in re.finditer(r"\.\s", report)]
    cut = rng.choice(ends) if ends else len(report)
    text = report[:cut].rstrip() + " " + sentence + " " + report[cut:].lstrip()
    return Plant(text.strip(), chosen_kind, first, last, sentence)


def planted_names_left(plant_: Plant, scrubbed: str) -> list[str]:
    """The planted name words still in ``scrubbed`` (as whole words)."""
    return [name for name in (plant_.first, plant_.last) if re.search(rf"\b{re.escape(name)}\b", scrubbed)]
