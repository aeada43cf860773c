"""Study identity on anonymised exports: folder keys relative to the raw root, the own-patient fallback, the
private identity map (docs/convert.md, Identity)."""

from __future__ import annotations

import shutil
import stat
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from dicom_factory import write_ct_series  # noqa: E402

from core import layout  # noqa: E402
from core.privacy import lookup_identities, pseudonym  # noqa: E402
from preprocessing.deid import OWN_PATIENT_WARNING  # noqa: E402
from preprocessing.dicom_discovery import discover_studies  # noqa: E402

SALT = "identity-test-salt"


def anonymised_series(folder: Path, *, n_slices: int = 4, seed: int = 0) -> None:
    """A series whose export blanked StudyInstanceUID and PatientID (as the real TotalSegmentator example)."""
    import pydicom

    fixture = write_ct_series(folder, n_slices=n_slices, patient_id="", seed=seed)
    for path in fixture.files:
        ds = pydicom.dcmread(path)
        del ds.StudyInstanceUID
        ds.save_as(path, enforce_file_format=True)


def test_folder_key_is_relative_to_the_raw_root_whatever_path_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "pacs" / "export"
    anonymised_series(raw / "site1" / "P01")
    expected = "folder:site1/P01"
    assert [s.study_key for s in discover_studies(raw)] == [expected]
    monkeypatch.chdir(tmp_path)
    assert [s.study_key for s in discover_studies(Path("pacs/export"))] == [expected]
    # predict on the study folder alone, with the raw root named: the key convert gave it
    study_folder = Path("pacs/export/site1/P01")
    assert [s.study_key for s in discover_studies(study_folder, key_root=raw)] == [expected]
    assert [s.study_key for s in discover_studies(study_folder, key_root="pacs/export")] == [expected]
    assert discover_studies(study_folder, key_root=raw)[0].folder == "site1/P01"
    with pytest.raises(ValueError, match="not inside the raw DICOM root"):
        discover_studies(raw, key_root=tmp_path / "elsewhere")


def test_missing_patient_id_gives_its_own_patient_with_a_warning(tmp_path: Path, convert_dir) -> None:
    raw = tmp_path / "raw"
    anonymised_series(raw / "P01")
    summary = convert_dir(raw, tmp_path / "out", salt=SALT, min_slices=3)
    (row,) = summary.rows
    assert row.status == "ok", row.reason
    assert row.study_id == pseudonym("folder:P01", SALT, kind="study")
    assert row.patient_id and row.patient_id.startswith("pa_")
    assert OWN_PATIENT_WARNING in row.warnings
    stored = pq.read_table(tmp_path / "out" / "studies.parquet").to_pylist()[0]
    assert stored["patient_id"] == row.patient_id
    assert "seconds" not in stored and "reused" not in stored  # no timings in a DVC-tracked output


def test_identity_map_answers_which_study_and_stays_private(tmp_path: Path, convert_dir) -> None:
    raw = tmp_path / "raw"
    anonymised_series(raw / "anon" / "P01")
    keyed = write_ct_series(raw / "keyed", n_slices=4, patient_id="PAT-0042", seed=3)
    identity_map = tmp_path / ".fvlm-private" / "identity.sqlite"
    summary = convert_dir(raw, tmp_path / "out", salt=SALT, min_slices=3, identity_map=identity_map)
    assert summary.n_ok == 2
    assert stat.S_IMODE(identity_map.stat().st_mode) == 0o600
    assert stat.S_IMODE(identity_map.parent.stat().st_mode) == 0o700
    by_key = {row.study_id: row for row in summary.rows}
    anon_id = pseudonym("folder:anon/P01", SALT, kind="study")
    keyed_id = pseudonym(keyed.study_uid, SALT, kind="study")
    assert set(by_key) == {anon_id, keyed_id}

    (anon,) = lookup_identities(identity_map, anon_id)
    assert (anon.folder, anon.study_instance_uid, anon.patient_id, anon.own_patient) == ("anon/P01", "", "", True)
    assert anon.patient_pseudonym == by_key[anon_id].patient_id
    (study,) = lookup_identities(identity_map, keyed_id)
    assert (study.folder, study.study_instance_uid, study.patient_id) == ("keyed", keyed.study_uid, "PAT-0042")
    assert study.accession_number == keyed.extras["phi"]["AccessionNumber"]
    assert [r.pseudonym for r in lookup_identities(identity_map, by_key[keyed_id].patient_id or "")] == [keyed_id]
    assert [r.study_id for r in lookup_identities(identity_map, keyed_id[:10])] == [keyed_id]  # a shortened one
    series = pq.read_table(tmp_path / "out" / "studies.parquet").to_pylist()
    (series_row,) = lookup_identities(identity_map, next(r["series_id"] for r in series if r["study_id"] == keyed_id))
    assert (series_row.kind, series_row.series_instance_uid) == ("series", keyed.series_uid)
    # the PHI lives in the map only: nothing under the (DVC-tracked) output holds it
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"PAT-0042" not in data and keyed.study_uid.encode() not in data and b"anon/P01" not in data


