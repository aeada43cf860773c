"""Small I/O helpers shared by the stages: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; rename it into place only on success.

    A killed writer leaves at most a hidden ``.<name>.tmp-*`` file, never a partial ``final_path``.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix(es) so writers that look at the extension (.nii.gz, .parquet) still work
    suffix = "".join(final.suffixes)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=suffix, dir=final.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


# what atomic_path's mkstemp names look like: ".<final name>.tmp-<8 random chars><suffixes>"
TMP_FILE_PATTERN = re.compile(r"^\.(?P<final>.+)\.tmp-[a-z0-9_]{8}")


def is_atomic_tmp(name: str) -> bool:
    """``name`` is a temporary file of :func:`atomic_path` (a writer's, or one a killed writer left)."""
    return TMP_FILE_PATTERN.match(name) is not None


def remove_stale_tmp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files a killed writer left under ``folder`` (recursively); the removed paths.

    Called when a stage starts, before it writes (and so before DVC tracks the folder): a stage owns
    its output folder while it runs (``dvc repro`` holds its lock), so no live writer's file is touched.
    """
    removed: list[Path] = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for directory, _, files in os.walk(root):
        for name in files:
            if is_atomic_tmp(name):
                path = Path(directory) / name
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed.append(path)
    return removed


def atomic_write_bytes(final_path: str | os.PathLike[str], payload: bytes) -> None:
    with atomic_path(final_path) as tmp:
        tmp.write_bytes(payload)


def atomic_write_text(final_path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(final_path, text.encode())


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """One hash over several files' contents, independent of the order they are given in."""
    digest = hashlib.sha256()
    for file_hash in sorted(sha256_file(p) for p in paths):
        digest.update(file_hash.encode())
    return digest.hexdigest()
