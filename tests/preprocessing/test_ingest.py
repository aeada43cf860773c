"""Watch-folder ingest (preprocessing/ingest.py): by DICOM identity, sha256-checked copies, CSV merge,
rejected/ + reasons, nothing removed from the watch folder before the copies are recorded."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from preprocessing.ingest import collect_incoming


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_record(recorded: list[list[Path]]):
    def record(paths: list[Path]) -> list[Path]:
        recorded.append(list(paths))
        return list(paths)

    return record


def test_collect_incoming_by_dicom_identity_not_folder_name(tmp_path: Path) -> None:
    """A new study whose folder name is taken lands as a new study; an extra series joins its study."""
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    known_uid = new_uid()
    write_ct_series(raw / "study_0000" / "s1", n_slices=3, study_uid=known_uid, series_number=1)
    before = {p: p.read_bytes() for p in _files(raw)}
    # 1) a different study in a folder named like the known one, 2) an extra series of the known study
    # in a folder named differently, 3) a non-DICOM file, 4) a reports CSV, 5) a bad CSV
    write_ct_series(watch / "study_0000" / "s1", n_slices=3, study_uid=new_uid(), series_number=1, seed=1)
    write_ct_series(watch / "other_name" / "s2", n_slices=2, study_uid=known_uid, series_number=2, seed=2)
    (watch / "study_0000" / "notes.txt").write_text("not dicom")
    reports = tmp_path / "reports.csv"
    reports.write_text("study_key,Findings,Impression\nB,normal,none\n")
    (watch / "new.csv").write_text("study_key,Findings,Impression\nA,nodule,small\nB,dup,dup\n")
    (watch / "bad.csv").write_text("wrong,columns\n1,2\n")
    incoming = {p: _sha(p) for p in _files(watch)}

    recorded: list[list[Path]] = []
    cached: set[str] = set()
    result = collect_incoming(
        watch,
        raw,
        reports,
        settle_s=0,
        record=_fake_record(recorded),
        in_cache=lambda path: cached.add(_sha(path)) or True,
    )

    assert result.studies_moved == 1 and result.files_added_to_existing == 2
    assert result.files_ingested == 5 and result.duplicates == 0
    new_dirs = [raw / name for name in result.new_study_dirs]
    assert len(new_dirs) == 1 and new_dirs[0].name.startswith("study_0000-")
    assert len(_files(new_dirs[0])) == 3
    assert len(_files(raw / "study_0000" / "s2")) == 2  # the extra series joined its study
    assert all(path.read_bytes() == data for path, data in before.items())  # nothing overwritten
    assert result.report_rows_added == 1 and result.report_rows_skipped == 1
    assert reports.read_text().splitlines()[-1] == "A,nodule,small"
    assert recorded and raw in recorded[0]
    # every incoming file: ingested (its bytes in the raw tree, recorded), or rejected (kept, with a reason)
    raw_hashes = {_sha(p) for p in _files(raw)} | {_sha(p) for p in _files(tmp_path / "ingested_reports")}
    rejected_dir = watch / "rejected"
    rejected_hashes = {_sha(p) for p in _files(rejected_dir) if p.name != "reasons.csv"}
    for path, digest in incoming.items():
        assert digest in raw_hashes or digest in rejected_hashes, path
    assert len(result.rejected) == 2
    reasons = (rejected_dir / "reasons.csv").read_text()
    assert "notes.txt" in reasons and "bad.csv" in reasons and "not a readable DICOM" in reasons
    assert [p.name for p in watch.iterdir() if not p.name.startswith(".")] == ["rejected"]
    # nothing new: nothing to do
    again = collect_incoming(watch, raw, reports, settle_s=0, record=_fake_record(recorded))
    assert not again.changed and again.files_ingested == 0


def test_collect_incoming_same_files_again_are_duplicates(tmp_path: Path) -> None:
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    write_ct_series(raw / "a" / "s1", n_slices=3, study_uid=new_uid())
    shutil.copytree(raw / "a", watch / "a_again")
    result = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]))
    assert result.files_ingested == 3 and result.duplicates == 3 and not result.changed
    assert sorted(p.name for p in raw.iterdir()) == ["a"]


def test_collect_incoming_keeps_everything_when_recording_fails(tmp_path: Path) -> None:
    from preprocessing.ingest import IngestError
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    write_ct_series(watch / "x" / "s1", n_slices=2, study_uid=new_uid())
    before = _files(watch)

    def failing(paths: list[Path]) -> list[Path]:
        raise RuntimeError("dvc add failed")

    with pytest.raises(RuntimeError):
        collect_incoming(watch, raw, settle_s=0, record=failing)
    assert _files(watch) == before  # nothing left the watch folder
    with pytest.raises(IngestError):  # recorded but not found in the cache: still nothing removed
        collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), in_cache=lambda path: False)
    assert _files(watch) == before
    done = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), in_cache=lambda path: True)
    assert done.files_ingested == 2 and done.duplicates == 2 and not _files(watch)


def test_collect_incoming_leaves_folders_still_being_copied(tmp_path: Path) -> None:
    (tmp_path / "in" / "fresh").mkdir(parents=True)
    (tmp_path / "in" / "fresh" / "1.dcm").write_bytes(b"x")
    result = collect_incoming(tmp_path / "in", tmp_path / "raw", settle_s=3600)
    assert result.not_settled == 1 and result.studies_moved == 0
    assert (tmp_path / "in" / "fresh" / "1.dcm").exists()


def _flipped_copy(source: Path, destination: Path) -> None:
    """The same DICOM header (same SOPInstanceUID), other bytes: the last pixel byte inverted."""
    data = bytearray(source.read_bytes())
    data[-1] ^= 0xFF
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_bytes(bytes(data))


def test_collect_incoming_rejects_conflicting_sops_and_masks_and_archives(tmp_path: Path) -> None:
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    watch, raw, masks, archive = tmp_path / "incoming", tmp_path / "raw", tmp_path / "masks", tmp_path / "archive"
    write_ct_series(raw / "known" / "s1", n_slices=2, study_uid=new_uid())
    write_ct_series(watch / "extra" / "s2", n_slices=2, study_uid=new_uid(), seed=1)
    _flipped_copy(raw / "known" / "s1" / "IM0001.dcm", watch / "conflict" / "s1" / "IM0001.dcm")
    _flipped_copy(watch / "extra" / "s2" / "IM0001.dcm", watch / "zz_again" / "s2" / "IM0009.dcm")
    (watch / "masks").mkdir()
    (watch / "masks" / "1.2.3.nii.gz").write_bytes(b"new mask")
    (watch / "masks" / "4.5.6.nii.gz").write_bytes(b"another mask")
    (watch / "masks" / "readme.txt").write_text("x")
    masks.mkdir()
    (masks / "4.5.6.nii.gz").write_bytes(b"the mask the dataset holds")

    result = collect_incoming(
        watch, raw, settle_s=0, record=_fake_record([]), archive_dir=archive, masks_dir=masks, in_cache=lambda p: True
    )

    assert result.studies_moved == 1 and result.files_ingested == 3  # the new study's 2 files + the new mask
    assert (masks / "1.2.3.nii.gz").read_bytes() == b"new mask"
    assert (masks / "4.5.6.nii.gz").read_bytes() == b"the mask the dataset holds"
    reasons = (watch / "rejected" / "reasons.csv").read_text()
    for reason in (
        "SOPInstanceUID already in the raw dataset with different content",
        "SOPInstanceUID twice in the drop with different content",
        "a different mask of this study is already in the dataset",
        "masks/ holds <StudyInstanceUID>.nii.gz files only",
    ):
        assert reason in reasons
    assert len(result.rejected) == 4
    (batch,) = [p.name for p in archive.iterdir()]
    archived = sorted(str(p.relative_to(archive / batch)) for p in _files(archive))
    assert archived == ["extra/s2/IM0001.dcm", "extra/s2/IM0002.dcm", "masks/1.2.3.nii.gz"]


def test_ingest_library_imports_no_orchestration(repo_root: Path) -> None:
    """The library is called by the flow, never the other way round: no Prefect, no flows/ import."""
    tree = ast.parse((repo_root / "preprocessing" / "ingest.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {name for name in imported if name.split(".")[0] in ("prefect", "flows", "fvlm")}


def test_a_study_without_study_instance_uid_is_ingested_by_its_folder(tmp_path: Path) -> None:
    """Anonymised exports blank StudyInstanceUID: convert keys such a study by its folder, so the ingest
    takes it by its folder too (a new study) instead of rejecting its files."""
    import pydicom

    from tests.preprocessing.dicom_factory import write_ct_series

    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    write_ct_series(watch / "anon_01" / "s1", n_slices=3, seed=3)
    for path in _files(watch):
        dataset = pydicom.dcmread(path)
        dataset.StudyInstanceUID = ""
        dataset.save_as(path)
    result = collect_incoming(
        watch, raw, tmp_path / "reports.csv", settle_s=0, record=_fake_record([]), in_cache=lambda path: True
    )
    assert not result.rejected, result.rejected
    assert result.studies_moved == 1 and result.files_ingested == 3
    assert [p.parent.parent.name for p in _files(raw)] == ["anon_01"] * 3


def test_the_readme_layout_is_extended_part_by_part(tmp_path: Path) -> None:
    """README: data/raw/dicom and data/raw/reports.csv are `dvc add`-ed one by one; DVC refuses
    `dvc add data/raw` over them, so the ingest records each part (and a new masks/ folder on its own)."""
    from flows.deployments import dvc_target_for

    root = tmp_path / "repo"
    raw = root / "data" / "raw"
    (raw / "dicom" / "study_a").mkdir(parents=True)
    (raw / "masks").mkdir()
    (raw / "reports.csv").write_text("study_key\n")
    (raw / "dicom.dvc").write_text("outs: []\n")
    (raw / "reports.csv.dvc").write_text("outs: []\n")
    assert dvc_target_for(raw / "dicom" / "study_a" / "1.dcm", root, raw) == (raw / "dicom").resolve()
    assert dvc_target_for(raw / "reports.csv", root, raw) == (raw / "reports.csv").resolve()
    assert dvc_target_for(raw / "masks" / "x.nii.gz", root, raw) == (raw / "masks").resolve()
    # the whole dataset `dvc add`-ed at once (the demo's layout): the dataset is the target
    whole = tmp_path / "repo2"
    dataset = whole / "data" / "demo"
    (dataset / "masks").mkdir(parents=True)
    (whole / "data" / "demo.dvc").write_text("outs: []\n")
    assert dvc_target_for(dataset / "masks" / "x.nii.gz", whole, dataset) == dataset.resolve()


# ---- O(changed) nightly runs: the raw tree's stat-gated index ---------------------------------------------
def _counting(monkeypatch: pytest.MonkeyPatch, raw: Path) -> dict[str, list[Path]]:
    """Record every header read and content hash of a raw-tree file (the ingest's own copies excluded)."""
    import preprocessing.ingest as ingest

    calls: dict[str, list[Path]] = {"hashed": [], "read": []}
    real_sha, real_read = ingest.sha256_file, ingest.read_identity

    def in_raw(path: Path) -> bool:
        return Path(path).is_relative_to(raw) and not str(path).endswith(ingest._TMP_SUFFIX)

    def sha(path, *args, **kwargs):
        if in_raw(path):
            calls["hashed"].append(Path(path))
        return real_sha(path, *args, **kwargs)

    def read(path, *args, **kwargs):
        if in_raw(path):
            calls["read"].append(Path(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(ingest, "sha256_file", sha)
    monkeypatch.setattr(ingest, "read_identity", read)
    return calls


def _aged_index(monkeypatch: pytest.MonkeyPatch) -> None:
    """No racy window: these files are milliseconds old, a real archive's are hours (the window itself is
    tested in tests/preprocessing/test_file_index.py)."""
    from preprocessing import file_index

    monkeypatch.setattr(file_index, "RACY_WINDOW_NS", 0)


def test_a_no_op_ingest_reads_and_hashes_no_known_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second nightly run over the same raw tree opens none of its files: stat data gate header + hash."""
    from preprocessing.ingest import ingest_index_path
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    _aged_index(monkeypatch)
    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    index = ingest_index_path(tmp_path / "project", raw)
    for k in range(3):
        write_ct_series(raw / f"study_{k}" / "s1", n_slices=2, study_uid=new_uid(), seed=k)
    shutil.copytree(raw / "study_0", watch / "redelivered")  # night 1: a known study again
    calls = _counting(monkeypatch, raw)
    first = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), index_path=index)
    assert first.duplicates == 2 and not first.changed
    assert len(calls["hashed"]) == len(calls["read"]) == 6  # the index is built: every raw file once
    assert index.is_file()

    calls["hashed"].clear(), calls["read"].clear()
    shutil.copytree(raw / "study_1", watch / "redelivered_again")  # night 2: nothing new again
    second = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), index_path=index)
    assert second.duplicates == 2 and not second.changed
    assert calls == {"hashed": [], "read": []}


def test_a_touched_raw_file_is_hashed_again_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from preprocessing.ingest import ingest_index_path
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    _aged_index(monkeypatch)
    watch, raw = tmp_path / "incoming", tmp_path / "raw"
    index = ingest_index_path(tmp_path / "project", raw)
    write_ct_series(raw / "a" / "s1", n_slices=2, study_uid=new_uid())
    write_ct_series(raw / "b" / "s1", n_slices=2, study_uid=new_uid(), seed=1)
    shutil.copytree(raw / "a", watch / "a_again")
    collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), index_path=index)
    touched = raw / "b" / "s1" / "IM0001.dcm"
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns - 3_600_000_000_000))  # same bytes, other mtime

    calls = _counting(monkeypatch, raw)
    shutil.copytree(raw / "a", watch / "a_third_time")
    result = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), index_path=index)
    assert calls["hashed"] == [touched] and calls["read"] == [touched]
    assert result.studies_moved == 0 and not result.changed and result.duplicates == 2
    assert sorted(p.name for p in raw.iterdir()) == ["a", "b"]


def test_a_changed_raw_file_is_picked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw file rewritten with another instance's bytes: the index serves its new identity, so a drop of
    that instance is a duplicate, not a new file (a stale index would copy it in again)."""
    from preprocessing.ingest import ingest_index_path
    from tests.preprocessing.dicom_factory import new_uid, write_ct_series

    _aged_index(monkeypatch)
    watch, raw, spare = tmp_path / "incoming", tmp_path / "raw", tmp_path / "spare"
    index = ingest_index_path(tmp_path / "project", raw)
    study = new_uid()
    write_ct_series(raw / "a" / "s1", n_slices=2, study_uid=study)
    write_ct_series(spare / "s7", n_slices=1, study_uid=study, series_number=7, seed=5)
    (replacement,) = _files(spare)
    shutil.copytree(raw / "a", watch / "a_again")
    collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), index_path=index)

    changed = raw / "a" / "s1" / "IM0002.dcm"
    changed.write_bytes(replacement.read_bytes())  # new content (another SOPInstanceUID), same path
    calls = _counting(monkeypatch, raw)
    (watch / "late" / "s7").mkdir(parents=True)
    shutil.copy(replacement, watch / "late" / "s7" / "IM0001.dcm")
    result = collect_incoming(watch, raw, settle_s=0, record=_fake_record([]), index_path=index)
    assert calls["read"] == [changed] and calls["hashed"] == [changed]
    assert result.duplicates == 1 and result.files_added_to_existing == 0 and not result.changed
    assert not (raw / "a" / "s7").exists()
