"""Scheduled deployments: nightly ingest, weekly train + evaluate + promote.

* :func:`ingest_flow` -- settled study folders (and report CSVs) in the watch folder are added to the raw
  dataset by DICOM identity (:func:`collect_incoming`: StudyInstanceUID / SeriesInstanceUID /
  SOPInstanceUID, never the folder name), copied with a sha256 check, recorded (``dvc add`` of the
  dataset), found in the DVC cache, and only then removed from the watch folder; then ``dvc repro shard``
  runs convert, segment, parse-reports and shard for exactly what changed, and ``dvc push`` stores it;
* :func:`train_evaluate_flow` -- ``dvc repro evaluate`` (train when shards changed, or always with
  ``retrain=True``; the evaluate stage holds the promotion gate), ``dvc push``, report.

Both are thin wrappers around :func:`flows.pipeline.pipeline_flow`, so the schedule, the CLI and DVC run
one DAG. Two ways to run them on a schedule (both need a Prefect server, ``fvlm services up``):

* ``fvlm deploy`` -- ``prefect.serve`` in a long-running process (this module's
  :func:`build_deployments`);
* ``prefect deploy --all`` with the repository's ``prefect.yaml`` -- deployments on the ``fvlm-process``
  work pool, executed by ``prefect worker start --pool fvlm-process`` (``fvlm services up --worker``);
  the training deployment can be pointed at a Docker or Kubernetes GPU work pool instead.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow

from flows.batching import run_logger
from flows.pipeline import pipeline_flow
from flows.subprocesses import child_env, executable, run_command

if TYPE_CHECKING:  # pragma: no cover
    from core.config import FvlmConfig

INGEST_DEPLOYMENT = "ingest-nightly"
TRAIN_DEPLOYMENT = "train-weekly"
REJECTED_DIR = "rejected"  # watch_dir/rejected/<batch>/<file> + reasons.csv (kept, never deleted)
REASONS_FILE = "reasons.csv"
INGESTED_REPORTS_DIR = "ingested_reports"  # beside reports_csv: each merged incoming CSV as it came
MASKS_DIR = "masks"  # watch_dir/masks/<StudyInstanceUID>.nii.gz -> paths.precomputed_masks
_RESERVED = {REJECTED_DIR, MASKS_DIR, ".ingested", ".rejected"}
_TMP_SUFFIX = ".fvlm-ingest-tmp"


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


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()  # noqa: S324 - DVC's content address, not security
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_identity(path: Path) -> _Header | str:
    """StudyInstanceUID / SeriesInstanceUID / SOPInstanceUID (headers only), or why the file is unusable."""
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
    if not study or not series:
        return "DICOM file without StudyInstanceUID / SeriesInstanceUID"
    return _Header(study, series, sop)


@dataclass
class _Known:
    study_dirs: dict[str, Path] = field(default_factory=dict)  # StudyInstanceUID -> top folder in raw_dir
    sops: dict[tuple[str, str], Path] = field(default_factory=dict)  # (study, SOPInstanceUID) -> file


def _index_raw_tree(raw_dir: Path) -> _Known:
    known = _Known()
    if not raw_dir.is_dir():
        return known
    for path in sorted(raw_dir.rglob("*")):
        if not path.is_file() or path.name.endswith(_TMP_SUFFIX):
            continue
        header = read_identity(path)
        if isinstance(header, str):
            continue
        top = raw_dir / path.relative_to(raw_dir).parts[0]
        known.study_dirs.setdefault(header.study, top if top != path else raw_dir)
        if header.sop:
            known.sops.setdefault((header.study, header.sop), path)
    return known


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for path in folder.rglob("*"):
        newest = max(newest, path.lstat().st_mtime)
    return newest


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
    if _sha256(tmp) != sha256:
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


Recorder = Any  # Callable[[list[Path]], None]: records (e.g. `dvc add`s) what was written


def collect_incoming(
    watch_dir: Path,
    raw_dir: Path,
    reports_csv: Path | None = None,
    *,
    id_column: str = "study_key",
    settle_s: float = 60.0,
    record: Recorder | None = None,
    in_cache: Any = None,
    archive_dir: Path | None = None,
    masks_dir: Path | None = None,
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
    * ``archive_dir``: also copy every ingested file (and incoming CSV) to ``archive_dir/<time>/`` (the
      recorded copy when ``raw_dir`` is outside the repository).
    """
    result = IngestResult()
    if not watch_dir.is_dir():
        return result
    batch = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    now = time.time()
    settled_dirs: list[Path] = []
    csv_files: list[Path] = []
    for entry in sorted(watch_dir.iterdir()):
        if entry.name.startswith(".") or entry.name in _RESERVED:
            continue
        if entry.is_dir():
            if now - _newest_mtime(entry) < settle_s:
                result.not_settled += sum(1 for p in entry.rglob("*") if p.is_file())
                continue
            settled_dirs.append(entry)
        elif entry.is_file():
            if now - entry.stat().st_mtime < settle_s:
                result.not_settled += 1
            elif entry.suffix.lower() == ".csv" and reports_csv is not None:
                csv_files.append(entry)
            else:
                _reject(watch_dir, batch, entry, "a loose file: put each study in its own folder", result)

    # ---- plan: identity of every incoming file, destination in the raw tree
    planned: list[_Planned] = []
    masks_in = watch_dir / MASKS_DIR
    planned_masks: list[_Planned] = []
    if masks_dir is not None and masks_in.is_dir() and now - _newest_mtime(masks_in) >= settle_s:
        for path in sorted(p for p in masks_in.rglob("*") if p.is_file()):
            if not path.name.endswith((".nii.gz", ".nii")):
                _reject(watch_dir, batch, path, "masks/ holds <StudyInstanceUID>.nii.gz files only", result)
                continue
            sha = _sha256(path)
            destination = masks_dir / path.name
            if destination.exists() and _sha256(destination) != sha:
                _reject(watch_dir, batch, path, "a different mask of this study is already in the dataset", result)
                continue
            item = _Planned(path, destination, sha, duplicate=destination.exists())
            if archive_dir is not None:
                item.archive = archive_dir / batch / path.relative_to(watch_dir)
            planned_masks.append(item)
    elif masks_dir is not None and masks_in.is_dir():
        result.not_settled += sum(1 for p in masks_in.rglob("*") if p.is_file())
    if settled_dirs:
        known = _index_raw_tree(raw_dir)
        taken: set[Path] = set()
        new_dirs: dict[str, Path] = {}  # StudyInstanceUID -> new folder (this run)
        seen_sops: dict[tuple[str, str], _Planned] = {}
        for folder in settled_dirs:
            for path in sorted(p for p in folder.rglob("*") if p.is_file()):
                if path.name.endswith(_TMP_SUFFIX):
                    continue
                header = read_identity(path)
                if isinstance(header, str):
                    _reject(watch_dir, batch, path, header, result)
                    continue
                sha = _sha256(path)
                inner = Path(*path.relative_to(folder).parts)
                key = (header.study, header.sop)
                if header.sop and key in seen_sops:  # twice in this very drop
                    if seen_sops[key].sha256 == sha:
                        planned.append(_Planned(path, seen_sops[key].destination, sha, duplicate=True))
                    else:
                        _reject(
                            watch_dir, batch, path, "SOPInstanceUID twice in the drop with different content", result
                        )
                    continue
                if header.sop and key in known.sops:
                    existing = known.sops[key]
                    if _sha256(existing) == sha:
                        item = _Planned(path, existing, sha, duplicate=True)
                        planned.append(item)
                        seen_sops[key] = item
                    else:
                        _reject(
                            watch_dir,
                            batch,
                            path,
                            "SOPInstanceUID already in the raw dataset with different content",
                            result,
                        )
                    continue
                if header.study in known.study_dirs:
                    study_dir = known.study_dirs[header.study]
                    is_new = False
                else:
                    if header.study not in new_dirs:
                        new_dirs[header.study] = _free_name(raw_dir, folder.name, header.study, taken)
                        taken.add(new_dirs[header.study])
                    study_dir = new_dirs[header.study]
                    is_new = True
                destination = study_dir / inner
                if destination.exists() or any(p.destination == destination for p in planned):
                    if destination.exists() and _sha256(destination) == sha:
                        item = _Planned(path, destination, sha, duplicate=True)
                        planned.append(item)
                        seen_sops[key] = item
                        continue
                    destination = study_dir / f"ingest-{batch}" / inner
                item = _Planned(path, destination, sha)
                if archive_dir is not None:
                    item.archive = archive_dir / batch / path.relative_to(watch_dir)
                planned.append(item)
                if header.sop:
                    seen_sops[key] = item
                if not is_new:
                    result.files_added_to_existing += 1
        result.studies_moved = len(new_dirs)
        result.new_study_dirs = [str(path.relative_to(raw_dir)) for path in new_dirs.values()]

    # ---- copy (checked) into the raw tree (and the archive)
    written: list[Path] = []
    planned += planned_masks
    for item in planned:
        if not item.duplicate:
            _copy_verified(item.source, item.destination, item.sha256)
            written.append(item.destination)
        if item.archive is not None:
            _copy_verified(item.source, item.archive, item.sha256)
    merged_csvs: list[tuple[Path, Path]] = []  # (incoming CSV, its recorded copy)
    for entry in csv_files:
        reason = (
            _merge_reports(entry, reports_csv, id_column, result) if reports_csv is not None else "no reports table"
        )
        if reason:
            _reject(watch_dir, batch, entry, reason, result)
            continue
        assert reports_csv is not None
        kept = (
            archive_dir / batch / entry.name
            if archive_dir is not None
            else reports_csv.parent / INGESTED_REPORTS_DIR / f"{batch}-{entry.name}"
        )
        _copy_verified(entry, kept, _sha256(entry))
        merged_csvs.append((entry, kept))

    # ---- record, verify, and only then remove from the watch folder
    if not planned and not merged_csvs:
        return result
    targets = [raw_dir] + ([masks_dir] if planned_masks and masks_dir is not None else [])
    if merged_csvs and reports_csv is not None:
        targets += [reports_csv, merged_csvs[0][1].parent]
    if archive_dir is not None:
        targets.append(archive_dir)
    if record is not None:
        result.recorded = [str(target) for target in record(targets)]
    for item in planned:
        copies = [item.destination] + ([item.archive] if item.archive is not None else [])
        if in_cache is not None and not any(in_cache(copy) for copy in copies):
            raise IngestError(
                f"{item.source.relative_to(watch_dir)}: not in the DVC cache after recording; left in the watch folder"
            )
    for entry, kept in merged_csvs:
        if in_cache is not None and not in_cache(kept):
            raise IngestError(f"{entry.name}: not in the DVC cache after recording; left in the watch folder")
    for item in planned:
        item.source.unlink()
        result.files_ingested += 1
        result.duplicates += int(item.duplicate)
    for entry, _kept in merged_csvs:
        entry.unlink()
    result.removed_from_watch = len(planned) + len(merged_csvs)
    for folder in [
        *settled_dirs,
        *([masks_in] if planned_masks else []),
    ]:  # empty folders the ingested files leave behind
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(sub.iterdir()):
                sub.rmdir()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    return result


