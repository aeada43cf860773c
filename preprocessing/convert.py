"""`fvlm convert` as a library: DICOM tree -> RAS int16 HU NIfTI volumes + studies manifest.

Public API:

* :class:`ConvertJob` (``ConvertJob.from_config(config, **cli_overrides)``) + :func:`run_convert` ->
  :class:`ConvertSummary`: the stage (DICOM or CT-RATE input; discovery, conversion in a process pool or
  through the caller's ``map_batches``, both manifests);
* :func:`discover_studies` (re-exported from :mod:`preprocessing.dicom_discovery`) and
  :func:`convert_study` -> :class:`ManifestRow` (one study; never raises for bad data), with
  :class:`ConvertSettings` (what is hashed into ``config_hash``).

Outputs under ``output_dir`` (names from :mod:`core.layout`): ``volumes/<study_id>.nii.gz`` (or
``.nii``), ``studies.parquet`` (one row per input study, ok | quarantined + reason, ``volume_path``
relative to the folder), ``unreadable.parquet`` (files attributable to no study). Shapes and spacings in
the manifest are (z, y, x) of the RAS+ volume on disk.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from core import layout
from core.batches import MapBatches
from core.io import sha256_files
from preprocessing.conversion import (
    PLAUSIBLE_MAX_HU,
    ConvertItem,
    ConvertJob,
    ConvertSettings,
    ConvertSummary,
    ManifestRow,
    convert_items,
    finish_conversion,
    read_manifest,
    remove_stale_volumes,
    reusable,
)
from preprocessing.deid import (
    OWN_PATIENT_WARNING,
    scrub_text,
    series_pseudonym,
    study_patient_pseudonym,
    study_pseudonym,
)
from preprocessing.dicom_discovery import (
    Discovery,
    StudyFiles,
    discover_studies,
    scan_dicom_tree,
)

__all__ = [
    "ConvertJob",
    "ConvertSettings",
    "ConvertSummary",
    "ManifestRow",
    "convert_study",
    "discover_studies",
    "read_manifest",
    "run_convert",
]

logger = logging.getLogger(__name__)

# a volume thinner than this cannot be segmented into 3-D anatomies (TotalSegmentator and the ROI crop are 3-D):
# quarantined here with a reason instead of failing in segmentation, whatever convert.min_slices allows
MIN_SEGMENTABLE_SLICES = 2
MIN_SEGMENTABLE_PIXELS = 16  # rows and columns


def convert_study(
    study: StudyFiles,
    output_dir: str | os.PathLike[str],
    settings: ConvertSettings,
    *,
    previous: ManifestRow | None = None,
) -> ManifestRow:
    """Convert one study (selection -> assembly -> NIfTI); bad data gives a quarantined row, not an exception."""
    from preprocessing.series_selection import select_series
    from preprocessing.volume_assembly import AssemblyError, assemble_series
    from preprocessing.volume_writer import write_ras_nifti

    started = time.perf_counter()
    out = Path(output_dir)
    length = settings.pseudonym_length
    study_id = study_pseudonym(study.study_key, settings.salt, length)
    patient_id, own_patient = study_patient_pseudonym(study.patient_key, study.study_key, settings.salt, length)
    row = ManifestRow(
        study_id=study_id,
        patient_id=patient_id,
        status="quarantined",
        n_input_files=study.n_files,
        config_hash=settings.config_hash(),
    )
    phi = study.phi_terms

    def clean(text: str) -> str:
        return scrub_text(text, phi)

    try:
        row.source_hash = study_source_hash(study)
    except OSError as error:
        row.reason = clean(f"cannot read input files: {error.strerror or type(error).__name__}")
        return row
    # an ok row from before the segmentability floor (one slice with min_slices 1) is converted again
    too_small = previous is not None and previous.status == "ok" and unsegmentable(previous.shape) is not None
    if reusable(previous, row.source_hash, row.config_hash, out) and not too_small:
        assert previous is not None
        previous.reused = True
        if not previous.patient_id:  # converted before the own-patient fallback: apply it, same as a new run
            previous.patient_id = patient_id
            previous.warnings = [*previous.warnings, OWN_PATIENT_WARNING]
        return previous
    row.warnings = [clean(problem) for problem in study.problems]
    if own_patient:
        row.warnings.append(OWN_PATIENT_WARNING)
    try:
        selection = select_series(
            list(study.series.values()), preference=list(settings.series_preference), min_slices=settings.min_slices
        )
    except ValueError as error:
        row.reason = clean(str(error))
        return row
    row.selection_policy = selection.policy
    row.alternatives = json.dumps(
        [
            {
                "series_id": series_pseudonym(c.series_uid, settings.salt, length),
                "series_number": c.series_number,
                "description": clean(c.description),
                "slices": c.n_slices,
                "spacing_mm": round(c.spacing_mm, 4) if c.spacing_mm else None,
                "kernel": clean(c.kernel),
                "excluded": clean(c.excluded) if c.excluded else None,
            }
            for c in selection.candidates
            if selection.chosen is None or c.series_uid != selection.chosen.series_uid
        ]
    )
    chosen = selection.chosen
    if chosen is None:
        row.reason = clean(selection.reason)
        remove_stale_volumes(out, study_id)
        row.seconds = round(time.perf_counter() - started, 3)
        return row
    row.series_id = series_pseudonym(chosen.series_uid, settings.salt, length)
    row.series_description = clean(chosen.description)
    row.series_number = chosen.series_number
    row.convolution_kernel = clean(chosen.kernel)
    try:
        assembled = assemble_series(
            study.series[chosen.series_uid].slices,
            strict=settings.strict,
            min_slices=settings.min_slices,
            max_spacing_deviation=settings.max_spacing_deviation,
            decode_threads=settings.decode_threads,
        )
        too_small = unsegmentable(assembled.hu_kji.shape)
        if too_small:
            row.reason = f"series {chosen.series_number if chosen.series_number is not None else '?'}: {too_small}"
            remove_stale_volumes(out, study_id)
            row.seconds = round(time.perf_counter() - started, 3)
            return row
        volume_relative = layout.volume_relpath(study_id, settings.output_extension)
        written = write_ras_nifti(assembled.hu_kji, assembled.affine_ras_ijk, out / volume_relative)
    except AssemblyError as error:
        row.reason = clean(f"series {chosen.series_number if chosen.series_number is not None else '?'}: {error}")
        remove_stale_volumes(out, study_id)
        row.seconds = round(time.perf_counter() - started, 3)
        return row
    except MemoryError:
        row.reason = "out of memory while assembling the volume"
        return row
    except Exception as error:  # never crash the cohort: unexpected errors quarantine with their type
        logger.exception("%s: unexpected error", study_id)
        row.reason = clean(f"unexpected error ({type(error).__name__}): {str(error)[:200]}")
        remove_stale_volumes(out, study_id)
        return row
    remove_stale_volumes(out, study_id, keep=settings.output_extension)
    row.status = "ok"
    row.volume_path = volume_relative
    row.slices = written.shape_zyx[0]
    row.n_input_slices = assembled.n_input_slices
    row.shape = list(written.shape_zyx)
    row.spacing = [round(v, 6) for v in written.spacing_zyx_mm]
    row.affine = [float(v) for v in written.affine_ras.ravel()]
    row.warnings += [clean(w) for w in assembled.warnings]
    row.resampled = assembled.resampled
    row.transfer_syntaxes = assembled.transfer_syntaxes
    row.hu_min, row.hu_max = written.hu_min, written.hu_max
    if written.hu_max > PLAUSIBLE_MAX_HU:
        row.warnings.append(
            f"HU maximum {written.hu_max} above {PLAUSIBLE_MAX_HU}: metal, or corrupt / mis-signed pixel data"
        )
    row.seconds = round(time.perf_counter() - started, 3)
    return row


def study_source_hash(study: StudyFiles) -> str:
    """``core.io.sha256_files`` of the study's files, from the hashes discovery took when it has them all."""
    known = study.file_hashes
    if not study.files or not all(path in known for path in study.files):
        return sha256_files(study.files)
    import hashlib

    digest = hashlib.sha256()
    for file_hash in sorted(known[path] for path in study.files):
        digest.update(file_hash.encode())
    return digest.hexdigest()


