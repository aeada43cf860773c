"""Generate a whole synthetic cohort on disk (``fvlm demo-data``), in parallel over studies.

Layout of ``OUT_DIR``::

    dicom/study_NNNN/series_{1,2,3}/IMxxxx.dcm   localizer, thin soft-kernel axial, thick sharp-kernel axial
    masks/<study_key>.nii.gz                     TotalSegmentator ids on the thin series' grid, RAS, uint8
    reports.csv                                  study_key, Findings, Impression
    labels.csv                                   study_key + the 18 CT-RATE labels (0/1)
    cohort.json                                  seed, size, per-study plan and lesion ground truth
    phi_planted.json                             every fake PHI value planted per study (for leak tests)

``study_key`` is the StudyInstanceUID of the study. Study ``i`` depends only on ``(seed, i)``.

With ``sources`` (:func:`read_source_reports`: an external reports table + its 18 labels, e.g. CT-RATE's),
study ``i`` is drawn from one source report's labels and carries that report's text instead of a template
report (no PHI planted in the text); ``labels.csv`` holds what was drawn, ``cohort.json`` the source row.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.io import atomic_path, atomic_write_text
from core.processes import die_with_parent
from synthetic.patients import patient_index

LOG = logging.getLogger(__name__)
GENERATOR_VERSION = "4"


@dataclass
class CohortSummary:
    out_dir: Path
    seed: int
    size: str
    studies: int
    normal_studies: int
    label_counts: dict[str, int]
    lesion_count: int
    dicom_files: int
    seconds: float
    study_keys: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        positive = ", ".join(f"{name}: {count}" for name, count in self.label_counts.items() if count)
        return [
            f"demo-data: {self.studies} studies (seed {self.seed}, size {self.size}) -> {self.out_dir}",
            f"  normal studies: {self.normal_studies}, lesions drawn: "
            f"{self.lesion_count}, DICOM files: {self.dicom_files}",
            f"  positives per label: {positive or 'none'}",
            f"  time: {self.seconds:.1f} s",
        ]


def study_key(seed: int, index: int) -> str:
    from synthetic.dicom_writer import uid

    return uid(seed, index, "study")


# report text columns accepted in a source reports table: ours, CT-RATE's, CT-CLIP's classifier table
TEXT_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("Findings", "Impression"),
    ("Findings_EN", "Impressions_EN"),
    ("report_text", None),
)


@dataclass(frozen=True)
class SourceReport:
    """One external report: its row in the reports table, text and 18 labels (0/1)."""

    row: int
    findings: str
    impression: str
    labels: dict[str, int]


def read_source_reports(reports_csv: str | Path, labels_csv: str | Path) -> list[SourceReport]:
    """Reports (text columns of :data:`TEXT_COLUMNS`) joined with their labels on the first column both
    tables share (``study_key``, ``VolumeName``, ``AccessionNo``, ...); one file may hold both."""
    import pandas as pd

    from core.anatomy_sets import CTRATE_LABELS

    reports, labels = pd.read_csv(reports_csv, dtype=str), pd.read_csv(labels_csv)
    text = next(((f, i) for f, i in TEXT_COLUMNS if f in reports.columns and (i is None or i in reports.columns)), None)
    if text is None:
        raise ValueError(
            f"{reports_csv}: no report text columns; give one of "
            + ", ".join("+".join(c for c in pair if c) for pair in TEXT_COLUMNS)
        )
    missing = [name for name in CTRATE_LABELS if name not in labels.columns]
    if missing:
        raise ValueError(f"{labels_csv}: missing label columns {missing} (the 18 CT-RATE labels, 0/1)")
    used = {*CTRATE_LABELS, *(c for pair in TEXT_COLUMNS for c in pair if c)}
    keys = [c for c in reports.columns if c in labels.columns and c not in used]
    if Path(reports_csv).resolve() == Path(labels_csv).resolve():
        joined = reports.assign(**{name: labels[name] for name in CTRATE_LABELS})
    elif keys:
        joined = reports.merge(labels[[keys[0], *CTRATE_LABELS]], on=keys[0], how="inner", validate="one_to_one")
    else:
        raise ValueError(f"{reports_csv} and {labels_csv} share no key column to join reports with their labels")
    out = []
    for row, record in enumerate(joined.to_dict("records")):
        values = {name: record[name] for name in CTRATE_LABELS}
        bad = {name: value for name, value in values.items() if str(value).strip() not in ("0", "1", "0.0", "1.0")}
        if bad:
            raise ValueError(f"{labels_csv}: row {row} has labels that are not 0/1: {bad}")
        findings = record[text[0]] if isinstance(record[text[0]], str) else ""
        impression = record[text[1]] if text[1] and isinstance(record[text[1]], str) else ""
        out.append(SourceReport(row, findings, impression, {name: int(float(value)) for name, value in values.items()}))
    if not out:
        raise ValueError(f"{reports_csv} / {labels_csv}: no report with labels")
    return out


def pick_sources(sources: list[SourceReport], studies: int, seed: int) -> list[SourceReport]:
    """``studies`` distinct source reports in a seeded order (a cohort seed draws its own reports)."""
    if studies > len(sources):
        raise ValueError(f"{studies} studies asked from {len(sources)} source reports: ask for at most {len(sources)}")
    order = np.random.default_rng([seed, 27]).permutation(len(sources))[:studies]
    return [sources[int(i)] for i in order]


def generate_study(
    out_dir: str | Path,
    seed: int,
    index: int,
    size: str,
    abdomen_fraction: float,
    difficulty: str = "learnable",
    source: SourceReport | None = None,
) -> dict[str, Any]:
    """Make, write and describe study ``index``; returns its cohort.json record (+ report and PHI).
    ``source``: draw the source report's labels and carry its text."""
    import nibabel as nib

    from synthetic.dicom_writer import DicomVariant, write_study
    from synthetic.phantom import make_phantom, study_rngs
    from synthetic.phi import patient_phi, searchable_values, study_phi
    from synthetic.reports import write_report

    started = time.perf_counter()
    out = Path(out_dir)
    phantom = make_phantom(
        seed,
        index,
        size,
        abdomen_fraction=abdomen_fraction,  # type: ignore[arg-type]
        difficulty=difficulty,
        labels=source.labels if source is not None else None,
    )
    rngs = study_rngs(seed, index)
    key = study_key(seed, index)
    patient = patient_index(seed, index)
    phi = study_phi(rngs["report"], patient_phi(seed, patient))
    variant = DicomVariant.draw(rngs["dicom"])
    study_dir = out / "dicom" / f"study_{index:04d}"
    if study_dir.exists():
        shutil.rmtree(study_dir)
    series = write_study(phantom, study_dir, seed=seed, study_uid=key, phi=phi, variant=variant, rng=rngs["dicom"])
    for entry in series:
        entry["folder"] = f"dicom/{entry['folder']}"

    mask = nib.Nifti1Image(phantom.labels_zyx.transpose(2, 1, 0), phantom.affine_ras)
    mask.header.set_data_dtype(np.uint8)
    mask.set_qform(phantom.affine_ras, code=1)
    mask.set_sform(phantom.affine_ras, code=1)
    with atomic_path(out / "masks" / f"{key}.nii.gz") as tmp:
        nib.save(mask, tmp)

    findings, impression, planted = write_report(phantom.lesions, phantom.labels, phantom.plan, phi, rngs["report"])
    source_record: dict[str, Any] | None = None
    if source is not None:  # the real text replaces the template one; no PHI goes into it
        findings, impression = source.findings, source.impression
        planted = {name: False for name in planted}
        source_record = {
            "row": source.row,
            "labels": source.labels,
            "undrawn": sorted(n for n, v in source.labels.items() if v and not phantom.labels.get(n)),
        }
    plan = {k: v for k, v in phantom.plan.items()}
    record = {
        "study_key": key,
        "index": index,
        "patient_index": patient,
        "follow_up": patient != index,
        "abdomen": phantom.abdomen,
        "normal": phantom.is_normal,
        "shape_zyx": list(phantom.hu_zyx.shape),
        "spacing_zyx_mm": [round(float(s), 6) for s in phantom.spacing_zyx],
        "affine_ras": np.round(phantom.affine_ras, 6).tolist(),
        "series": series,
        "dicom_variant": {
            "transfer_syntax": "implicit_vr_le" if variant.implicit_vr else "explicit_vr_le",
            "rescale_intercept": variant.intercept,
            "pixel_representation": int(variant.signed),
            "shuffled_files": variant.shuffle_files,
            "shuffled_instance_numbers": variant.shuffle_instance_numbers,
        },
        "plan": plan,
        "labels": phantom.labels,
        "lesions": phantom.lesions,
        "mask": f"masks/{key}.nii.gz",
        "_report": {"Findings": findings, "Impression": impression},
        "_phi": {**phi, "in_report": planted, "search_values": searchable_values(phi, planted)},
        "_seconds": round(time.perf_counter() - started, 3),
    }
    if source_record is not None:  # template cohorts keep their cohort.json bytes
        record["report_source"] = source_record
    return record


