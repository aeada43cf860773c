"""core.io: atomic writes leave only recognisable temporary files, and a stage start removes a killed run's."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.io import atomic_path, is_atomic_tmp, remove_stale_tmp_files


def test_a_killed_writer_leaves_only_a_tmp_file_the_next_start_removes(tmp_path: Path) -> None:
    final = tmp_path / "volumes" / "st_abc.nii.gz"
    with pytest.raises(KeyboardInterrupt), atomic_path(final) as tmp:
        tmp.write_bytes(b"half")
        assert is_atomic_tmp(tmp.name)
        raise KeyboardInterrupt  # the context manager removes its own tmp file; a kill -9 would not
    assert not final.exists()
    # what a kill -9 leaves: the mkstemp name, kept as is
    killed = final.parent / ".st_abc.nii.gz.tmp-p3xpokc_.nii.gz"
    killed.write_bytes(b"")
    keep = [final.parent / ".gitignore", final.parent / "st_abc.tmp-notours.nii.gz", tmp_path / "studies.parquet"]
    for path in keep:
        path.write_bytes(b"x")
    assert is_atomic_tmp(killed.name)
    assert remove_stale_tmp_files(tmp_path) == [killed]
    assert all(path.exists() for path in keep)
    assert remove_stale_tmp_files(tmp_path / "absent") == []
