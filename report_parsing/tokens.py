"""Token-level candidate positions from a spaCy Doc, with per-word-type caches.

``doc.to_array(IDX)`` / ``doc.to_array(LOWER)`` give every token's character offset / lower-case hash in one C call;
word types are classified once (cached by hash), so finding a report's candidate positions costs a few
numpy operations instead of a regular-expression scan of every character.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class TokenView:
    """Token offsets and lower-case hashes of a text (a Doc's tokens), read lazily: a report whose
    sentences are all memoised never needs the hashes."""

    __slots__ = ("starts", "_lowers", "strings", "_doc", "_typed")

    def __init__(self, starts: np.ndarray, lowers: np.ndarray | None, strings: Any, doc: Any = None) -> None:
        self.starts = starts  # int64 char offset of each token
        self._lowers = lowers  # uint64 hash of each token's lower-case form (None: read from doc)
        self.strings = strings  # spaCy StringStore (hash -> text)
        self._doc = doc
        self._typed: tuple[np.ndarray, _TypeState] | None = None  # (type row of each token, table state)

    @property
    def lowers(self) -> np.ndarray:
        if self._lowers is None:
            from spacy.attrs import LOWER

            self._lowers = np.ascontiguousarray(self._doc.to_array(LOWER), dtype=np.uint64)
            self._doc = None
        return self._lowers

    @classmethod
    def from_doc(cls, doc: Any) -> TokenView:
        from spacy.attrs import IDX

        if len(doc) == 0:
            return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64), doc.vocab.strings)
        return cls(doc.to_array(IDX).astype(np.int64), None, doc.vocab.strings, doc)

    def tokens_within(self, starts: list[int], ends: list[int]) -> TokenView:
        """A view of the tokens starting inside the spans ``[starts[i], ends[i])`` (ascending,
        disjoint), each span with the token before it (it may run into the span)."""
        firsts = (self.starts.searchsorted(starts, side="right") - 1).tolist()
        stops = self.starts.searchsorted(ends, side="left").tolist()
        ranges: list[tuple[int, int]] = []
        covered = 0
        for first, stop in zip(firsts, stops, strict=False):
            first = max(first, covered)  # the token before a span may close the previous one
            if stop > first:
                ranges.append((first, stop))
                covered = stop
        if len(ranges) == 1:
            first, stop = ranges[0]
            return TokenView(self.starts[first:stop], self.lowers[first:stop], self.strings)
        index = (
            np.concatenate([np.arange(first, stop) for first, stop in ranges])
            if ranges
            else np.zeros(0, dtype=np.int64)
        )
        return TokenView(self.starts[index], self.lowers[index], self.strings)

    @classmethod
    def from_text(cls, text: str) -> TokenView:
        """For callers without a Doc (tests, one-off use): tokenise with spaCy's English tokenizer."""
        return cls.from_doc(_tokenizer()(text))


class Limits:
    """Character spans (ascending, disjoint) that bound every match: an expression tried at a position
    inside span ``[start, end)`` runs as ``pattern.match(text, position, end)``; positions outside
    every span are skipped. ``Limits.whole(text)`` is one span over everything."""

    __slots__ = ("starts", "ends")

    def __init__(self, starts: list[int], ends: list[int]) -> None:
        self.starts = starts
        self.ends = ends

    @classmethod
    def whole(cls, text: str) -> Limits:
        return cls([0], [len(text)])

    def ends_for(self, positions: np.ndarray) -> np.ndarray:
        """:meth:`end_of` of each position (int64 array)."""
        starts = np.asarray(self.starts, dtype=np.int64)
        index = np.searchsorted(starts, positions, side="right") - 1
        ends = np.asarray(self.ends, dtype=np.int64)[np.maximum(index, 0)]
        return np.where((index >= 0) & (positions < ends), ends, -1)

    def end_of(self, position: int) -> int:
        """End of the span holding ``position``, or -1 when none does."""
        index = bisect.bisect_right(self.starts, position) - 1
        if index >= 0:
            end = self.ends[index]
            if position < end:
                return end
        return -1


class _TypeState(NamedTuple):
    """One immutable snapshot of the type table (swapped whole, so threads never see a half update)."""

    known: np.ndarray  # every word-type hash seen so far, sorted
    rows: np.ndarray  # the row (order of first sight) of each sorted hash
    words: list[str]  # lower-case forms, by row
    columns: tuple[np.ndarray, ...]  # one value per row, per classifier


def _empty_state(dtypes: list[Any]) -> _TypeState:
    return _TypeState(
        np.zeros(0, dtype=np.uint64),
        np.zeros(0, dtype=np.int64),
        [],
        tuple(np.zeros(0, dtype=dtype) for dtype in dtypes),
    )


class TypeTable:
    """Every word type (lower-case hash) seen so far, with one value column per registered classifier
    (a pure function of the lower-case form). A document's tokens are classified by all classifiers
    with a single ``searchsorted``; unseen types are classified once, when first met, and merged in
    (rows are appended; only the sorted hash index is re-merged).
    Thread-safe: readers use one immutable :class:`_TypeState`; writers swap in a new one under a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.classifiers: list[tuple[Callable[[str], Any], Any]] = []
        self.state = _empty_state([])

    def register(self, classify: Callable[[str], Any], dtype: Any) -> int:
        """Add a classifier; returns its column number (already-known types are classified now)."""
        with self._lock:
            state = self.state
            column = np.fromiter((classify(word) for word in state.words), dtype=dtype, count=len(state.words))
            self.classifiers.append((classify, dtype))
            self.state = state._replace(columns=state.columns + (column,))
            return len(self.classifiers) - 1

    def forget(self) -> None:
        """Drop every learnt word type (a cold start, for benchmarks); classifiers stay registered."""
        with self._lock:
            self.state = _empty_state([dtype for _, dtype in self.classifiers])

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
                return state.rows[index], state
        with self._lock:
            state = self.state
            if state.known.size:
                index = np.minimum(np.searchsorted(state.known, lowers), state.known.size - 1)
                unseen = lowers[state.known[index] != lowers]
            else:
                unseen = lowers
            if unseen.size:
                state = self.state = self._learned(state, np.unique(unseen), view.strings)
        return state.rows[np.searchsorted(state.known, lowers)], state

    def _learned(self, state: _TypeState, new_hashes: np.ndarray, strings: Any) -> _TypeState:
        """``state`` plus the (sorted, distinct, unseen) ``new_hashes`` (called under the lock)."""
        new_words = [strings[value] for value in new_hashes.tolist()]
        first_row = len(state.words)
        # rows only grow and snapshots index rows < their columns' length: the words list is shared
        # and appended in place (copying it for every report with a new word would cost O(table))
        state.words.extend(new_words)
        new_rows = np.arange(first_row, first_row + len(new_words), dtype=np.int64)
        columns = tuple(
            np.concatenate(
                [column, np.fromiter((classify(word) for word in new_words), dtype=dtype, count=len(new_words))]
            )
            for (classify, dtype), column in zip(self.classifiers, state.columns, strict=False)
        )
        at = state.known.searchsorted(new_hashes)
        known, rows = np.insert(state.known, at, new_hashes), np.insert(state.rows, at, new_rows)
        return _TypeState(known, rows, state.words, columns)

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
    last = _LAST_GLUED  # one read: other threads may swap the global in between
    if text is last[0]:
        return last[1]
    found = []
    for match in _GLUED.finditer(text):
        word = _WORD_AT.match(text, match.end())
        found.append((match.start(), match.end(), word.group(0).lower() if word else ""))
    _LAST_GLUED = (text, found)
    return found


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
