"""Zero-shot prompts are never sentences of the synthetic generator's templates (synthetic/report*.py).

A prompt the generator writes verbatim ("No pleural effusion was detected.") makes the benchmark measure
retrieval of a sentence the text tower saw, not reading. Every string literal of the generator is a
template: its ``{...}`` fields match any text, and a prompt fails if it can be one of its sentences.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

import synthetic.reports
from core.anatomy_sets import CTRATE_LABELS, available_sets, load_anatomy_set, load_prompt_sets

FIELD = "\x00"  # stands for a {...} field of an f-string or a .format template
# what a field opening a sentence holds in the generator: a size, a side (pleural effusion), a severity
OPENING_FIELD = r"(?:\d+|left|right|both|bilateral|mild|moderate|severe)"
# fVLM's positive "X." is, by construction, the Impression sentence of a finding (core/prompt_sets.yaml)
VERBATIM_ALLOWED = {("fvlm", "positive")}


def _literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.sub(r"\{[A-Za-z_]+\}", FIELD, node.value)
    if isinstance(node, ast.JoinedStr):
        parts = [v.value if isinstance(v, ast.Constant) else FIELD for v in node.values]
        return "".join(str(p) for p in parts)
    return None


@cache
def template_sentences() -> tuple[re.Pattern[str], ...]:
    """Every sentence of every string literal of the generator, as a regex (fields match any text)."""
    # the report writer and any template table beside it (synthetic/report*.py)
    sources = sorted(Path(synthetic.reports.__file__).parent.glob("report*.py"))
    trees = [ast.parse(source.read_text()) for source in sources]
    texts = {text for tree in trees for node in ast.walk(tree) if (text := _literal_text(node))}
    patterns = []
    for text in texts:
        for sentence in re.split(r"(?<=[.;])\s+", text.strip()):
            # a sentence opens with a capital (or a field) and ends with a full stop; other literals are
            # fragments ("the {lobe}") that only appear inside the sentence templates checked here
            if sentence.endswith(".") and (sentence[0].isupper() or sentence[0] == FIELD):
                # a field opening a sentence is one word (OPENING_FIELD); inside a sentence it may be
                # several (lobes, "the lower lobes of both lungs")
                first, *rest = sentence.split(FIELD)
                if first == "" and rest:
                    body = OPENING_FIELD + re.escape(rest.pop(0))
                else:
                    body = re.escape(first)
                body += "".join(".+" + re.escape(piece) for piece in rest)
                patterns.append(re.compile(body, re.IGNORECASE))
    return tuple(patterns)


def generator_sentence(prompt: str) -> str | None:
    """The template sentence ``prompt`` can be, or None."""
    return next((p.pattern for p in template_sentences() if p.fullmatch(prompt.strip())), None)


def test_the_template_reader_finds_the_generators_sentences() -> None:
    assert generator_sentence("No pleural effusion was detected.")
    assert generator_sentence("Cardiomegaly is observed.")
    assert generator_sentence("Ground-glass opacity is observed in the right lower lobe.")  # a field
    assert generator_sentence("Both lungs are normally aerated.")
    assert generator_sentence("Left pleural effusion.")  # an opening field
    assert generator_sentence("No pleural effusion is seen.") is None
    assert generator_sentence("Not pleural effusion.") is None


@pytest.mark.parametrize("set_name", sorted(load_prompt_sets()))
def test_no_prompt_set_uses_a_generator_sentence(set_name: str) -> None:
    clashes = [
        (label, side, text, generator_sentence(text))
        for label, pair in load_prompt_sets()[set_name].items()
        for side, text in zip(("negative", "positive"), pair, strict=True)
        if (set_name, side) not in VERBATIM_ALLOWED and generator_sentence(text)
    ]
    assert not clashes, f"core/prompt_sets.yaml {set_name!r}: prompts the generator writes verbatim: {clashes}"


@pytest.mark.parametrize("set_name", available_sets())
def test_default_prompts_and_normal_sentences_are_not_generator_sentences(set_name: str) -> None:
    anatomy_set = load_anatomy_set(set_name)
    texts = [text for label in CTRATE_LABELS for text in anatomy_set.prompts[label]]
    texts += list(anatomy_set.normal_prompts.values())
    clashes = {text: generator_sentence(text) for text in texts if generator_sentence(text)}
    assert not clashes, f"core/anatomy_sets.yaml {set_name!r}: prompts the generator writes verbatim: {clashes}"


def test_prompt_sets_cover_fvlm_and_at_least_three_wordings() -> None:
    sets = load_prompt_sets()
    assert len(sets) >= 3 and "fvlm" in sets
    assert sets["fvlm"]["Cardiomegaly"] == ("Not cardiomegaly.", "Cardiomegaly.")
    assert {len({pairs[label] for pairs in sets.values()}) for label in CTRATE_LABELS} == {len(sets)}  # distinct