# ---- recording in DVC --------------------------------------------------------------------------------
def dvc_target_for(path: Path, root: Path, raw_dataset: Path | None = None) -> Path | None:
    """The ``dvc add``-ed folder (or file) holding ``path`` inside the repository ``root``, else None.

    Nearest ancestor with a ``<name>.dvc`` file; else ``raw_dataset`` when it holds ``path``; else
    ``path`` itself when it is inside the repository (it becomes a tracked dataset).
    """
    root = root.resolve()
    path = path.resolve()
    try:
        path.relative_to(root)
    except ValueError:
        return None
    for candidate in (path, *path.parents):
        if candidate == root:
            break
        if candidate.with_name(candidate.name + ".dvc").is_file():
            return candidate
    if raw_dataset is not None:
        dataset = raw_dataset.resolve()
        if dataset == path or dataset in path.parents:
            return dataset
    return path


def dvc_cache_dir(root: Path) -> Path:
    import subprocess

    result = subprocess.run(
        [executable("dvc"), "cache", "dir"], cwd=root, capture_output=True, text=True, env=child_env()
    )
    text = result.stdout.strip()
    return Path(text) if result.returncode == 0 and text else root / ".dvc" / "cache"


def in_dvc_cache(path: Path, cache_dir: Path) -> bool:
    """The file's content is in the DVC cache (DVC 3 layout: files/md5/<2>/<30>)."""
    digest = _md5(path)
    return (cache_dir / "files" / "md5" / digest[:2] / digest[2:]).is_file()


