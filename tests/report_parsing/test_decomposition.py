"""fVLM-layout decompositions (desc_info.json / conc_info.json) as the per-anatomy text of parse-reports,
and the anatomy-text benchmark against the shared silver decomposition."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from report_parsing.decomposition import Decomposition, DecompositionError, decomposition_files, normal_template
from report_parsing.tables import ParseOptions, parse_reports_file, write_tables

DESC = {
    "train_7_a": {
        "Findings": "Heart size is increased. Emphysema in both lungs. The liver is normal.",
        "heart": "Heart size is increased",
        "lung": "Emphysema in both lungs.",
        "liver": "The liver is normal.",
    },
    "train_8_b": {"Findings": "Normal study.", "esophagus": "esophagus shows no significant abnormalities."},
}
CONC = {"train_7_a": {"Conclusion": "Cardiomegaly. Emphysema.", "heart": "Cardiomegaly.", "lung": "Emphysema"}}


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "desc_info.json").write_text(json.dumps(DESC), encoding="utf-8")
    (tmp_path / "conc_info.json").write_text(json.dumps(CONC), encoding="utf-8")
    return tmp_path


def test_texts_follow_fvlm(folder: Path) -> None:
    decomposition = Decomposition.load(folder, "ctrate4")
    lung, heart, esophagus, aorta, other = decomposition.texts("train_7_a")
    assert heart.text == "Cardiomegaly. Heart size is increased." and heart.abnormal  # conclusion first
    assert lung.text == "Emphysema. Emphysema in both lungs." and lung.abnormal
    assert esophagus.text == normal_template("esophagus") and not esophagus.abnormal and not esophagus.named
    assert aorta.text == "aorta shows no significant abnormalities." and not aorta.abnormal
    assert other.text == "The liver is normal."  # an organ outside the set
    templated = decomposition.texts("train_8_b")[2]
    assert templated.named and not templated.abnormal  # fVLM: the template means normal


def test_organ_keys_map_through_the_segmentation_classes(folder: Path) -> None:
    ctrate4 = Decomposition.load(folder, "ctrate4")
    assert [ctrate4.anatomy_of(k) for k in ("lung", "heart", "esophagus", "aorta", "trachea")] == [0, 1, 2, 3, None]
    chest_abdomen = Decomposition.load(folder, "chest_abdomen")
    assert chest_abdomen.anatomy_names[chest_abdomen.anatomy_of("kidney")] == "kidneys"
    radgenome = Decomposition.load(folder, "radgenome_chest")
    assert radgenome.anatomy_names[radgenome.anatomy_of("trachea")] == "trachea_bronchi"


def test_volume_keys_match_ctrate_volume_names(folder: Path) -> None:
    decomposition = Decomposition.load(folder, "ctrate4")
    assert decomposition.key_for("train_7_a") == "train_7_a"
    assert decomposition.key_for("train_7_a_2.nii.gz") == "train_7_a"
    assert decomposition.key_for("train_9_a_1.nii.gz") is None


def test_bad_decomposition_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(DecompositionError, match="no desc_info"):
        decomposition_files(tmp_path)
    bad = tmp_path / "desc_info.json"
    bad.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DecompositionError, match="desc_info.json: expected an object"):
        Decomposition.load(bad, "ctrate4")
    bad.write_text('{"v": {"lung": 3}}', encoding="utf-8")
    with pytest.raises(DecompositionError, match="volume 'v'"):
        Decomposition.load(tmp_path, "ctrate4")
    with pytest.raises(DecompositionError, match="not found"):
        decomposition_files(tmp_path / "missing.json")


def _write_reports(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", "Findings_EN", "Impressions_EN"])
        writer.writerows(rows)


def test_parse_reports_takes_the_decomposition_and_keeps_our_labels(folder: Path, tmp_path: Path) -> None:
    reports = tmp_path / "reports.csv"
    _write_reports(
        reports,
        [
            ("train_7_a_1.nii.gz", DESC["train_7_a"]["Findings"], CONC["train_7_a"]["Conclusion"]),
            ("valid_1_a_1.nii.gz", "Small pleural effusion on the right.", "Pleural effusion."),
        ],
    )
    base = dict(id_column="VolumeName", findings_column="Findings_EN", impression_column="Impressions_EN")
    plain = parse_reports_file(reports, ParseOptions(**base))
    decomposed = parse_reports_file(reports, ParseOptions(**base, decomposition=str(folder)))
    assert [r.labels for r in plain] == [r.labels for r in decomposed]
    long_path, _ = write_tables(decomposed, tmp_path / "out.parquet", "ctrate4")
    table = pd.read_parquet(long_path).set_index(["study_id", "anatomy"])
    first, second = decomposed[0].study_id, decomposed[1].study_id
    assert table.loc[(first, "heart"), "text"] == "Cardiomegaly. Heart size is increased."
    assert table.loc[(first, "esophagus"), "text"] == normal_template("esophagus")
    assert not table.loc[(first, "aorta"), "abnormal"] and table.loc[(first, "lung"), "abnormal"]
    # not in the decomposition: the rule-based text
    assert table.loc[(second, "lung"), "text"] == "Small pleural effusion on the right. Pleural effusion."


def test_config_key_and_cli_option(folder: Path, tmp_path: Path) -> None:
    from core.config import FvlmConfig

    config = FvlmConfig.model_validate({"reports": {"decomposition": str(folder)}})
    assert ParseOptions.from_config(config).decomposition == str(folder)
    assert ParseOptions.from_config(FvlmConfig()).decomposition is None


# ------------------------------------------------------------------------------ shared silver decomposition
def _silver(shared_data: Path) -> Path:
    folder = shared_data / "report_decomposition_ctrate"
    if not (folder / "desc_info_manual_v3.train_only.json").is_file():
        pytest.skip("silver decomposition not staged")
    return folder


def test_shared_silver_files_load_in_the_fvlm_layout(shared_data: Path, tmp_path: Path) -> None:
    folder = _silver(shared_data)
    decomposition = Decomposition.load(folder, "ctrate4")
    desc = json.loads((folder / "desc_info_manual_v3.train_only.json").read_text(encoding="utf-8"))
    conc = json.loads((folder / "conc_info_manual_v3.train_only.json").read_text(encoding="utf-8"))
    volumes = list(desc)[:40]
    reports = tmp_path / "silver.csv"  # a temporary copy for the test only (CC BY-NC-SA: never committed)
    _write_reports(reports, [(f"{v}_1.nii.gz", desc[v]["Findings"], conc[v]["Conclusion"]) for v in volumes])
    options = ParseOptions(
        id_column="VolumeName",
        findings_column="Findings_EN",
        impression_column="Impressions_EN",
        decomposition=str(folder),
    )
    records = parse_reports_file(reports, options)
    assert all(record.anatomy_texts is not None for record in records)
    for record, volume in zip(records, volumes, strict=True):
        for index, name in enumerate(decomposition.anatomy_names):
            expected = " ".join(
                text if text.endswith(".") else f"{text}."
                for text in (conc[volume].get(name, "").strip(), desc[volume].get(name, "").strip())
                if text
            )
            assert record.anatomy_texts[index].text == (expected or normal_template(name))
            assert record.anatomy_texts[index].abnormal == bool(expected)  # no templates in this file


def test_anatomy_text_f1_floor_on_shared_silver(shared_data: Path, load_benchmark) -> None:
    _silver(shared_data)
    benchmark = load_benchmark("anatomy_text")
    rows = benchmark.load_silver()
    ours = benchmark.score(rows, benchmark.ours, decomposed_only=True)
    keywords = benchmark.score(rows, benchmark.keyword_baseline, decomposed_only=True)
    # measured (docs/report_parsing.md, all 768, 2026-12-06): lung 0.92 / heart 0.77 / esophagus 0.96 / aorta 0.81
    floors = {"lung": 0.90, "heart": 0.75, "esophagus": 0.94, "aorta": 0.79}
    for name, floor in floors.items():
        assert ours[name].f1 >= floor, (name, ours[name].f1)
    for name in ("lung", "heart", "aorta"):  # esophagus ties the keywords (0.96): not asserted
        assert ours[name].f1 >= keywords[name].f1, (name, ours[name].f1, keywords[name].f1)
