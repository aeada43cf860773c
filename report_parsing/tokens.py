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
    _type_ids: np.ndarray | None = None   # index of each token's type in TYPE_TABLE (lazy, see type_ids)
    _table_version: int = -1

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

    def type_ids(self) -> np.ndarray:
        """Row of each token's word type in :data:`TYPE_TABLE` (one binary search per document,
        shared by every classifier)."""
        if self._type_ids is None or self._table_version != TYPE_TABLE.version:
            self._type_ids = TYPE_TABLE.ids(self)
            self._table_version = TYPE_TABLE.version
        return self._type_ids


class TypeTable:
    """Every word type (lower-case hash) seen so far, sorted, with one value column per registered
    classifier (a pure function of the lower-case form). A document's tokens are classified by all
    classifiers with a single ``searchsorted``; unseen types are classified once, when first met."""

    def __init__(self) -> None:
        self.known = np.zeros(0, dtype=np.uint64)
        self.words: list[str] = []
        self.classifiers: list[tuple[Callable[[str], Any], Any]] = []
        self.columns: list[np.ndarray] = []
        self.version = 0

    def register(self, classify: Callable[[str], Any], dtype: Any) -> int:
        """Add a classifier; returns its column number (already-known types are classified now)."""
        self.classifiers.append((classify, dtype))
        self.columns.append(np.fromiter((classify(word) for word in self.words), dtype=dtype, count=len(self.words)))
        self.version += 1
        return len(self.columns) - 1

    def ids(self, view: TokenView) -> np.ndarray:
        lowers = view.lowers
        if lowers.size == 0:
            return np.zeros(0, dtype=np.int64)
        if self.known.size:
            index = np.searchsorted(self.known, lowers)
            np.minimum(index, self.known.size - 1, out=index)
            seen = self.known[index] == lowers
            if seen.all():
                return index
            unseen = lowers[~seen]
        else:
            unseen = lowers
        self._learn(sorted(set(unseen.tolist())), view.strings)
        return np.searchsorted(self.known, lowers)

    def _learn(self, new_hashes: list[int], strings: Any) -> None:
        new_words = [strings[value] for value in new_hashes]
        known = np.concatenate([self.known, np.asarray(new_hashes, dtype=np.uint64)])
        order = np.argsort(known, kind="stable")
        words = self.words + new_words
        self.known = known[order]
        self.words = [words[i] for i in order.tolist()]
        for number, (classify, dtype) in enumerate(self.classifiers):
            new_values = np.fromiter((classify(word) for word in new_words), dtype=dtype, count=len(new_words))
            self.columns[number] = np.concatenate([self.columns[number], new_values])[order]
        self.version += 1

    def values(self, column: int, view: TokenView) -> np.ndarray:
        """The classifier's value for each token of ``view``."""
        ids = view.type_ids()
        return self.columns[column][ids]


TYPE_TABLE = TypeTable()


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
    """Which word types (lower-case forms) pass ``predicate``; classified once per type in the shared
    :data:`TYPE_TABLE`, so a document costs a few numpy calls once its words have been seen."""

    def __init__(self, predicate: Callable[[str], bool]) -> None:
        self.predicate = predicate
        self.column = TYPE_TABLE.register(lambda word: bool(predicate(word)), bool)

    def indices(self, view: TokenView) -> np.ndarray:
        """Indices of the tokens whose type passes, ascending."""
        if view.lowers.size == 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(TYPE_TABLE.values(self.column, view))

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
