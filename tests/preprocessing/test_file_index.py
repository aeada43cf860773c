"""Convert's file index (preprocessing/file_index.py): a no-op run reads no file, outputs never change."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tests.preprocessing.convert_job import convert_dir
from tests.preprocessing.dicom_factory import write_ct_series


def output_hashes(out: Path) -> dict[str, str]:
    return {
        path.relative_to(out).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(out.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    root = tmp_path / "dicom"
    write_ct_series(root / "P01" / "s2", n_slices=10, seed=1)
    write_ct_series(root / "P02" / "s2", n_slices=11, seed=2)
    (root / "P02" / "notes.txt").write_text("not a DICOM file")
    (root / "P02" / "empty.dcm").write_bytes(b"")
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files whose header discovery reads (and trust entries as soon as a scan has recorded them)."""
    from preprocessing import dicom_discovery, file_index

    monkeypatch.setattr(file_index, "RACY_WINDOW_NS", 0)
    seen: list[str] = []
    real = dicom_discovery._read_one

    def counting(root: Path, path: Path, study_key_tag: str) -> dicom_discovery.FileRecord:
        seen.append(path.name)
        return real(root, path, study_key_tag)

    monkeypatch.setattr(dicom_discovery, "_read_one", counting)
    return seen


def test_a_convert_with_the_index_writes_what_one_without_it_writes(cohort: Path, tmp_path: Path, reads: list) -> None:
    index = tmp_path / "cache" / "index.pickle"
    plain = convert_dir(cohort, tmp_path / "plain", salt="s")
    first = convert_dir(cohort, tmp_path / "indexed", salt="s", file_index=index)
    again = convert_dir(cohort, tmp_path / "indexed", salt="s", file_index=index)
    assert index.is_file()
    assert first.n_ok == plain.n_ok == 2 and first.n_unreadable_files == plain.n_unreadable_files == 2
    assert again.n_reused == 2
    assert output_hashes(tmp_path / "indexed") == output_hashes(tmp_path / "plain")


def test_a_noop_convert_reads_no_file_and_a_rewritten_file_is_read_again(
    cohort: Path, tmp_path: Path, reads: list
) -> None:
    index = tmp_path / "cache" / "index.pickle"
    out = tmp_path / "out"
    convert_dir(cohort, out, salt="s", file_index=index)
    n_files = sum(1 for path in cohort.rglob("*") if path.is_file())
    assert len(reads) == n_files
    before = output_hashes(out)

    reads.clear()
    noop = convert_dir(cohort, out, salt="s", file_index=index)
    assert reads == [] and noop.n_reused == 2 and output_hashes(out) == before

    # same size, same mtime, other pixels: only the ctime tells; the file is read again, its study redone
    target = sorted((cohort / "P01" / "s2").iterdir())[0]
    stat = target.stat()
    content = bytearray(target.read_bytes())
    content[-2:] = b"\x00\x0f" if content[-2:] != b"\x00\x0f" else b"\x00\x0e"
    target.write_bytes(bytes(content))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    reads.clear()
    changed = convert_dir(cohort, out, salt="s", file_index=index)
    assert reads == [target.name] and changed.n_reused == 1
    reference = convert_dir(cohort, tmp_path / "reference", salt="s")
    assert reference.n_ok == 2
    assert output_hashes(out) == output_hashes(tmp_path / "reference")
    assert output_hashes(out) != before


def test_an_index_of_other_code_or_settings_is_not_used(cohort: Path, tmp_path: Path, reads: list) -> None:
    index = tmp_path / "cache" / "index.pickle"
    convert_dir(cohort, tmp_path / "a", salt="s", file_index=index)
    reads.clear()
    convert_dir(cohort, tmp_path / "b", salt="s", file_index=index, study_key_tag="PatientID")
    assert len(reads) == sum(1 for path in cohort.rglob("*") if path.is_file())
    index.write_bytes(b"torn")
    reads.clear()
    summary = convert_dir(cohort, tmp_path / "a", salt="s", file_index=index)
    assert summary.n_reused == 2 and len(reads) > 0


def test_a_file_recorded_within_the_racy_window_is_read_again(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from preprocessing import dicom_discovery, file_index

    monkeypatch.setattr(file_index, "RACY_WINDOW_NS", 10**15)  # every file counts as written "just now"
    index = tmp_path / "cache" / "index.pickle"
    convert_dir(cohort, tmp_path / "out", salt="s", file_index=index)  # files written just now: racy
    seen: list[str] = []
    real = dicom_discovery._read_one
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dicom_discovery, "_read_one", lambda *args: seen.append(args[1].name) or real(*args))
        assert convert_dir(cohort, tmp_path / "out", salt="s", file_index=index).n_reused == 2
    assert len(seen) == sum(1 for path in cohort.rglob("*") if path.is_file())


def test_the_walk_lists_files_in_os_walk_order_without_our_temporary_files(tmp_path: Path) -> None:
    from preprocessing.dicom_discovery import _walk_files

    for name in ("b/2", "b/1", "a/x/3", "a/4", "5", ".5.tmp-abc", "c/.d.tmp-1"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    expected = [
        (Path(folder) / name).relative_to(tmp_path).as_posix()
        for folder, _, files in _os_walk_sorted(tmp_path)
        for name in files
    ]
    assert [relative for relative, _ in _walk_files(tmp_path)] == expected


def _os_walk_sorted(root: Path) -> list[tuple[str, list[str], list[str]]]:
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        out.append((folder, dirs, sorted(name for name in files if not (name.startswith(".") and ".tmp-" in name))))
    return out


def test_header_discovery_spawns_no_pool_for_a_few_hundred_files(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import concurrent.futures

    def no_pool(*args: object, **kwargs: object) -> None:
        raise AssertionError("a process pool was spawned for a small discovery")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    summary = convert_dir(cohort, tmp_path / "out", salt="s", workers=2)
    assert summary.n_ok == 2
