"""The scratch WordPiece vocabulary (a logged MLflow artifact) never holds rare words or record numbers, and
counts distinct *patients*: a name that one patient's reports repeat stays out however often it is repeated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.models.text import build_tokenizer

CLINICAL = [
    "A 7 mm nodule is seen in the right upper lobe.",
    "No pleural effusion. Heart size is normal.",
    "Atherosclerotic calcification of the aortic wall.",
    "Mild emphysema in both upper lobes. Lymph nodes are normal.",
]


def _cohort() -> list[str]:
    texts = [f"{CLINICAL[i % 4]} {CLINICAL[(i + 1) % 4]}" for i in range(40)]
    # PHI slipped past the scrubber, planted in many-but-few (4) reports each
    for i in range(4):
        texts[i] += " Patient Quentina Zyxwvut, MRN 12345679, accession A99887766, ref 5550123."
    return texts


def _vocab(tokenizer_dir: Path) -> set[str]:
    return set(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])


def test_rare_names_and_record_numbers_stay_out_of_the_vocabulary(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(_cohort(), 2000, tmp_path / "tok", min_patients=5)
    vocab = _vocab(tmp_path / "tok")
    for needle in ("quentina", "zyxwvut", "12345679", "a99887766", "5550123"):
        assert needle not in vocab, needle
    assert not any(any(run.isdigit() and len(run) >= 5 for run in [token.strip("#")]) for token in vocab)
    for word in ("nodule", "pleural", "effusion", "emphysema", "lobe"):
        assert word in vocab, word
    ids = tokenizer("patient quentina zyxwvut")["input_ids"]
    assert tokenizer.unk_token_id not in ids  # still tokenizable (characters), just not memorised


def test_min_patients_is_a_threshold_and_digit_runs_always_drop(tmp_path: Path) -> None:
    vocab = _vocab(build_tokenizer(_cohort(), 2000, tmp_path / "tok1", min_patients=1) and tmp_path / "tok1")
    assert "quentina" in vocab and "12345679" not in vocab and "a99887766" not in vocab
    vocab4 = _vocab(build_tokenizer(_cohort(), 2000, tmp_path / "tok4", min_patients=4) and tmp_path / "tok4")
    assert "zyxwvut" in vocab4
    vocab5 = _vocab(build_tokenizer(_cohort(), 2000, tmp_path / "tok5", min_patients=5) and tmp_path / "tok5")
    assert "zyxwvut" not in vocab5


def test_a_name_one_patient_repeats_stays_out_however_often(tmp_path: Path) -> None:
    """24 reports (and their anatomy texts) of one patient all name her and her son; 20 other patients never
    do: with texts keyed by patient the names stay out, the clinical words (>= 5 patients) come in."""
    corpus: list[tuple[str, str]] = []
    for i in range(24):
        report = f"{CLINICAL[i % 4]} Wilhelmina Pemberton was scanned; her son Tobias Pemberton was present."
        corpus += [("pa_pemberton", report), ("pa_pemberton", f"Tobias Pemberton. {CLINICAL[(i + 1) % 4]}")]
    corpus += [(f"pa_{i:03d}", f"{CLINICAL[i % 4]} {CLINICAL[(i + 2) % 4]}") for i in range(20)]
    vocab = _vocab(build_tokenizer(corpus, 2000, tmp_path / "by_patient", min_patients=5) and tmp_path / "by_patient")
    for needle in ("wilhelmina", "pemberton", "tobias"):
        assert needle not in vocab, needle
    for word in ("nodule", "pleural", "emphysema", "lobe"):
        assert word in vocab, word
    # the same texts without patient ids count each text alone: the repeated names would get in
    unkeyed = [text for _, text in corpus]
    vocab_texts = _vocab(build_tokenizer(unkeyed, 2000, tmp_path / "by_text", min_patients=5) and tmp_path / "by_text")
    assert {"wilhelmina", "pemberton", "tobias"} <= vocab_texts


def test_config_default_and_override() -> None:
    from core.config import TextConfig

    assert TextConfig().vocab_min_patients == 5
    assert TextConfig(vocab_min_patients=2).vocab_min_patients == 2


# ------------------------------------------------------------------------------- end to end, every output
PLANTED_NAMES = ("Wilhelmina", "Pemberton", "Tobias", "Quentina", "Zyxwvut")
PLANTS = (
    "Wilhelmina Pemberton was scanned for dyspnea.",
    "The results were discussed with her son Tobias Pemberton.",
    "Compared with the prior examination of Pemberton, Wilhelmina.",
    "Patient Quentina Zyxwvut tolerated the procedure well.",
)


def _reports_csv(path: Path, study_ids: list[str]) -> None:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_key", "Findings", "Impression"])
        for index, study_id in enumerate(study_ids):
            findings = f"{CLINICAL[index % 4]} {CLINICAL[(index + 1) % 4]}"
            if index % 4 != 3:  # planted in 3 of 4 reports, two plants each
                findings += f" {PLANTS[index % 4]} {PLANTS[(index + 1) % 4]}"
            writer.writerow([study_id, findings, "Mild emphysema. " + PLANTS[index % 4]])


@pytest.mark.slow
def test_planted_names_reach_no_output_file(tmp_path: Path, make_cohort, tiny_config) -> None:
    """parse-reports -> shard -> train (2 steps, tiny model, MLflow on) in-process on a cohort whose reports
    hold bare, kinship, "Last, First" and "Patient First Last" names; with the vocabulary filter at 1
    patient (so only the de-identifier stands between the names and the vocabulary), no output file --
    reports tables, shards, tokenizer, checkpoints, metrics, the MLflow store and its artifacts -- holds
    a planted name in any case."""
    from core.config import GridConfig, ShardConfig, SplitConfig
    from preprocessing.shards import ShardJob, run_shard
    from report_parsing.tables import ParseOptions, ParseReportsJob, run_parse_reports
    from training.stages import run_train
    from training.trainer.job import TrainJob

    cohort = make_cohort(tmp_path / "cohort", 8, studies_per_patient=2)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    _reports_csv(inputs / "reports.csv", list(cohort.study_ids))
    reports = tmp_path / "out" / "reports" / "reports.parquet"
    summary = run_parse_reports(ParseReportsJob(inputs / "reports.csv", reports, ParseOptions(hash_ids=False)))
    assert sum(record.phi_replacements for record in summary.records) >= 8
    run_shard(
        ShardJob(
            cohort.converted,
            cohort.segmented,
            reports,
            tmp_path / "out" / "shards",
            grid=GridConfig(spacing_zyx_mm=(8.0, 4.0, 4.0), roi_margin_slices=1, roi_margin_voxels=4),
            split=SplitConfig(train=1.0, val=0.0, test=0.0),
            shard=ShardConfig(rows_per_group=2),
            cache_dir=tmp_path / "out" / "shard-cache",
        )
    )
    config = tiny_config(
        tmp_path / "out", tracking={"enabled": True}, model={"text": {"vocab_min_patients": 1}}, train={"steps": 2}
    )
    job = TrainJob.from_config(config, shards=tmp_path / "out" / "shards", out=tmp_path / "out" / "models", steps=2)
    run_train(job)
    files = [path for path in (tmp_path / "out").rglob("*") if path.is_file()]
    assert any(path.name == "tokenizer.json" for path in files)
    assert any("mlflow" in str(path) or "mlartifacts" in str(path) for path in files)
    assert any(path.suffix == ".parquet" and "shards" in path.parts for path in files)
    names = [name.lower() for name in PLANTED_NAMES]
    leaks = sorted(str(path.relative_to(tmp_path)) for path in files if any(n in _readable(path) for n in names))
    if leaks:
        pytest.fail(f"planted names in {len(leaks)} output files: {leaks}")


def _readable(path: Path) -> str:
    """The file's content as lower-case text: Parquet decoded (its pages are zstd-compressed), gzip
    inflated, anything else as raw bytes."""
    import gzip

    data = path.read_bytes()
    text = data.decode("latin-1")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        text += repr(pq.read_table(path).to_pylist()) + repr(pq.read_metadata(path).metadata)
    elif data[:2] == b"\x1f\x8b":
        text += gzip.decompress(data).decode("latin-1")
    return text.lower()
