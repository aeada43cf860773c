"""Watch-folder ingest: settled study folders (and report CSVs, masks) join the raw dataset by DICOM identity.

:func:`collect_incoming` adds what is in the watch folder to the raw dataset by StudyInstanceUID /
SeriesInstanceUID / SOPInstanceUID (never the folder name), copies with a sha256 check, lets the caller
record the copies (``record``: ``dvc add`` in ``flows.deployments.ingest_flow``) and confirm them
(``in_cache``), and only then removes them from the watch folder. Every file ends in one state:
ingested, rejected (kept under ``rejected/`` with a reason) or not settled (left in place).

A library: no Prefect, no DVC call; the orchestration passes the recording in.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.io import sha256_file

REJECTED_DIR = "rejected"  # watch_dir/rejected/<batch>/<file> + reasons.csv (kept, never deleted)
REASONS_FILE = "reasons.csv"
INGESTED_REPORTS_DIR = "ingested_reports"  # beside reports_csv: each merged incoming CSV as it came
MASKS_DIR = "masks"  # watch_dir/masks/<StudyInstanceUID>.nii.gz -> paths.precomputed_masks
_RESERVED = {REJECTED_DIR, MASKS_DIR, ".ingested", ".rejected"}
_TMP_SUFFIX = ".fvlm-ingest-tmp"

Recorder = Callable[[list[Path]], list[Path]]  # records (e.g. `dvc add`s) what was written, returns the targets
InCache = Callable[[Path], bool]  # the recorded copy's content is in the store (the DVC cache)


class IngestError(RuntimeError):
    """The ingest could not record what it copied; nothing was removed from the watch folder."""


@dataclass
class IngestResult:
    """Every file found in the watch folder is counted once: ingested, rejected, or not settled."""

    studies_moved: int = 0  # new studies (by StudyInstanceUID) added to the raw dataset
    files_added_to_existing: int = 0  # files of known studies (e.g. an extra series)
    files_ingested: int = 0  # files now in the raw dataset (copied, or already there byte for byte)
    duplicates: int = 0  # of those: identical files the dataset already held
    report_rows_added: int = 0
    report_rows_skipped: int = 0
    not_settled: int = 0  # files left in place (their folder is still being copied)
    rejected: list[str] = field(default_factory=list)  # "<file>: <reason>" (no study names: may hold PHI)
    new_study_dirs: list[str] = field(default_factory=list)  # raw dataset folders created (relative)
    recorded: list[str] = field(default_factory=list)  # `dvc add` targets
    removed_from_watch: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.studies_moved or self.files_added_to_existing or self.report_rows_added)


@dataclass
class _Header:
    study: str
    series: str
    sop: str


@dataclass
class _Planned:
    source: Path
    destination: Path
    sha256: str
    duplicate: bool = False  # identical bytes already at the destination
    archive: Path | None = None  # extra copy in the ingest archive (raw tree outside the repository)


@dataclass(frozen=True)
class _Run:
    """What one ingest run works with: the folders, its batch name (UTC time) and its clock."""

    watch_dir: Path
    batch: str
    now: float
    settle_s: float
    archive_dir: Path | None

    def settled(self, mtime: float) -> bool:
        return self.now - mtime >= self.settle_s

    def archive_for(self, path: Path) -> Path | None:
        return None if self.archive_dir is None else self.archive_dir / self.batch / path.relative_to(self.watch_dir)


def read_identity(path: Path, folder_key: str | None = None) -> _Header | str:
    """StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID (headers only), or why the file is unusable.

    A file without StudyInstanceUID (anonymised exports blank it) belongs to the study of its top folder:
    ``folder_key`` (``folder:<name>``), as convert keys such a study by its folder under the raw root."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
        )
    except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError, KeyError, TypeError):
        return "not a readable DICOM file"
    study = str(getattr(dataset, "StudyInstanceUID", "") or "").strip()
    series = str(getattr(dataset, "SeriesInstanceUID", "") or "").strip()
    sop = str(getattr(dataset, "SOPInstanceUID", "") or "").strip()
    if not study:
        if folder_key is None:
            return "DICOM file without StudyInstanceUID outside a study folder"
        study = folder_key
    return _Header(study, series, sop)


