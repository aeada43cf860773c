"""Convert's persistent index of the files it has read: stat data -> the file's discovery record and hash.

A nightly convert over an archive of known studies must cost O(changed) file reads, not a header read and a
content hash of every file: a file whose (size, mtime_ns, ctime_ns, inode) is the one recorded is not opened
again; its header record (:class:`preprocessing.dicom_discovery.FileRecord`, which carries the file's
SHA-256) is taken from the index. The walk (``os.scandir`` + one ``stat`` per file) is the only part that
grows with the archive.

The index lives outside every DVC output (``core.layout.convert_index_path``: ``<root>/.fvlm-private/convert-index``),
one per input folder. It is dropped whole when its fingerprint changes (index format, the input path, the
study key tag, the discovery code, the pydicom version), so a code change never serves a record that the
new code would read differently.

Racy entries (git's "racy clean" problem): a file rewritten within the file system's timestamp granularity
of the scan that recorded it can keep its stat data. An entry is trusted only when the file's mtime and
ctime are older than that scan's start minus :data:`RACY_WINDOW_NS` (NFS and FAT timestamps are coarse);
younger ones are read again (and become trusted at the next run).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INDEX_FORMAT = "convert-file-index-1"
RACY_WINDOW_NS = 2_000_000_000  # entries whose mtime / ctime lie this close to the recording scan are re-read

StatKey = tuple[int, int, int, int]  # (size, mtime_ns, ctime_ns, inode)


def stat_key(stat: os.stat_result) -> StatKey:
    return (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def index_fingerprint(root: Path, study_key_tag: str, code_files: tuple[Path, ...]) -> str:
    """What the stored records depend on besides the files themselves."""
    from importlib.metadata import version

    digest = hashlib.sha256()
    for part in (INDEX_FORMAT, str(root), str(root.resolve()), study_key_tag, version("pydicom")):
        digest.update(part.encode() + b"\0")
    for code in code_files:
        digest.update(code.read_bytes())
    return digest.hexdigest()


@dataclass
class FileIndex:
    """Entries by the file's path relative to the input root; :meth:`save` writes only when something changed."""

    path: Path | None
    fingerprint: str
    entries: dict[str, tuple[StatKey, Any]] = field(default_factory=dict)
    trusted_before_ns: int = 0  # the recording scan's start minus the racy window
    started_ns: int = field(default_factory=time.time_ns)
    changed: bool = False
    hits: int = 0

    @classmethod
    def load(cls, path: Path | None, fingerprint: str) -> FileIndex:
        """The stored index at ``path`` (an empty one when missing, unreadable or of another fingerprint)."""
        index = cls(path=path, fingerprint=fingerprint)
        if path is None or not path.is_file():
            return index
        try:
            with open(path, "rb") as handle:
                stored = pickle.load(handle)
        except Exception as error:  # a torn or foreign file: start again, never fail the stage
            logger.warning("file index %s unreadable (%s); reading every header", path, type(error).__name__)
            index.changed = True
            return index
        if not isinstance(stored, dict) or stored.get("fingerprint") != fingerprint:
            index.changed = True
            return index
        index.entries = stored["entries"]
        index.trusted_before_ns = stored["started_ns"] - RACY_WINDOW_NS
        return index

    def lookup(self, relative: str, key: StatKey) -> Any | None:
        """The stored record of ``relative`` when its stat data are unchanged and not racy, else None."""
        entry = self.entries.get(relative)
        if entry is None or entry[0] != key or max(key[1], key[2]) >= self.trusted_before_ns:
            return None
        self.hits += 1
        return entry[1]

    def store(self, relative: str, key: StatKey, record: Any) -> None:
        self.entries[relative] = (key, record)
        self.changed = True

    def save(self, seen: set[str]) -> None:
        """Keep only the entries of ``seen`` (files of this walk) and write the index atomically when changed."""
        from core.io import atomic_path

        if len(seen) != len(self.entries):
            self.entries = {relative: entry for relative, entry in self.entries.items() if relative in seen}
            self.changed = True
        if self.path is None or not self.changed:
            return
        payload = {"fingerprint": self.fingerprint, "started_ns": self.started_ns, "entries": self.entries}
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
