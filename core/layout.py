"""The stage file layouts: the one place that knows where each stage writes and where its neighbours read.

Every stage writes its outputs, and reads its neighbours' outputs, through these names and helpers; no
other module spells ``studies.parquet``, ``volumes/<id>.nii.gz`` or a sibling table name.

==============  ===========================================================================
stage           layout under its output folder
==============  ===========================================================================
convert         ``studies.parquet`` (one row per study, ``volume_path`` relative to the folder),
                ``unreadable.parquet``, ``volumes/<study_id>{.nii.gz|.nii}``
segment         ``segments.parquet``, ``masks/<study_id>.nii.gz``, ``qc/<study_id>.png``
parse-reports   ``<name>.parquet`` (study x anatomy) + ``<name>.studies.parquet`` (per study)
shard           ``{train,val,test}/part-NNNNN.parquet``, ``manifest.json``
==============  ===========================================================================

Outside every stage output (never DVC-tracked, gitignored): ``.fvlm-cache/`` at the project root holds
caches that are keyed by machine-specific values (absolute paths, mtimes), e.g. the shard stage's prepared
studies and file-hash memo (:func:`stage_cache_dir`), so that no tracked output depends on the clone's
location or on file times.

Study keys (the value pseudonymised into ``study_id``): the configured DICOM tag (``convert.study_key_tag``,
StudyInstanceUID by default), or, for files without it, ``folder:<folder>`` where ``<folder>`` is the files'
folder relative to the raw DICOM root, POSIX separators (:func:`folder_study_key`). A precomputed mask of
such a study may be named by its study_id or by :func:`mask_stem_for_study_key` of the key.
"""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | os.PathLike[str]

# what a volume or mask file may be called (first = default)
NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

# ------------------------------------------------------------------------------------------- convert
CONVERTED_MANIFEST = "studies.parquet"
UNREADABLE_TABLE = "unreadable.parquet"
VOLUMES_DIR = "volumes"

# ------------------------------------------------------------------------------------------- segment
SEGMENTS_MANIFEST = "segments.parquet"
MASKS_DIR = "masks"
QC_DIR = "qc"
MASK_EXTENSION = ".nii.gz"

# ------------------------------------------------------------------------------------ parse-reports
REPORTS_SUFFIX = ".parquet"
REPORTS_STUDIES_SUFFIX = ".studies.parquet"

# --------------------------------------------------------------------------------------------- shard
SHARD_MANIFEST = "manifest.json"

# ------------------------------------------------------------------------------ caches, study keys
CACHE_DIR = ".fvlm-cache"  # at the project root (the params.yaml folder); gitignored, never a DVC output
FOLDER_KEY_PREFIX = "folder:"
_MASK_STEM_PREFIX = "folder__"
SHARD_PART_GLOB = "part-*.parquet"
SHARD_CACHE_DIR = ".cache"  # where older versions kept the shard cache inside the output; shard removes it


def stage_cache_dir(project_root: PathLike, stage: str) -> Path:
    """``<project_root>/.fvlm-cache/<stage>``: a stage's machine-local cache, outside its DVC output."""
    return Path(project_root) / CACHE_DIR / stage


PRIVATE_DIR = ".fvlm-private"  # what only the salt holder may read (identity map, raw-header index); gitignored


def convert_index_path(project_root: PathLike, input_dir: PathLike) -> Path:
    """``<project_root>/.fvlm-private/convert-index/<input name>-<hash of the resolved input path>.pickle``:
    convert's index of the files it has read (stat data -> header record + content hash), one per input
    folder, outside every DVC output (:mod:`preprocessing.file_index`). It holds raw header values
    (PatientID, names, accession), so it lives beside the identity map, not in the shareable cache."""
    import hashlib

    source = Path(input_dir).resolve()
    label = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    folder = Path(project_root).resolve() / PRIVATE_DIR / "convert-index"
    return folder / f"{source.name or 'root'}-{label}.pickle"


def folder_study_key(relative_folder: str | os.PathLike[str]) -> str:
    """The study key of DICOM files without a study key tag: ``folder:<relative/posix/path>`` of their
    folder relative to the raw DICOM root (``folder:.`` for files directly in the root)."""
    from pathlib import PurePosixPath

    posix = PurePosixPath(Path(relative_folder).as_posix()).as_posix()
    return f"{FOLDER_KEY_PREFIX}{posix}"