def unchanged_study(study: StudyFiles, previous: ManifestRow | None, settings: ConvertSettings, out: Path) -> bool:
    """True when :func:`convert_study` would only reuse ``previous``, known without reading a file (discovery
    hashed every file): such studies are settled in the calling process, never shipped to a worker."""
    if previous is None or not study.files or not all(path in study.file_hashes for path in study.files):
        return False
    if previous.status == "ok" and unsegmentable(previous.shape) is not None:
        return False
    return reusable(previous, study_source_hash(study), settings.config_hash(), out)


def record_study_identities(
    identity_map: Path, studies: list[StudyFiles], settings: ConvertSettings, output_dir: Path
) -> None:
    """Write each study's (and series') pseudonym -> folder, UIDs, PatientID, accession into the private
    identity map (``privacy.identity_map``, read by ``fvlm lookup``), in this process: the PHI never goes
    to a worker's result, a manifest or a log."""
    from core.privacy import IdentityRecord, record_identities, salt_fingerprint

    target = Path(identity_map).resolve()
    if target.is_relative_to(Path(output_dir).resolve()):
        raise ValueError(
            f"privacy.identity_map {identity_map} lies inside the convert output {output_dir} (a DVC output): "
            "point it outside every data output (default .fvlm-private/identity.sqlite)"
        )
    length = settings.pseudonym_length
    fingerprint = salt_fingerprint(settings.salt)
    records = []
    for study in studies:
        study_id = study_pseudonym(study.study_key, settings.salt, length)
        patient, own = study_patient_pseudonym(study.patient_key, study.study_key, settings.salt, length)
        common = dict(
            study_id=study_id,
            patient_pseudonym=patient,
            own_patient=own,
            study_key=study.study_key,
            folder=study.folder,
            study_instance_uid=study.study_uid,
            patient_id=study.patient_key or "",
            accession_number=study.accession_number,
            salt_fingerprint=fingerprint,
        )
        records.append(IdentityRecord(pseudonym=study_id, kind="study", **common))  # type: ignore[arg-type]
        for series in study.series.values():
            records.append(
                IdentityRecord(
                    pseudonym=series_pseudonym(series.series_uid, settings.salt, length),
                    kind="series",
                    series_instance_uid=series.series_uid,
                    series_number=series.series_number,
                    **common,  # type: ignore[arg-type]
                )
            )
    record_identities(target, records)