@dataclass
class _Known:
    study_dirs: dict[str, Path] = field(default_factory=dict)  # StudyInstanceUID -> top folder in raw_dir
    sops: dict[tuple[str, str], Path] = field(default_factory=dict)  # (study, SOPInstanceUID) -> file
    sha256: dict[Path, str] = field(default_factory=dict)  # raw file -> content hash (as of this run's walk)

    def sha256_of(self, path: Path) -> str:
        """The raw file's hash from this run's walk (stat-gated index), else read now."""
        known = self.sha256.get(path)
        return known if known is not None else sha256_file(path)


# The raw tree's index: relative path -> (stat key, record). A record is (study, series, sop, sha256) for an
# identified DICOM file, or the reason a file is unusable (those are never read again while unchanged).
INDEX_TAG = "ingest-raw-identity-1"  # bump when read_identity or the record layout changes


def ingest_index_path(project_root: Path, raw_dir: Path) -> Path:
    """``<project_root>/.fvlm-private/ingest-index/<raw name>-<hash of the resolved raw path>.pickle``: beside
    convert's index (``core.layout.convert_index_path``), outside every DVC output; it holds UIDs, so it lives
    with the other private files, not in the shareable cache."""
    import hashlib

    from core.layout import PRIVATE_DIR

    source = Path(raw_dir).resolve()
    label = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    return Path(project_root).resolve() / PRIVATE_DIR / "ingest-index" / f"{source.name or 'root'}-{label}.pickle"


