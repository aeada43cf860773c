"""``fvlm label-reports`` with the defaults it prints: the demo's reports.csv, CT-RATE's and CT-CLIP's layouts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from core.anatomy_sets import CTRATE_LABELS
from fvlm.cli import main
from report_parsing.io import ReportsFileError
from report_parsing.layouts import CTCLIP_CLASSIFIER, CTRATE_REPORTS, ReportLayout, detect_layout

NODULE = "A 6 mm nodule in the right lung upper lobe. Minimal pleural effusion on the left."
NORMAL = "Heart size is normal. No pleural effusion. Lung aeration is normal and no nodule is detected."
CTRATE_HEADER = ["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def demo_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic.cohort import generate_cohort

    out = tmp_path_factory.mktemp("demo")
    generate_cohort(out, studies=3, workers=1)
    return out


@pytest.fixture()
def params(tmp_path: Path) -> Path:
    """The project's reports section (study_key, Findings, Impression), as the demo's params.yaml has it."""
    path = tmp_path / "params.yaml"
    path.write_text("reports:\n  id_column: study_key\n  findings_column: Findings\n  impression_column: Impression\n")
    return path


def test_demo_reports_with_the_printed_defaults(demo_cohort: Path, params: Path, tmp_path: Path) -> None:
    out = tmp_path / "labels.csv"
    assert main(["--params", str(params), "label-reports", str(demo_cohort / "reports.csv"), str(out)]) == 0
    table = _read(out)
    truth = {row["study_key"]: row for row in _read(demo_cohort / "labels.csv")}
    assert list(table[0]) == ["study_key", *CTRATE_LABELS, "status"]
    assert {row["study_key"] for row in table} == set(truth)
    assert all(row["status"] == "ok" for row in table)
    agreement = [row[label] == truth[row["study_key"]][label] for row in table for label in CTRATE_LABELS]
    assert sum(agreement) / len(agreement) >= 0.9  # the generator's reports state its labels


def test_ctrate_layout_is_detected(params: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = _write(
        tmp_path / "train_reports.csv",
        CTRATE_HEADER,
        [
            ["train_1_a_1.nii.gz", "Cough.", "Non-contrast chest CT.", NODULE, "Lung nodule. Pleural effusion."],
            ["train_2_a_1.nii.gz", "Control.", "Non-contrast chest CT.", NORMAL, "Normal chest CT."],
        ],
    )
    out = tmp_path / "labels.csv"
    assert main(["--params", str(params), "label-reports", str(reports), str(out)]) == 0
    assert "CT-RATE reports" in capsys.readouterr().err
    table = {row["VolumeName"]: row for row in _read(out)}
    assert table["train_1_a_1.nii.gz"]["Lung nodule"] == "1" and table["train_1_a_1.nii.gz"]["Pleural effusion"] == "1"
    assert table["train_2_a_1.nii.gz"]["Lung nodule"] == "0"


def test_unknown_layout_lists_the_columns(params: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reports = _write(tmp_path / "odd.csv", ["id", "body"], [["1", NODULE]])
    assert main(["--params", str(params), "label-reports", str(reports), str(tmp_path / "out.csv")]) == 2
    error = capsys.readouterr().err
    assert "['id', 'body']" in error and "VolumeName" in error and "AccessionNo" in error and "study_key" in error
    assert not (tmp_path / "out.csv").exists()
    # named columns still work on any layout
    named = ["--params", str(params), "label-reports", str(reports), str(tmp_path / "out.csv")]
    assert main([*named, "--id-column", "id", "--text-column", "body"]) == 0


def test_detect_layout_prefers_the_configured_columns(tmp_path: Path) -> None:
    both = _write(tmp_path / "both.csv", ["study_key", "Findings", "Impression", "VolumeName", "Findings_EN"], [])
    configured = ReportLayout("configured", "study_key", "Findings", "Impression")
    assert detect_layout(both, configured) == configured
    ctclip = _write(tmp_path / "ctclip.csv", ["AccessionNo", "report_text", "Cardiomegaly"], [])
    assert detect_layout(ctclip, configured) == CTCLIP_CLASSIFIER
    assert detect_layout(_write(tmp_path / "r.csv", CTRATE_HEADER, []), configured) == CTRATE_REPORTS
    with pytest.raises(ReportsFileError, match="no such reports file"):
        detect_layout(tmp_path / "missing.csv", configured)


def test_real_ctclip_and_ctrate_layouts(shared_data: Path, params: Path, tmp_path: Path) -> None:
    """40 real CT-RATE reports (CT-CLIP's labelled set, read in place): the defaults find the columns in
    CT-CLIP's layout, and in CT-RATE's (the same texts as Findings_EN, written to tmp only)."""
    source = shared_data / "ct_clip" / "text_classifier" / "data" / "train.csv"
    if not source.is_file():
        pytest.skip(f"{source} not staged")
    rows = _read(source)[:40]
    ctclip = _write(tmp_path / "ctclip.csv", list(rows[0]), [list(row.values()) for row in rows])
    ctrate = _write(
        tmp_path / "ctrate.csv",
        CTRATE_HEADER,
        [[row["AccessionNo"], "", "", row["report_text"], ""] for row in rows],
    )
    predictions = {}
    for name, path in (("ctclip", ctclip), ("ctrate", ctrate)):
        out = tmp_path / f"pred-{name}.csv"
        assert main(["--params", str(params), "label-reports", str(path), str(out)]) == 0
        predictions[name] = {next(iter(row.values())): row for row in _read(out)}
    gold = {row["AccessionNo"]: row for row in rows}
    for name, table in predictions.items():
        assert set(table) == set(gold), name
        agreement = [table[key][label] == gold[key][label] for key in gold for label in CTRATE_LABELS]
        assert sum(agreement) / len(agreement) >= 0.9, name  # per-label accuracy; F1 is in test_shared_accuracy
