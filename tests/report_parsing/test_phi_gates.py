"""The PHI rules' cheap necessary conditions (report_parsing.phi._gates), the date rule tried only where a
date can start, and the C-level english_ratio change no output: gated == ungated, a closed gate's rule
cannot match, fast == loop."""

from __future__ import annotations

import random
import re

from report_parsing.phi import _RULES, _gates, _phone_possible, _scrub_rules
from report_parsing.tables import _ENGLISH_FUNCTION_WORDS, _WORD, english_ratio
from tests.report_parsing.name_plants import plant
from tests.report_parsing.test_phi_scrub import CLINICAL, PHI_CASES

EXTRA = [
    "Seen on 3rd March 2021 and on Mar. 4, 2022; March 2020 too; 2020-01-02; 1/2/2020 and 12.03.21.",
    "Call (555) 123-4567 or +90 212 555 12 34; fax 555.123.4567. Case 12345 and A-123456.",
    "Reviewed by: Jane Doe. Signed: John Smith. -- Ali Veli\n~~ Mehmet Kaya",
    "Patient ID: 99-123; Accession No: A12; acc.no 44; TC kimlik no 12345678901; id 77; file no 8.",
    "Ataturk Caddesi No: 5, 12 Elm Road, Leeds. Address: somewhere 1. Saint Qwerty Hospital of Leeds.",
    "İstanbul Üniversitesi raporu: Ş Ç Ö İ in 2021 May 5. ΟΔΟΣ Σ.",
    "",
]


def _old_english_ratio(text: str) -> tuple[float, float, int]:
    words = _WORD.findall(text[:5000])
    if not words:
        return 0.0, 0.0, 0
    letters = "".join(words)
    ascii_letters = sum(1 for ch in letters if ch.isascii())
    function_words = sum(1 for word in words if word.lower() in _ENGLISH_FUNCTION_WORDS)
    return function_words / len(words), ascii_letters / len(letters), len(words)


def _texts() -> list[str]:
    return [case[0] for case in PHI_CASES] + CLINICAL + EXTRA


def test_gated_rules_equal_ungated_rules() -> None:
    for text in _texts():
        gated, ungated = _scrub_rules(text), _scrub_rules(text, gated=False)
        assert (gated.text, +gated.counts) == (ungated.text, +ungated.counts), text


def test_english_ratio_equals_the_loop_version() -> None:
    for text in _texts():
        assert english_ratio(text) == _old_english_ratio(text), text


def test_gates_on_the_ctrate_reports_and_plants(ctrate_texts: list[str]) -> None:
    rng = random.Random(3)
    texts = ctrate_texts + [plant(text, rng).text for text in ctrate_texts]
    for text in texts:
        gated, ungated = _scrub_rules(text), _scrub_rules(text, gated=False)
        assert (gated.text, +gated.counts) == (ungated.text, +ungated.counts), text[:200]
        assert english_ratio(text) == _old_english_ratio(text)


_PHONE_NEED = re.compile(r"(?:\)[\s.-]?|\d[\s.-])\d{3}[\s.-]?\d{2}")  # what every phone match holds


def _runs(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in re.finditer(r"\d+", text)]


def test_phone_gate_equals_its_expression_on_random_digit_strings() -> None:
    rng = random.Random(11)
    alphabet = "0123456789" * 3 + " .-/()+x\t"
    for _ in range(20_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 24)))
        assert _phone_possible(text, _runs(text)) == bool(_PHONE_NEED.search(text)), text


def test_a_closed_gate_means_the_rule_cannot_match(ctrate_texts: list[str]) -> None:
    """Each gate against its own rule on the unchanged text (stronger than gated == ungated, where an earlier
    substitution could hide a rule's match): a closed gate, no match."""
    rng = random.Random(5)
    texts = _texts() + ctrate_texts[:200] + [plant(text, rng).text for text in ctrate_texts[:200]]
    texts += ["Clinical information: cough. Call 0212 555 12 34.", "Clinics of Leeds; (0212) 5551234; 555-1234"]
    for text in texts:
        for gate, (_, pattern, _) in zip(_gates(text, text.lower()), _RULES, strict=True):
            assert gate or pattern.search(text) is None, (pattern.pattern[:60], text[:200])


def test_clinical_opens_no_institution_gate() -> None:
    gates = _gates("Clinical information: dyspnea.", "clinical information: dyspnea.")
    assert not gates[13] and not gates[14]
    assert _gates("Seen at Leeds Clinic.", "seen at leeds clinic.")[13]
