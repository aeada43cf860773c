"""Token-level candidate positions from a spaCy Doc, with per-word-type caches.

``doc.to_array([LOWER, IDX])`` gives every token's lower-case hash and character offset in one C call;
word types are classified once (cached by hash), so finding a report's candidate positions costs a few
numpy operations instead of a regular-expression scan of every character.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import re

import numpy as np


@dataclass
class TokenView:
    starts: np.ndarray      # int64 char offset of each token
    lowers: np.ndarray      # uint64 hash of each token's lower-case form
    strings: Any            # spaCy StringStore (hash -> text)

    @classmethod
    def from_doc(cls, doc: Any) -> "TokenView":
        from spacy.attrs import IDX, LOWER

        if len(doc) == 0:
            return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), doc.vocab.strings)
        array = doc.to_array([LOWER, IDX])
        return cls(array[:, 1].astype(np.int64), np.ascontiguousarray(array[:, 0]), doc.vocab.strings)

    @classmethod
    def from_text(cls, text: str) -> "TokenView":
        """For callers without a Doc (tests, one-off use): tokenise with spaCy's English tokenizer."""
        return cls.from_doc(_tokenizer()(text))


# words glued to punctuation inside one token ("examination.no", "ima:49"): their starts are candidates too
_GLUED = re.compile(r"[.:;,!?](?=\w)")
_WORD_AT = re.compile(r"[^\W\d_][\w'-]*")


def glued_word_starts(text: str) -> list[tuple[int, int, str]]:
    """(punctuation offset, word offset, lower-case word) for each word glued after punctuation."""
    found = []
    for match in _GLUED.finditer(text):
        word = _WORD_AT.match(text, match.end())
        found.append((match.start(), match.end(), word.group(0).lower() if word else ""))
    return found


def _member(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Boolean mask: which ``values`` occur in ``sorted_values`` (binary search, no sorting of values)."""
    if sorted_values.size == 0:
        return np.zeros(values.shape, dtype=bool)
    index = np.searchsorted(sorted_values, values)
    index[index == sorted_values.size] = 0
    return sorted_values[index] == values


class WordTypeFilter:
    """Which word types (lower-case forms) pass ``predicate``; classified once per type (by hash) and
    kept as sorted hash arrays, so a document costs a few numpy calls once its words have been seen."""

    def __init__(self, predicate: Callable[[str], bool]) -> None:
        self.predicate = predicate
        self.known = np.zeros(0, dtype=np.uint64)      # every classified hash, sorted
        self.passing = np.zeros(0, dtype=np.uint64)    # the classified hashes that pass, sorted

    def _learn(self, view: TokenView) -> None:
        unseen = view.lowers[~_member(self.known, view.lowers)]
        if unseen.size:
            # few per document once the vocabulary is known; np.unique has a large fixed cost here
            new = np.asarray(sorted(set(unseen.tolist())), dtype=np.uint64)
            flags = np.fromiter((bool(self.predicate(view.strings[value])) for value in new.tolist()), dtype=bool, count=new.size)
            self.known = np.sort(np.concatenate([self.known, new]))
            if flags.any():
                self.passing = np.sort(np.concatenate([self.passing, new[flags]]))

    def indices(self, view: TokenView) -> np.ndarray:
        """Indices of the tokens whose type passes, ascending."""
        if view.lowers.size == 0:
            return np.zeros(0, dtype=np.int64)
        self._learn(view)
        return np.flatnonzero(_member(self.passing, view.lowers))

    def positions(self, view: TokenView) -> np.ndarray:
        """Char offsets of the tokens whose type passes, ascending."""
        return view.starts[self.indices(view)]


_TOKENIZER: Any = None


def _tokenizer() -> Any:
    global _TOKENIZER
    if _TOKENIZER is None:
        import spacy

        _TOKENIZER = spacy.blank("en").tokenizer
    return _TOKENIZER