def dvc_recorder(root: Path, raw_dataset: Path | None, log: Any = None) -> Any:
    """``record(paths)`` for :func:`collect_incoming`: ``dvc add`` of the tracked folders holding them."""

    def record(paths: list[Path]) -> list[Path]:
        targets: list[Path] = []
        for path in paths:
            target = dvc_target_for(path, root, raw_dataset)
            if target is None:
                continue  # outside the repository: the archive copy is the record
            if target not in targets:
                targets.append(target)
        targets = [t for t in targets if not any(other in t.parents for other in targets)]  # outermost only
        if targets:
            run_command(
                [executable("dvc"), "add", "-q", *(str(t.relative_to(root.resolve())) for t in targets)],
                cwd=root,
                env=child_env(),
                log=log,
            )
        return targets

    return record


@flow(name="fvlm-ingest")
def ingest_flow(
    params_path: str | None = None,
    watch_dir: str | None = None,
    targets: list[str] | None = None,
    settle_s: float = 60.0,
    pull: bool = False,
    push: bool = True,
) -> dict[str, Any]:
    """Nightly: watch folder -> raw dataset (by DICOM identity, recorded) -> ``dvc repro shard`` -> push."""
    from core.config import load_config

    log = run_logger()
    config = load_config(params_path)
    root = config.root.resolve()
    watch = config.path(watch_dir or config.orchestration.watch_dir)
    raw_dir = config.path(config.paths.raw_dicom)
    raw_dataset = config.path(config.paths.raw_dataset)
    inside = dvc_target_for(raw_dir, root, raw_dataset) is not None
    cache_dir = dvc_cache_dir(root)
    incoming = collect_incoming(
        watch,
        raw_dir,
        config.path(config.paths.reports_csv),
        id_column=config.reports.id_column,
        settle_s=settle_s,
        record=dvc_recorder(root, raw_dataset, log),
        in_cache=lambda path: in_dvc_cache(path, cache_dir),
        archive_dir=None if inside else config.path(config.paths.ingest_archive),
        masks_dir=config.path(config.paths.precomputed_masks),
    )
    log.info(
        "ingest: %d new studies, %d files added to known studies, %d files ingested (%d already present), "
        "%d report rows added (%d skipped), %d files still being copied, %d rejected; recorded: %s",
        incoming.studies_moved,
        incoming.files_added_to_existing,
        incoming.files_ingested,
        incoming.duplicates,
        incoming.report_rows_added,
        incoming.report_rows_skipped,
        incoming.not_settled,
        len(incoming.rejected),
        ", ".join(incoming.recorded) or "-",
    )
    for line in incoming.rejected:
        log.warning("ingest rejected %s", line)
    report = pipeline_flow(
        repo_root=str(config.root),
        targets=targets if targets is not None else ["shard"],
        pull=pull,
        push=push,
        metrics_dir=config.paths.metrics,
        tracking_uri=config.tracking.mlflow_tracking_uri,
        registered_model=config.tracking.registered_model,
        promote_alias=config.evaluate.promote_alias,
    )
    report["ingest"] = asdict(incoming)
    return report