def unsegmentable(shape_kji: Sequence[int]) -> str | None:
    """Why a volume of this (slices, rows, columns) shape cannot be segmented, or None (also for no shape)."""
    if len(shape_kji) < 3:
        return None
    slices, rows, columns = (int(v) for v in shape_kji[:3])
    if slices < MIN_SEGMENTABLE_SLICES:
        return (
            f"{slices} slice(s): too few to segment (at least {MIN_SEGMENTABLE_SLICES} needed for a 3-D volume, "
            "whatever convert.min_slices allows)"
        )
    if min(rows, columns) < MIN_SEGMENTABLE_PIXELS:
        return f"{rows} x {columns} pixels per slice: too small to segment (at least {MIN_SEGMENTABLE_PIXELS})"
    return None


# A study process pool costs each worker an interpreter and the imports (numpy, nibabel, pydicom where needed:
# ~0.4-0.7 CPU s) and saves wall time only when there is more pixel work than that to share: converting costs
# ~15 ns per voxel of the chosen series in one process (docs/convert.md), so below ~1.5e8 voxels (two
# 512 x 512 x 300 series) the studies run in this process.
CONVERT_POOL_MIN_VOXELS = 150_000_000


def largest_series_voxels(study: StudyFiles) -> int:
    """Voxels of the study's largest series (an upper bound of the one that is converted)."""
    return max((sum(s.rows * s.columns for s in series.slices) for series in study.series.values()), default=0)


def pool_pays(studies: Sequence[StudyFiles], workers: int) -> bool:
    """Whether a process pool of ``workers`` is worth spawning for these studies (see CONVERT_POOL_MIN_VOXELS)."""
    if workers <= 1 or len(studies) <= 1:
        return False
    return sum(largest_series_voxels(study) for study in studies) >= CONVERT_POOL_MIN_VOXELS


def run_convert(job: ConvertJob, map_batches: MapBatches | None = None) -> ConvertSummary:
    """The convert stage: discover the studies of ``job.input_dir`` (DICOM, or CT-RATE NIfTI + metadata),
    convert each one (reusing unchanged ones) and write both manifests atomically at the end.

    ``map_batches``: how batches of studies run (default: this library, ``job.workers`` processes; the
    Prefect flow passes its task fan-out)."""
    if job.input_format == "ctrate":
        from preprocessing.ctrate import run_ctrate

        return run_ctrate(job, map_batches)
    started = time.perf_counter()
    out = Path(job.output_dir)
    (out / layout.VOLUMES_DIR).mkdir(parents=True, exist_ok=True)
    discovery: Discovery = scan_dicom_tree(
        job.input_dir,
        study_key_tag=job.settings.study_key_tag,
        workers=job.workers,
        hash_files=True,
        index_path=job.file_index,
    )
    workers = job.workers if map_batches is not None or pool_pays(discovery.studies, job.workers) else 1
    cpu = os.cpu_count() or 1
    settings = replace(job.settings, decode_threads=job.decode_threads or max(1, cpu // max(1, workers)))
    previous = read_manifest(layout.converted_manifest(out))
    length = settings.pseudonym_length
    if job.identity_map is not None:
        record_study_identities(job.identity_map, discovery.studies, settings, out)
    items = []
    settled: list[ManifestRow] = []  # unchanged studies: reused here, no worker, no pool
    for study in discovery.studies:
        study_id = study_pseudonym(study.study_key, settings.salt, length)
        if unchanged_study(study, previous.get(study_id), settings, out):
            settled.append(convert_study(study, out, settings, previous=previous.get(study_id)))
        else:
            items.append(ConvertItem(study_id, study, previous.get(study_id)))

    def crash_row(item: ConvertItem, reason: str) -> ManifestRow:
        study: StudyFiles = item.source  # type: ignore[assignment]
        return ManifestRow(
            study_id=item.study_id,
            patient_id=study_patient_pseudonym(study.patient_key, study.study_key, settings.salt, length)[0],
            status="quarantined",
            reason=reason,
            n_input_files=study.n_files,
            config_hash=settings.config_hash(),
        )

    if items and map_batches is None and workers <= 1:  # converting in this thread only, from here on
        from preprocessing.volume_writer import import_nibabel_without_pydicom

        import_nibabel_without_pydicom()
    rows = settled + convert_items(items, out, settings, convert_study, crash_row, workers, map_batches)
    return finish_conversion(rows, discovery.unreadable, discovery.n_files_seen, out, started)