def mask_stem_for_study_key(study_key: str) -> str:
    """A file-name-safe stem for a precomputed mask of ``study_key``: a folder key's ``:`` and ``/`` become
    ``__`` (``folder:site1/P01`` -> ``folder__site1__P01``); any other key is its own stem."""
    if not study_key.startswith(FOLDER_KEY_PREFIX):
        return study_key
    return _MASK_STEM_PREFIX + study_key[len(FOLDER_KEY_PREFIX) :].replace("/", "__")


def study_keys_of_mask_stem(stem: str) -> set[str]:
    """The raw study keys a precomputed mask stem may stand for: the stem itself, its folder-key form
    (:func:`mask_stem_for_study_key` reversed) and its percent-decoded form (``folder%3AP01%2Fa__b``, for
    folder names that hold ``__``)."""
    from urllib.parse import unquote

    keys = {stem, unquote(stem)}
    if stem.startswith(_MASK_STEM_PREFIX):
        keys.add(FOLDER_KEY_PREFIX + stem[len(_MASK_STEM_PREFIX) :].replace("__", "/"))
    return {key for key in keys if key}


def nifti_stem(name: str) -> str:
    """``x.nii.gz`` / ``x.nii`` -> ``x`` (other names unchanged)."""
    for extension in NIFTI_EXTENSIONS:
        if name.endswith(extension):
            return name[: -len(extension)]
    return name


# ------------------------------------------------------------------------------------------- convert
def converted_manifest(converted_dir: PathLike) -> Path:
    return Path(converted_dir) / CONVERTED_MANIFEST


def unreadable_table(converted_dir: PathLike) -> Path:
    return Path(converted_dir) / UNREADABLE_TABLE


def volume_relpath(study_id: str, extension: str = NIFTI_EXTENSIONS[0]) -> str:
    """What convert records in ``studies.parquet``'s ``volume_path`` column."""
    if extension not in NIFTI_EXTENSIONS:
        raise ValueError(f"volume extension must be one of {NIFTI_EXTENSIONS}, got {extension!r}")
    return f"{VOLUMES_DIR}/{study_id}{extension}"


def volume_path(converted_dir: PathLike, study_id: str, extension: str = NIFTI_EXTENSIONS[0]) -> Path:
    return Path(converted_dir) / volume_relpath(study_id, extension)


def resolve_volume(converted_dir: PathLike, study_id: str, recorded: str | None = None) -> Path | None:
    """The volume file of ``study_id``: the manifest's ``volume_path`` when given, else whichever of the
    NIfTI extensions exists (``None`` when none does)."""
    folder = Path(converted_dir)
    if recorded:
        path = Path(recorded)
        return path if path.is_absolute() else folder / path
    for extension in NIFTI_EXTENSIONS:
        candidate = volume_path(folder, study_id, extension)
        if candidate.is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------------------- segment
def segments_manifest(segmented_dir: PathLike) -> Path:
    return Path(segmented_dir) / SEGMENTS_MANIFEST


def mask_relpath(study_id: str) -> str:
    return f"{MASKS_DIR}/{study_id}{MASK_EXTENSION}"


def mask_path(segmented_dir: PathLike, study_id: str) -> Path:
    return Path(segmented_dir) / mask_relpath(study_id)


def qc_relpath(study_id: str) -> str:
    return f"{QC_DIR}/{study_id}.png"


# ------------------------------------------------------------------------------------ parse-reports
def reports_studies_path(reports_table: PathLike) -> Path:
    """``X.parquet`` -> ``X.studies.parquet``: the per-study sibling of the study x anatomy table."""
    path = Path(reports_table)
    stem = path.name.removesuffix(REPORTS_SUFFIX)
    return path.with_name(f"{stem}{REPORTS_STUDIES_SUFFIX}")


# --------------------------------------------------------------------------------------------- shard
def shard_manifest(shards_dir: PathLike) -> Path:
    return Path(shards_dir) / SHARD_MANIFEST


def shard_split_dir(shards_dir: PathLike, split: str) -> Path:
    return Path(shards_dir) / split


def shard_parts(shards_dir: PathLike, split: str) -> list[Path]:
    """The part files of one split, in name order."""
    return sorted(shard_split_dir(shards_dir, split).glob(SHARD_PART_GLOB))
