"""Token-level candidate positions from a spaCy Doc, with per-word-type caches.

``doc.to_array([LOWER, IDX])`` gives every token's lower-case hash and character offset in one C call;
word types are classified once (cached by hash), so finding a report's candidate positions costs a few
numpy operations instead of a regular-expression scan of every character.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import re
import threading

import numpy as np


@dataclass
class TokenView:
    starts: np.ndarray      # int64 char offset of each token
    lowers: np.ndarray      # uint64 hash of each token's lower-case form
    strings: Any            # spaCy StringStore (hash -> text)
    _typed: tuple[np.ndarray, "_TypeState"] | None = None   # (type row of each token, table state), lazy

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


class _TypeState(NamedTuple):
    """One immutable snapshot of the type table (swapped whole, so threads never see a half update)."""

    known: np.ndarray                # every word-type hash seen so far, sorted
    words: list[str]                 # their lower-case forms, same order
    columns: tuple[np.ndarray, ...]  # one value per known type, per classifier


class TypeTable:
    """Every word type (lower-case hash) seen so far, sorted, with one value column per registered
    classifier (a pure function of the lower-case form). A document's tokens are classified by all
    classifiers with a single ``searchsorted``; unseen types are classified once, when first met.
    Thread-safe: readers use one immutable :class:`_TypeState`; writers swap in a new one under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.classifiers: list[tuple[Callable[[str], Any], Any]] = []
        self.state = _TypeState(np.zeros(0, dtype=np.uint64), [], ())

    def register(self, classify: Callable[[str], Any], dtype: Any) -> int:
        """Add a classifier; returns its column number (already-known types are classified now)."""
        with self._lock:
            state = self.state
            column = np.fromiter((classify(word) for word in state.words), dtype=dtype, count=len(state.words))
            self.classifiers.append((classify, dtype))
            self.state = state._replace(columns=state.columns + (column,))
            return len(self.classifiers) - 1

    def typed(self, view: TokenView) -> tuple[np.ndarray, _TypeState]:
        """(row of each token's type, the table state those rows index)."""
        lowers = view.lowers
        state = self.state
        if lowers.size == 0:
            return np.zeros(0, dtype=np.int64), state
        if state.known.size:
            index = np.searchsorted(state.known, lowers)
            np.minimum(index, state.known.size - 1, out=index)
            if (state.known[index] == lowers).all():
                return index, state
        with self._lock:
            state = self.state
            if state.known.size:
                index = np.minimum(np.searchsorted(state.known, lowers), state.known.size - 1)
                unseen = lowers[state.known[index] != lowers]
            else:
                unseen = lowers
            if unseen.size:
                state = self.state = self._learned(state, sorted(set(unseen.tolist())), view.strings)
        return np.searchsorted(state.known, lowers), state

    def _learned(self, state: _TypeState, new_hashes: list[int], strings: Any) -> _TypeState:
        new_words = [strings[value] for value in new_hashes]
        known = np.concatenate([state.known, np.asarray(new_hashes, dtype=np.uint64)])
        order = np.argsort(known, kind="stable")
        words = state.words + new_words
        columns = []
        for (classify, dtype), column in zip(self.classifiers, state.columns):
            new_values = np.fromiter((classify(word) for word in new_words), dtype=dtype, count=len(new_words))
            columns.append(np.concatenate([column, new_values])[order])
        return _TypeState(known[order], [words[i] for i in order.tolist()], tuple(columns))

    def values(self, column: int, view: TokenView) -> np.ndarray:
        """The classifier's value for each token of ``view``."""
        typed = view._typed
        if typed is None or column >= len(typed[1].columns):
            typed = view._typed = self.typed(view)
        ids, state = typed
        return state.columns[column][ids]


TYPE_TABLE = TypeTable()


# words glued to punctuation inside one token ("examination.no", "ima:49"): their starts are candidates too
_GLUED = re.compile(r"[.:;,!?](?=\w)")
_WORD_AT = re.compile(r"[^\W\d_][\w'-]*")


_LAST_GLUED: tuple[str, list[tuple[int, int, str]]] = ("", [])


def glued_word_starts(text: str) -> list[tuple[int, int, str]]:
    """(punctuation offset, word offset, lower-case word) for each word glued after punctuation
    (the last text's result is kept: the finding and the cue scans ask for the same report)."""
    global _LAST_GLUED
    last = _LAST_GLUED   # one read: other threads may swap the global in between
    if text is last[0]:
        return last[1]
    found = []
    for match in _GLUED.finditer(text):
        word = _WORD_AT.match(text, match.end())
        found.append((match.start(), match.end(), word.group(0).lower() if word else ""))
    _LAST_GLUED = (text, found)
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
