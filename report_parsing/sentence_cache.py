"""Per-sentence memo of the analysis: report templates repeat the same sentences across reports.

Half of the sentences of the 800 CT-CLIP labelled CT-RATE reports were already met in an earlier report
of the same file (``No pleural effusion was detected.``, ``Trachea, both main bronchi are open.``);
the share grows with the cohort. A sentence's anatomies and findings are a pure function of its
lower-case text (every expression is bounded by the sentence: ``pattern.match(text, pos, endpos)``),
so they are computed once and reused, offsets relative to the sentence start.

The memo is bounded (oldest half dropped when full) and safe to share between threads: reads and
writes are single dict operations; only the eviction takes a lock.
"""

from __future__ import annotations

import threading
from typing import Any

DEFAULT_MAX_ENTRIES = 1 << 17  # ~130k sentences per (stage, anatomy set, policy): tens of MB


class SentenceCache:
    """Bounded memo ``lower-case sentence -> immutable result``."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.entries: dict[str, Any] = {}
        self.max_entries = max_entries
        self.lookups = 0  # statistics (approximate under threads; see sentence_cache_stats)
        self.misses = 0
        self._lock = threading.Lock()

    def put(self, key: str, value: Any) -> None:
        entries = self.entries
        if len(entries) >= self.max_entries:
            with self._lock:
                if len(entries) >= self.max_entries:
                    for old in list(entries)[: max(1, len(entries) // 2)]:  # list(dict): one C call
                        entries.pop(old, None)
        entries[key] = value

    def count(self, lookups: int, misses: int) -> None:
        self.lookups += lookups
        self.misses += misses

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.lookups = self.misses = 0


_CACHES: dict[tuple, SentenceCache] = {}
_CACHES_LOCK = threading.Lock()


def sentence_cache(*key: Any) -> SentenceCache:
    """The process-wide memo for one (stage, configuration) key, e.g. ``("findings", "ctrate4", True)``."""
    cache = _CACHES.get(key)
    if cache is None:
        with _CACHES_LOCK:
            cache = _CACHES.setdefault(key, SentenceCache())
    return cache


def clear_sentence_caches() -> None:
    """Forget every memoised sentence (benchmarks measuring a cold start; tests)."""
    for cache in list(_CACHES.values()):
        cache.clear()


def sentence_cache_stats() -> dict[str, float]:
    """Lookups, misses and hit rate summed over all memos."""
    lookups = sum(cache.lookups for cache in _CACHES.values())
    misses = sum(cache.misses for cache in _CACHES.values())
    return {"lookups": lookups, "misses": misses, "hit_rate": 1.0 - misses / lookups if lookups else 0.0}
