"""The spaCy pipeline, the three CLI commands, per-row statuses and PHI scrubbing end to end."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from core.anatomy_sets import CTRATE_LABELS
from core.privacy import pseudonym
from fvlm.cli import main
from report_parsing.phi import scrub_phi
from report_parsing.pipeline import analyze_many, build_pipeline

FINDINGS_NORMAL = (
    "Trachea and both main bronchi are open. Heart size is normal. Pericardial effusion was not observed. "
    "No pleural effusion. Lung aeration is normal and no nodule is detected."
)
FINDINGS_ABNORMAL = (
    "Calcific atheroma plaques in the thoracic aorta. A 6 mm nodule in the right lung upper lobe. "
    "Minimal pleural effusion on the left. A small hiatal hernia."
)
# planted fake PHI (invented), in the shapes reports carry it
PHI_VALUES = [
    "Johnathan Q. Doe",
    "Dr. Maria Keller",
    "Keller",
    "MRN: 48213377",
    "48213377",
    "03/11/2021",
    "March 4, 2022",
    "+1 415 555 0199",
    "St. Elsewhere Hospital",
    "Elsewhere Hospital",
    "jdoe@example.org",
    "Ayse Yilmaz",
    "A99887766",
    "07.05.2020",
    "Cecilia",
    "Hollister",
]
FINDINGS_PHI = (
    "Patient: Johnathan Q. Doe, MRN: 48213377, seen at St. Elsewhere Hospital on 03/11/2021. Compared with the CT "
    "dated March 4, 2022. A 6 mm nodule in the right lung upper lobe. Call +1 415 555 0199 or jdoe@example.org. "
    "Reported by Ayse Yilmaz. Accession No: A99887766."
)
IMPRESSION_PHI = (
    "Lung nodule. Signed by Dr. Maria Keller. Compared with the examination of 07.05.2020. "
    "Reported by Prof. Dr. Cecilia Hollister."
)


@pytest.fixture(scope="module")
def params(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("params")
    path = folder / "params.yaml"
    path.write_text("privacy:\n  salt: test-salt\n")
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_pipeline_components_and_sentences() -> None:
    nlp = build_pipeline("ctrate4")
    assert nlp.pipe_names == ["fvlm_sentences", "fvlm_anatomy", "fvlm_findings"]
    doc = nlp(f"Findings: {FINDINGS_ABNORMAL}\nImpression: Small hiatal hernia.")
    sentences = [sentence.text.strip() for sentence in doc.sents]
    assert "A 6 mm nodule in the right lung upper lobe." in sentences
    analysis = doc._.fvlm
    assert analysis.has_findings and analysis.has_impression
    assert analysis.labels[CTRATE_LABELS.index("Hiatal hernia")] == 1
    assert analysis.sentence_sections[-1] == "impression"


def test_multiprocess_pipe_matches_single_process() -> None:
    texts = [FINDINGS_NORMAL, FINDINGS_ABNORMAL] * 3
    single = [a.labels for a in analyze_many(texts, n_process=1, batch_size=2)]
    multi = [a.labels for a in analyze_many(texts, n_process=2, batch_size=2)]
    assert single == multi


def test_scrub_phi_removes_planted_values_and_keeps_measurements() -> None:
    scrubbed = scrub_phi(FINDINGS_PHI + " " + IMPRESSION_PHI).text
    for value in PHI_VALUES:
        assert value not in scrubbed
    assert "6 mm nodule in the right lung upper lobe" in scrubbed
    assert scrub_phi("Fracture of T12. 22x14 mm mass, series 5 section 379.").replaced == 0


def test_parse_reports_cli_tables_statuses_and_no_phi(tmp_path: Path, params: Path) -> None:
    rows = [
        ["1.2.3.1", FINDINGS_NORMAL, "Normal chest CT."],
        ["1.2.3.2", FINDINGS_ABNORMAL, "Atherosclerosis. Hiatal hernia."],
        ["1.2.3.3", FINDINGS_PHI, IMPRESSION_PHI],
        ["1.2.3.4", "", ""],  # empty
        ["1.2.3.5", "Akciğerlerde nodül izlenmedi. Kalp boyutları doğaldır. Plevral efüzyon yok.", ""],  # non-English
        ["1.2.3.6", FINDINGS_ABNORMAL * 40, ""],  # huge -> truncated
        ["", FINDINGS_NORMAL, ""],  # missing id
        ["1.2.3.2", FINDINGS_NORMAL, ""],  # duplicate id
        ["1.2.3.7", "only two fields"],  # malformed
    ]
    reports = _write_csv(tmp_path / "reports.csv", ["study_key", "Findings", "Impression"], rows)
    (tmp_path / "params.yaml").write_text(params.read_text() + "reports:\n  max_chars: 2000\n")
    out = tmp_path / "out" / "reports.parquet"
    assert main(["--params", str(tmp_path / "params.yaml"), "parse-reports", str(reports), str(out)]) == 0
    long_table = pq.read_table(out).to_pandas()
    studies = pq.read_table(tmp_path / "out" / "reports.studies.parquet").to_pandas()

    assert list(studies["status"]) == [
        "ok",
        "ok",
        "ok",
        "empty",
        "non_english",
        "truncated",
        "missing_id",
        "duplicate_id",
        "malformed",
    ]
    assert studies.loc[0, "study_id"] == pseudonym("1.2.3.1", "test-salt", kind="study")
    assert studies["study_id"].dropna().is_unique and studies["study_id"].isna().tolist()[6:8] == [True, True]
    assert (studies.loc[3, list(CTRATE_LABELS)] == -1).all()
    assert studies.loc[1, "Hiatal hernia"] == 1 and studies.loc[0, "Hiatal hernia"] == 0
    assert studies[list(CTRATE_LABELS)].dtypes.map(str).eq("int8").all()

    parsed = studies[studies["status"].isin(["ok", "truncated"])]
    assert len(long_table) == len(parsed) * 5  # 4 anatomies + other
    assert set(long_table["anatomy"]) == {"lung", "heart", "esophagus", "aorta", "other"}
    abnormal = long_table.set_index(["study_id", "anatomy"])["abnormal"]
    second = studies.loc[1, "study_id"]
    assert abnormal[(second, "lung")] and abnormal[(second, "aorta")] and abnormal[(second, "esophagus")]
    assert not abnormal[(studies.loc[0, "study_id"], "lung")]
    # sentence spans point into the scrubbed report text
    row = long_table[(long_table["study_id"] == second) & (long_table["anatomy"] == "esophagus")].iloc[0]
    text = studies.loc[1, "report_text"]
    assert [text[a:b] for a, b in zip(row["sentence_starts"], row["sentence_ends"], strict=False)] == [
        "A small hiatal hernia.",
        "Hiatal hernia.",
    ]
    assert row["sentence_sections"].tolist() == ["findings", "impression"]

    # no planted PHI (nor the raw keys) anywhere in the outputs
    blob = (out.read_bytes() + (tmp_path / "out" / "reports.studies.parquet").read_bytes()).decode("latin-1")
    dumped = long_table.to_json() + studies.to_json()
    for value in PHI_VALUES + ["1.2.3.1", "1.2.3.2"]:
        assert value not in dumped
    assert "Johnathan" not in blob


def test_label_reports_and_eval_labels(tmp_path: Path, params: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [["A1", FINDINGS_NORMAL], ["A2", FINDINGS_ABNORMAL], ["A3", ""]]
    reports = _write_csv(tmp_path / "in.csv", ["AccessionNo", "report_text"], rows)
    predicted = tmp_path / "pred.csv"
    assert (
        main(
            [
                "--params",
                str(params),
                "label-reports",
                str(reports),
                str(predicted),
                "--text-column",
                "report_text",
                "--id-column",
                "AccessionNo",
            ]
        )
        == 0
    )
    with open(predicted, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["AccessionNo", *CTRATE_LABELS, "status"]
    assert [row["status"] for row in table] == ["ok", "ok", "empty"]
    assert table[1]["Lung nodule"] == "1" and table[0]["Lung nodule"] == "0"
    assert {row[label] for row in table for label in CTRATE_LABELS} <= {"0", "1"}

    gold = tmp_path / "gold.csv"
    gold_rows = [[row["AccessionNo"], *[row[label] for label in CTRATE_LABELS]] for row in table]
    gold_rows[0][1 + CTRATE_LABELS.index("Lung nodule")] = "1"  # one false negative
    _write_csv(gold, ["AccessionNo", *CTRATE_LABELS], gold_rows)
    capsys.readouterr()
    report_json = tmp_path / "report.json"
    assert main(["--params", str(params), "eval-labels", str(predicted), str(gold), "--json", str(report_json)]) == 0
    printed = capsys.readouterr().out
    assert "macro avg" in printed and "weighted avg" in printed
    report = json.loads(report_json.read_text())
    assert report["Lung nodule"]["recall"] == pytest.approx(0.5)
    assert report["Lung nodule"]["precision"] == pytest.approx(1.0)
    from sklearn.metrics import f1_score

    gold_matrix = np.array([[int(v) for v in r[1:]] for r in gold_rows])
    pred_matrix = np.array([[int(row[label]) for label in CTRATE_LABELS] for row in table])
    assert report["macro avg"]["f1-score"] == pytest.approx(
        f1_score(gold_matrix, pred_matrix, average="macro", zero_division=0)
    )


def test_missing_column_is_a_clear_error(tmp_path: Path, params: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = _write_csv(tmp_path / "bad.csv", ["id", "text"], [["1", "x"]])
    assert main(["--params", str(params), "parse-reports", str(reports), str(tmp_path / "o.parquet")]) == 2
    error = capsys.readouterr().err
    assert "bad.csv" in error and "study_key" in error


def test_tables_built_column_wise_equal_the_row_dicts(tmp_path: Path) -> None:
    """write_tables builds both tables from columns and buffers: the same tables as ``pa.Table.from_pylist`` of
    the row dicts (anatomy_rows), quarantined rows and a null study_id included."""
    import pyarrow as pa

    from report_parsing.io import read_report_rows
    from report_parsing.tables import ParseOptions, anatomy_rows, parse_records, prepare_records, write_tables

    rows = [
        ["a", FINDINGS_ABNORMAL, "Atherosclerosis. Hiatal hernia."],
        ["b", FINDINGS_NORMAL, ""],
        ["a", FINDINGS_NORMAL, ""],  # duplicate id: null study_id
        ["c", "", ""],
        ["d", "Ünïcödé: ağır plevral efüzyon — pleural effusion is seen. Bilateral nodules.", ""],
    ]
    options = ParseOptions()
    _, report_rows = read_report_rows(
        _write_csv(tmp_path / "r.csv", ["study_key", "Findings", "Impression"], rows), options.required_columns()
    )
    records = prepare_records(report_rows, options)
    parse_records(records, options)
    long_path, studies_path = write_tables(records, tmp_path / "out.parquet", "ctrate4")
    long_table = pq.read_table(long_path)
    expected = pa.Table.from_pylist(list(anatomy_rows(records, "ctrate4")), schema=long_table.schema)
    assert long_table.equals(expected, check_metadata=True)
    studies = pq.read_table(studies_path)
    assert studies.column("study_id").null_count == 1
    assert studies.column("status").to_pylist() == ["ok", "ok", "duplicate_id", "empty", "ok"]
    assert studies.column("report_text").to_pylist()[4] == records[4].report_text
    assert studies.column("Hiatal hernia").to_pylist() == [
        r.labels[CTRATE_LABELS.index("Hiatal hernia")] for r in records
    ]


def test_the_one_shot_command_imports_neither_torch_nor_pandas(tmp_path: Path, params: Path) -> None:
    """fvlm parse-reports as its own process: thinc's torch import and pyarrow's pandas import are skipped
    (docs/report_parsing.md "The whole command"), and torch still imports afterwards."""
    import os
    import subprocess
    import sys

    reports = _write_csv(
        tmp_path / "r.csv",
        ["study_key", "Findings", "Impression"],
        [["1", FINDINGS_ABNORMAL + " Wilhelmina Pemberton was scanned for dyspnea.", "Hiatal hernia."]],
    )
    out = tmp_path / "o.parquet"
    script = (
        "import sys\n"
        "from fvlm.cli import main\n"
        f"code = main(['--params', {str(params)!r}, 'parse-reports', {str(reports)!r}, {str(out)!r}])\n"
        "print('MODULES', 'torch' in sys.modules, 'pandas' in sys.modules, 'thinc' in sys.modules)\n"
        "import torch\n"
        "print('TORCH', torch.ones(2).sum().item())\n"
        "sys.exit(code)\n"
    )
    env = {**os.environ, "FVLM_NO_FLOWS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "MODULES False False True" in done.stdout
    assert "TORCH 2.0" in done.stdout
    studies = pq.read_table(tmp_path / "o.studies.parquet")
    assert "Pemberton" not in studies.column("report_text").to_pylist()[0]