@flow(name="fvlm-train-evaluate")
def train_evaluate_flow(
    params_path: str | None = None,
    retrain: bool = False,
    targets: list[str] | None = None,
    pull: bool = False,
    push: bool = True,
) -> dict[str, Any]:
    """Weekly: ``dvc repro evaluate`` (train -> evaluate -> promotion gate), push, report the MLflow run."""
    from core.config import load_config

    config = load_config(params_path)
    return pipeline_flow(
        repo_root=str(config.root),
        targets=targets if targets is not None else ["evaluate"],
        force_stages=["train"] if retrain else None,
        pull=pull,
        push=push,
        metrics_dir=config.paths.metrics,
        tracking_uri=config.tracking.mlflow_tracking_uri,
        registered_model=config.tracking.registered_model,
        promote_alias=config.evaluate.promote_alias,
    )


def build_deployments(
    config: FvlmConfig,
    params_path: Path,
    *,
    which: tuple[str, ...] = ("ingest", "train"),
    interval_s: float | None = None,
    ingest_parameters: dict[str, Any] | None = None,
    train_parameters: dict[str, Any] | None = None,
) -> list[Any]:
    """``RunnerDeployment`` objects for ``prefect.serve``: cron from config (or an interval, for tests)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron, Interval

    orchestration = config.orchestration

    def schedule(cron: str) -> Any:
        return Interval(interval_s) if interval_s else Cron(cron, timezone=orchestration.timezone)

    deployments = []
    if "ingest" in which:
        deployments.append(
            ingest_flow.to_deployment(
                name=INGEST_DEPLOYMENT,
                schedule=schedule(orchestration.ingest_cron),
                parameters={"params_path": str(params_path), **(ingest_parameters or {})},
                concurrency_limit=1,
                tags=["fvlm", "ingest"],
                description="watch folder -> convert, segment, parse-reports, shard (dvc repro) -> dvc push",
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    if "train" in which:
        deployments.append(
            train_evaluate_flow.to_deployment(
                name=TRAIN_DEPLOYMENT,
                schedule=schedule(orchestration.train_cron),
                parameters={"params_path": str(params_path), **(train_parameters or {})},
                concurrency_limit=1,
                tags=["fvlm", "train"],
                description="train (torchrun) -> evaluate -> promotion gate (dvc repro evaluate) -> dvc push",
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return deployments