def _walk_files(root: Path, relative: str = "") -> Iterator[tuple[str, Path, os.stat_result]]:
    """(relative path, path, stat) of every file under ``root``, in ``sorted(root.rglob("*"))`` order (a
    depth-first walk with each folder's entries sorted by name), one ``os.scandir`` per folder."""
    try:
        entries = sorted(os.scandir(root), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        name = f"{relative}/{entry.name}" if relative else entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk_files(Path(entry.path), name)
            elif entry.is_file():
                yield name, Path(entry.path), entry.stat()
        except OSError:  # vanished or unreadable while walking: not a raw file of this run
            continue


def _index_raw_tree(raw_dir: Path, index_path: Path | None = None) -> _Known:
    """Identity (and content hash) of every file in the raw tree; with ``index_path``, a file whose stat data
    (size, mtime_ns, ctime_ns, inode) are the recorded ones is neither opened nor hashed again
    (:class:`preprocessing.file_index.FileIndex`, racy entries re-read), so a nightly run costs a walk plus
    the files that changed."""
    from preprocessing.file_index import FileIndex, index_fingerprint, stat_key

    known = _Known()
    if not raw_dir.is_dir():
        return known
    index = FileIndex.load(index_path, index_fingerprint(raw_dir, INDEX_TAG, ()))
    seen: set[str] = set()
    for relative, path, stat in _walk_files(raw_dir):
        if path.name.endswith(_TMP_SUFFIX):
            continue
        seen.add(relative)
        key = stat_key(stat)
        record = index.lookup(relative, key)
        if record is None:
            top_name = relative.split("/", 1)[0]
            header = read_identity(path, folder_key=f"folder:{top_name}" if "/" in relative else None)
            record = header if isinstance(header, str) else (header.study, header.series, header.sop, sha256_file(path))
            index.store(relative, key, record)
        if isinstance(record, str):
            continue
        study, _series, sop, digest = record
        top = raw_dir / relative.split("/", 1)[0] if "/" in relative else raw_dir
        known.study_dirs.setdefault(study, top)
        if sop:
            known.sops.setdefault((study, sop), path)
        known.sha256[path] = digest
    try:
        index.save(seen)
    except OSError as error:  # the index is a cache: a read-only location costs speed, never the ingest
        import logging

        logging.getLogger(__name__).warning("ingest index not saved (%s): %s", index_path, type(error).__name__)
    return known


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        newest = max(newest, path.lstat().st_mtime)
    return newest


def _count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def _uid_suffix(uid: str) -> str:
    import hashlib

    return hashlib.sha256(uid.encode()).hexdigest()[:8]


def _free_name(raw_dir: Path, name: str, uid: str, taken: set[Path]) -> Path:
    """``raw_dir/name``, or ``name-<uid hash>`` (then ``-2``, ...) when that folder already exists."""
    candidate = raw_dir / name
    if not candidate.exists() and candidate not in taken:
        return candidate
    base = f"{name}-{_uid_suffix(uid)}"
    candidate, counter = raw_dir / base, 2
    while candidate.exists() or candidate in taken:
        candidate, counter = raw_dir / f"{base}-{counter}", counter + 1
    return candidate


def _copy_verified(source: Path, destination: Path, sha256: str) -> None:
    """Copy to a temporary name beside the destination, fsync, check sha256, then rename into place."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(destination.name + _TMP_SUFFIX)
    shutil.copyfile(source, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    if sha256_file(tmp) != sha256:
        tmp.unlink(missing_ok=True)
        raise IngestError(f"{destination.name}: copy does not match its source (sha256)")
    os.replace(tmp, destination)


def _reject(watch_dir: Path, batch: str, path: Path, reason: str, result: IngestResult) -> None:
    """Move ``path`` to watch_dir/rejected/<batch>/<relative path> and append the reason to reasons.csv."""
    relative = path.relative_to(watch_dir)
    target = watch_dir / REJECTED_DIR / batch / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, target)
    reasons = watch_dir / REJECTED_DIR / REASONS_FILE
    new_file = not reasons.exists()
    with open(reasons, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new_file:
            writer.writerow(["time", "file", "kept_as", "reason"])
        writer.writerow([batch, str(relative), str(target.relative_to(watch_dir)), reason])
    result.rejected.append(f"{relative}: {reason}")


def _merge_reports(source: Path, reports_csv: Path, id_column: str, result: IngestResult) -> str | None:
    """Append the rows of ``source`` whose ``id_column`` is new to ``reports_csv`` (atomic rewrite).

    Returns None on success, else the reason the CSV is rejected (then nothing is written).
    """
    from core.io import atomic_path

    try:
        with open(source, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            incoming = list(reader)
            incoming_columns = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        return f"unreadable CSV ({type(error).__name__})"
    if id_column not in incoming_columns:
        return f"no '{id_column}' column"
    existing_rows: list[dict[str, str]] = []
    columns = list(incoming_columns)
    if reports_csv.exists():
        with open(reports_csv, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            existing_rows = list(reader)
            columns = list(reader.fieldnames or incoming_columns)
        if set(incoming_columns) - set(columns):
            extra = ", ".join(sorted(set(incoming_columns) - set(columns)))
            return f"columns not in {reports_csv.name}: {extra}"
    known = {row.get(id_column, "") for row in existing_rows}
    new_rows = []
    for row in incoming:
        key = row.get(id_column, "")
        if not key or key in known:
            result.report_rows_skipped += 1
            continue
        known.add(key)
        new_rows.append(row)
    if new_rows:
        reports_csv.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(reports_csv) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(existing_rows)
                writer.writerows(new_rows)
    result.report_rows_added += len(new_rows)
    return None


# ---- 1. scan: which top-level entries are settled ---------------------------------------------------------
def _scan_watch_folder(run: _Run, with_reports: bool, result: IngestResult) -> tuple[list[Path], list[Path]]:
    """(settled study folders, settled report CSVs); loose files are rejected, fresh ones left in place."""
    settled_dirs: list[Path] = []
    csv_files: list[Path] = []
    for entry in sorted(run.watch_dir.iterdir()):
        if entry.name.startswith(".") or entry.name in _RESERVED:
            continue
        if entry.is_dir():
            if not run.settled(_newest_mtime(entry)):
                result.not_settled += _count_files(entry)
                continue
            settled_dirs.append(entry)
        elif entry.is_file():
            if not run.settled(entry.stat().st_mtime):
                result.not_settled += 1
            elif entry.suffix.lower() == ".csv" and with_reports:
                csv_files.append(entry)
            else:
                _reject(run.watch_dir, run.batch, entry, "a loose file: put each study in its own folder", result)
    return settled_dirs, csv_files


# ---- 2. plan: the destination of every incoming file ------------------------------------------------------
def _plan_masks(run: _Run, masks_dir: Path | None, result: IngestResult) -> list[_Planned]:
    """``watch_dir/masks/<StudyInstanceUID>.nii.gz`` -> ``masks_dir`` (a different mask of a study is rejected)."""
    masks_in = run.watch_dir / MASKS_DIR
    if masks_dir is None or not masks_in.is_dir():
        return []
    if not run.settled(_newest_mtime(masks_in)):
        result.not_settled += _count_files(masks_in)
        return []
    planned: list[_Planned] = []
    for path in sorted(p for p in masks_in.rglob("*") if p.is_file()):
        if not path.name.endswith((".nii.gz", ".nii")):
            _reject(run.watch_dir, run.batch, path, "masks/ holds <StudyInstanceUID>.nii.gz files only", result)
            continue
        sha = sha256_file(path)
        destination = masks_dir / path.name
        if destination.exists() and sha256_file(destination) != sha:
            _reject(run.watch_dir, run.batch, path, "a different mask of this study is already in the dataset", result)
            continue
        planned.append(_Planned(path, destination, sha, duplicate=destination.exists(), archive=run.archive_for(path)))
    return planned


@dataclass
class _StudyPlan:
    """The plan for the drop's study files, built file by file (later files see earlier ones)."""

    run: _Run
    raw_dir: Path
    known: _Known
    planned: list[_Planned] = field(default_factory=list)
    new_dirs: dict[str, Path] = field(default_factory=dict)  # StudyInstanceUID -> new folder (this run)
    taken: set[Path] = field(default_factory=set)
    seen_sops: dict[tuple[str, str], _Planned] = field(default_factory=dict)  # (study, SOP) -> plan, this drop

    def add_duplicate(self, source: Path, destination: Path, sha: str, key: tuple[str, str]) -> None:
        item = _Planned(source, destination, sha, duplicate=True)
        self.planned.append(item)
        self.seen_sops[key] = item

    def study_dir(self, header: _Header, folder: Path) -> tuple[Path, bool]:
        """(the study's folder in the raw tree, whether this run creates it)."""
        if header.study in self.known.study_dirs:
            return self.known.study_dirs[header.study], False
        if header.study not in self.new_dirs:
            self.new_dirs[header.study] = _free_name(self.raw_dir, folder.name, header.study, self.taken)
            self.taken.add(self.new_dirs[header.study])
        return self.new_dirs[header.study], True


def _known_sop(plan: _StudyPlan, path: Path, header: _Header, sha: str) -> str | None:
    """For a SOPInstanceUID seen before (in this drop or in the raw tree): plan the duplicate and return "",
    or return why the file is rejected. None: a SOP not seen before."""
    key = (header.study, header.sop)
    if not header.sop:
        return None
    if key in plan.seen_sops:  # twice in this very drop
        if plan.seen_sops[key].sha256 == sha:
            plan.planned.append(_Planned(path, plan.seen_sops[key].destination, sha, duplicate=True))
            return ""
        return "SOPInstanceUID twice in the drop with different content"
    if key in plan.known.sops:
        existing = plan.known.sops[key]
        if plan.known.sha256_of(existing) == sha:
            plan.add_duplicate(path, existing, sha, key)
            return ""
        return "SOPInstanceUID already in the raw dataset with different content"
    return None


def _plan_study_file(plan: _StudyPlan, folder: Path, path: Path, result: IngestResult) -> None:
    """Plan one file of a settled study folder: a copy, a duplicate, or a rejection."""
    run = plan.run
    # no StudyInstanceUID: the drop's folder is the study (a new one: nothing else can identify it)
    header = read_identity(path, folder_key=f"folder:incoming/{run.batch}/{folder.name}")
    if isinstance(header, str):
        _reject(run.watch_dir, run.batch, path, header, result)
        return
    sha = sha256_file(path)
    verdict = _known_sop(plan, path, header, sha)
    if verdict is not None:
        if verdict:
            _reject(run.watch_dir, run.batch, path, verdict, result)
        return
    key = (header.study, header.sop)
    study_dir, is_new = plan.study_dir(header, folder)
    inner = Path(*path.relative_to(folder).parts)
    destination = study_dir / inner
    if destination.exists() or any(p.destination == destination for p in plan.planned):
        if destination.exists() and plan.known.sha256_of(destination) == sha:
            plan.add_duplicate(path, destination, sha, key)
            return
        destination = study_dir / f"ingest-{run.batch}" / inner  # that path holds other bytes
    item = _Planned(path, destination, sha, archive=run.archive_for(path))
    plan.planned.append(item)
    if header.sop:
        plan.seen_sops[key] = item
    if not is_new:
        result.files_added_to_existing += 1


def _plan_studies(
    run: _Run, raw_dir: Path, settled_dirs: list[Path], result: IngestResult, index_path: Path | None
) -> list[_Planned]:
    if not settled_dirs:
        return []
    plan = _StudyPlan(run, raw_dir, _index_raw_tree(raw_dir, index_path))
    for folder in settled_dirs:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if not path.name.endswith(_TMP_SUFFIX):
                _plan_study_file(plan, folder, path, result)
    result.studies_moved = len(plan.new_dirs)
    result.new_study_dirs = [str(path.relative_to(raw_dir)) for path in plan.new_dirs.values()]
    return plan.planned


# ---- 3. copy (checked) into the raw tree (and the archive); merge the report CSVs -------------------------
def _copy_planned(planned: list[_Planned]) -> None:
    for item in planned:
        if not item.duplicate:
            _copy_verified(item.source, item.destination, item.sha256)
        if item.archive is not None:
            _copy_verified(item.source, item.archive, item.sha256)


def _merge_report_csvs(
    run: _Run, csv_files: list[Path], reports_csv: Path | None, id_column: str, result: IngestResult
) -> list[tuple[Path, Path]]:
    """Merge each CSV into ``reports_csv`` and keep it as it came; returns (incoming CSV, its kept copy)."""
    merged: list[tuple[Path, Path]] = []
    for entry in csv_files:
        reason = (
            _merge_reports(entry, reports_csv, id_column, result) if reports_csv is not None else "no reports table"
        )
        if reason:
            _reject(run.watch_dir, run.batch, entry, reason, result)
            continue
        assert reports_csv is not None
        kept = (
            run.archive_dir / run.batch / entry.name
            if run.archive_dir is not None
            else reports_csv.parent / INGESTED_REPORTS_DIR / f"{run.batch}-{entry.name}"
        )
        _copy_verified(entry, kept, sha256_file(entry))
        merged.append((entry, kept))
    return merged


# ---- 4. record, verify, and only then remove from the watch folder ----------------------------------------
def _record_targets(
    raw_dir: Path,
    masks_dir: Path | None,
    with_masks: bool,
    reports_csv: Path | None,
    merged_csvs: list[tuple[Path, Path]],
    archive_dir: Path | None,
) -> list[Path]:
    targets = [raw_dir] + ([masks_dir] if with_masks and masks_dir is not None else [])
    if merged_csvs and reports_csv is not None:
        targets += [reports_csv, merged_csvs[0][1].parent]
    if archive_dir is not None:
        targets.append(archive_dir)
    return targets


def _check_recorded(
    watch_dir: Path, planned: list[_Planned], merged_csvs: list[tuple[Path, Path]], in_cache: InCache | None
) -> None:
    """Raise :class:`IngestError` (nothing removed yet) when a recorded copy is not in the store."""
    if in_cache is None:
        return
    for item in planned:
        copies = [item.destination] + ([item.archive] if item.archive is not None else [])
        if not any(in_cache(copy) for copy in copies):
            raise IngestError(
                f"{item.source.relative_to(watch_dir)}: not in the DVC cache after recording; left in the watch folder"
            )
    for entry, kept in merged_csvs:
        if not in_cache(kept):
            raise IngestError(f"{entry.name}: not in the DVC cache after recording; left in the watch folder")


def _remove_ingested(planned: list[_Planned], merged_csvs: list[tuple[Path, Path]], result: IngestResult) -> None:
    for item in planned:
        item.source.unlink()
        result.files_ingested += 1
        result.duplicates += int(item.duplicate)
    for entry, _kept in merged_csvs:
        entry.unlink()
    result.removed_from_watch = len(planned) + len(merged_csvs)


def _remove_empty_folders(folders: list[Path]) -> None:
    """The empty folders the ingested files leave behind (deepest first), then each folder itself if empty."""
    for folder in folders:
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def collect_incoming(
    watch_dir: Path,
    raw_dir: Path,
    reports_csv: Path | None = None,
    *,
    id_column: str = "study_key",
    settle_s: float = 60.0,
    record: Recorder | None = None,
    in_cache: InCache | None = None,
    archive_dir: Path | None = None,
    masks_dir: Path | None = None,
    index_path: Path | None = None,
) -> IngestResult:
    """Add settled studies in ``watch_dir`` to ``raw_dir`` by DICOM identity; merge report CSVs.

    * A top-level folder is *settled* when nothing in it changed for ``settle_s`` seconds; files of a
      folder still being copied are left in place (``not_settled``).
    * Each file's StudyInstanceUID decides where it goes: a study the raw tree already holds gets the
      file in its folder (an extra series: same relative path, or an ``ingest-<time>/`` subfolder when
      that path holds other bytes); a new study gets a folder named like the incoming one, or
      ``<name>-<uid hash>`` when that name is taken. A file whose SOPInstanceUID the study already holds
      with the same bytes is a duplicate (ingested); with other bytes it is rejected.
    * Unreadable / non-DICOM files, loose files and unusable CSVs are *rejected*: moved to
      ``watch_dir/rejected/<time>/`` with a row in ``rejected/reasons.csv`` -- kept, never deleted.
    * A merged CSV's rows go into ``reports_csv``; the CSV itself is kept as it came in
      ``<reports_csv folder>/ingested_reports/<time>-<name>`` (or the archive), recorded like the studies.
    * Copies are checked (sha256) before they are renamed into place; then ``record(paths)`` records
      them (``dvc add``), ``in_cache(path)`` confirms each ingested file is in the DVC cache, and only
      then is the file removed from the watch folder. If recording fails nothing is removed (a rerun
      finds the copies as duplicates and completes).
    * ``watch_dir/masks/`` (when ``masks_dir`` is given): precomputed masks named like the raw dataset's
      (``<StudyInstanceUID>.nii.gz``) are added to ``masks_dir``; a different mask under a name that
      exists is rejected.
    * ``index_path`` (:func:`ingest_index_path`): a persistent index of the raw tree's identities and
      hashes; only files whose stat data changed since the last run are read and hashed, so a nightly
      run over N known studies costs a walk of the tree plus the changed files. None: every file of the
      raw tree is read and hashed (an index kept in memory for this run only).
    * ``archive_dir``: also copy every ingested file (and incoming CSV) to ``archive_dir/<time>/`` (the
      recorded copy when ``raw_dir`` is outside the repository).
    """
    result = IngestResult()
    if not watch_dir.is_dir():
        return result
    run = _Run(watch_dir, time.strftime("%Y%m%dT%H%M%S", time.gmtime()), time.time(), settle_s, archive_dir)
    settled_dirs, csv_files = _scan_watch_folder(run, reports_csv is not None, result)
    planned_masks = _plan_masks(run, masks_dir, result)
    planned = _plan_studies(run, raw_dir, settled_dirs, result, index_path) + planned_masks
    _copy_planned(planned)
    merged_csvs = _merge_report_csvs(run, csv_files, reports_csv, id_column, result)
    if not planned and not merged_csvs:
        return result
    if record is not None:
        targets = _record_targets(raw_dir, masks_dir, bool(planned_masks), reports_csv, merged_csvs, archive_dir)
        result.recorded = [str(target) for target in record(targets)]
    _check_recorded(watch_dir, planned, merged_csvs, in_cache)
    _remove_ingested(planned, merged_csvs, result)
    _remove_empty_folders([*settled_dirs, *([watch_dir / MASKS_DIR] if planned_masks else [])])
    return result
