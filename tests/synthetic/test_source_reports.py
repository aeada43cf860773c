"""``fvlm demo-data --reports CSV --labels CSV``: phantoms drawn from real reports' labels carry their text."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from core.anatomy_sets import CTRATE_LABELS
from synthetic.cohort import generate_cohort, pick_sources, read_source_reports

REPORTS = [
    ("a1", "Cardiomegaly is present. The lungs are clear.", "Enlarged heart."),
    ("a2", "A small hiatal hernia. No other finding.", "Hiatal hernia."),
    ("a3", "Normal study.", "Normal."),
]
LABELS = {"a1": {"Cardiomegaly": 1}, "a2": {"Hiatal hernia": 1}, "a3": {}}


def _write_tables(folder: Path) -> tuple[Path, Path]:
    reports, labels = folder / "reports.csv", folder / "labels.csv"
    with reports.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", "Findings_EN", "Impressions_EN"])
        writer.writerows(REPORTS)
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", *CTRATE_LABELS])
        for key in ("a3", "a1", "a2"):  # another order: joined on the key, not the row
            writer.writerow([key, *(LABELS[key].get(name, 0) for name in CTRATE_LABELS)])
    return reports, labels


def test_source_reports_are_joined_on_their_key(tmp_path: Path) -> None:
    sources = read_source_reports(*_write_tables(tmp_path))
    assert [s.findings for s in sources] == [r[1] for r in REPORTS]
    assert [s.labels["Cardiomegaly"] for s in sources] == [1, 0, 0]
    assert sources[1].labels["Hiatal hernia"] == 1 and sources[1].impression == "Hiatal hernia."
    assert pick_sources(sources, 2, seed=3) == pick_sources(sources, 2, seed=3)  # seeded
    with pytest.raises(ValueError, match="at most 3"):
        pick_sources(sources, 4, seed=0)


def test_bad_tables_say_what_is_wrong(tmp_path: Path) -> None:
    reports, labels = _write_tables(tmp_path)
    (tmp_path / "text.csv").write_text("VolumeName,notes\na1,x\n")
    with pytest.raises(ValueError, match="no report text columns"):
        read_source_reports(tmp_path / "text.csv", labels)
    rows = labels.read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join([rows[0], rows[1].replace(",0", ",2", 1), *rows[2:]]) + "\n")
    with pytest.raises(ValueError, match="not 0/1"):
        read_source_reports(reports, tmp_path / "bad.csv")


def test_cohort_from_source_reports_carries_their_text(tmp_path: Path) -> None:
    sources = read_source_reports(*_write_tables(tmp_path))
    out = tmp_path / "cohort"
    generate_cohort(out, studies=2, seed=5, size="demo", workers=1, sources=sources)
    picked = pick_sources(sources, 2, seed=5)
    with (out / "reports.csv").open() as handle:
        texts = [(row["Findings"], row["Impression"]) for row in csv.DictReader(handle)]
    assert texts == [(s.findings, s.impression) for s in picked]
    cohort = json.loads((out / "cohort.json").read_text())
    for record, source in zip(cohort["studies"], picked, strict=True):
        assert record["report_source"]["row"] == source.row and record["report_source"]["labels"] == source.labels
        drawn = {name: value for name, value in record["labels"].items() if value}
        assert set(drawn) | set(record["report_source"]["undrawn"]) == {n for n, v in source.labels.items() if v}
    phi = json.loads((out / "phi_planted.json").read_text())
    assert not any(any(entry["in_report"].values()) for entry in phi["studies"].values())  # no PHI in real text


def test_the_shared_ctrate_reports_load(shared_data: Path) -> None:
    table = shared_data / "ct_clip" / "text_classifier" / "data" / "train.csv"
    if not table.is_file():
        pytest.skip(f"{table} not staged")
    sources = read_source_reports(table, table)  # one file holds text and labels
    assert len(sources) == 800 and all(s.findings for s in sources)
    assert sum(s.labels["Lung nodule"] for s in sources) == 370  # docs/report_parsing.md support