def test_identity_map_inside_the_output_is_refused(tmp_path: Path, convert_dir) -> None:
    write_ct_series(tmp_path / "raw" / "a", n_slices=4)
    with pytest.raises(ValueError, match="privacy.identity_map"):
        convert_dir(tmp_path / "raw", tmp_path / "out", salt=SALT, identity_map=tmp_path / "out" / "ids.sqlite")


def test_mask_stem_of_a_folder_key_round_trips() -> None:
    key = layout.folder_study_key(Path("site1") / "P01")
    assert key == "folder:site1/P01"
    stem = layout.mask_stem_for_study_key(key)
    assert stem == "folder__site1__P01" and "/" not in stem and ":" not in stem
    assert key in layout.study_keys_of_mask_stem(stem)
    assert "folder:a__b" in layout.study_keys_of_mask_stem("folder%3Aa__b")  # percent-encoded: exact
    assert layout.mask_stem_for_study_key("1.2.3") == "1.2.3"


def test_predict_keys_a_study_folder_as_convert_did(tmp_path: Path, convert_dir, monkeypatch) -> None:
    """`fvlm predict pacs/export/P01` names the study as convert named it from `pacs/export` (so the segment
    stage's mask is found), whatever path is typed; and records it for `fvlm lookup`."""
    from preprocessing.convert import ConvertJob, ConvertSettings
    from training.inference.predict import load_input_image

    raw = tmp_path / "pacs" / "export"
    anonymised_series(raw / "P01", n_slices=4)
    (converted,) = convert_dir(raw, tmp_path / "out", salt=SALT, min_slices=3).rows
    identity_map = tmp_path / "private" / "identity.sqlite"
    job = ConvertJob(
        input_dir=raw,
        output_dir=tmp_path / "out",
        settings=ConvertSettings(salt=SALT, min_slices=3),
        identity_map=identity_map,
    )
    monkeypatch.chdir(tmp_path)
    _, info = load_input_image(Path("pacs/export/P01"), job, tmp_path / "work1")
    assert info["study_id"] == converted.study_id
    (record,) = lookup_identities(identity_map, converted.study_id)
    assert record.folder == "P01"
    shutil.copytree(raw / "P01", tmp_path / "elsewhere" / "P01")  # a copy outside the raw tree: keyed by its name
    _, info = load_input_image(tmp_path / "elsewhere" / "P01", job, tmp_path / "work2")
    assert info["study_id"] == converted.study_id


def test_a_study_spread_over_sibling_folders_names_them() -> None:
    """One StudyInstanceUID in P01/ and P14/ (a real export habit): the identity map names both folders, not
    their parent ``.``; a study inside one folder keeps that folder."""
    from preprocessing.dicom_discovery import _common_folder

    root = Path("/raw")
    spread = [root / "P01" / "1.dcm", root / "P14" / "s2" / "2.dcm"]
    assert _common_folder(Path("."), root, spread) == "P01, P14"
    one = [root / "P01" / "s1" / "1.dcm", root / "P01" / "s2" / "2.dcm"]
    assert _common_folder(Path("."), root, one) == "P01"
    assert _common_folder(Path("site"), root, spread) == "site/P01, site/P14"