def _remove_stale(out: Path, keep_keys: set[str], keep_indices: set[int]) -> None:
    """Drop studies a previous, larger run left behind (only our own naming patterns)."""
    dicom = out / "dicom"
    if dicom.is_dir():
        for folder in dicom.iterdir():
            match = re.fullmatch(r"study_(\d{4})", folder.name)
            if match and folder.is_dir() and int(match.group(1)) not in keep_indices:
                shutil.rmtree(folder)
    old = out / "cohort.json"
    if old.is_file():
        try:
            previous = json.loads(old.read_text())
        except (json.JSONDecodeError, OSError):
            return
        for record in previous.get("studies", []):
            if record.get("study_key") not in keep_keys:
                (out / "masks" / f"{record.get('study_key')}.nii.gz").unlink(missing_ok=True)


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def generate_cohort(
    out_dir: str | Path,
    studies: int = 20,
    seed: int = 0,
    size: str = "demo",
    workers: int = 2,
    abdomen_fraction: float = 0.3,
    difficulty: str = "learnable",
    sources: list[SourceReport] | None = None,
) -> CohortSummary:
    """Write the synthetic cohort to ``out_dir`` (see module doc); deterministic for ``seed`` and ``difficulty``
    (``learnable`` / ``paper``: lesion sizes, contrast and prevalence, see ``synthetic.difficulty``).
    ``sources``: real reports (:func:`read_source_reports`), ``studies`` of them drawn by ``seed``."""
    from core.anatomy_sets import CTRATE_LABELS
    from synthetic.difficulty import lesion_spec

    if studies < 1:
        raise ValueError("studies must be >= 1")
    lesion_spec(difficulty)  # unknown difficulty: fail before any work
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    indices = list(range(studies))
    picked: list[SourceReport | None] = (
        list(pick_sources(sources, studies, seed)) if sources is not None else [None] * studies
    )
    args = [(str(out), seed, index, size, abdomen_fraction, difficulty, picked[index]) for index in indices]
    records: list[dict[str, Any]] = []
    if workers <= 1 or studies == 1:
        for arg in args:
            records.append(generate_study(*arg))
            LOG.info("study %d/%d written", len(records), studies)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")  # safe next to threads (Prefect) and torch
        with ProcessPoolExecutor(
            max_workers=min(workers, studies), mp_context=context, initializer=die_with_parent
        ) as pool:
            for record in pool.map(generate_study, *zip(*args, strict=False)):
                records.append(record)
                LOG.info("study %d/%d written", len(records), studies)
    keys = [r["study_key"] for r in records]
    _remove_stale(out, set(keys), set(indices))

    report_rows = [[r["study_key"], r["_report"]["Findings"], r["_report"]["Impression"]] for r in records]
    atomic_write_text(out / "reports.csv", _csv_text(["study_key", "Findings", "Impression"], report_rows))
    label_rows = [[r["study_key"], *(r["labels"][name] for name in CTRATE_LABELS)] for r in records]
    atomic_write_text(out / "labels.csv", _csv_text(["study_key", *CTRATE_LABELS], label_rows))
    phi = {r["study_key"]: r["_phi"] for r in records}
    # every string value in this file is planted PHI (leak tests collect them all): no prose, no field lists
    atomic_write_text(
        out / "phi_planted.json",
        json.dumps(
            {
                "studies": phi,
                "all_search_values": sorted({v for entry in phi.values() for v in entry["search_values"]}),
            },
            indent=1,
            sort_keys=True,
        ),
    )
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    atomic_write_text(
        out / "cohort.json",
        json.dumps(
            {
                "generator": "fvlm demo-data",
                "generator_version": GENERATOR_VERSION,
                "seed": seed,
                "size": size,
                "difficulty": difficulty,
                "abdomen_fraction": abdomen_fraction,
                "axis_order": "zyx (RAS: z inferior->superior, y posterior->anterior, x left->right)",
                "labels": list(CTRATE_LABELS),
                "studies": public,
                **({"report_text": "source reports (fvlm demo-data --reports)"} if sources is not None else {}),
            },
            indent=1,
            sort_keys=True,
        ),
    )

    counts = {name: sum(r["labels"][name] for r in records) for name in CTRATE_LABELS}
    return CohortSummary(
        out_dir=out,
        seed=seed,
        size=size,
        studies=len(records),
        normal_studies=sum(1 for r in records if r["normal"]),
        label_counts=counts,
        lesion_count=sum(len(r["lesions"]) for r in records),
        dicom_files=sum(s["slices"] for r in records for s in r["series"]),
        seconds=time.perf_counter() - started,
        study_keys=keys,
    )
