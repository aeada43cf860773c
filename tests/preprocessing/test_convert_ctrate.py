"""CT-RATE adapter on a small CT-RATE-shaped fixture (NIfTI tree + metadata CSV)."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from core.privacy import pseudonym
from preprocessing.ctrate import to_hu

SALT = "ctrate-salt"
META = {
    "XYSpacing": "[0.75, 0.75]",
    "ZSpacing": "1.5",
    "ImagePositionPatient": "[-190.0, -180.0, -300.0]",
    "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
    "RescaleSlope": "1",
    "RescaleIntercept": "-1024",
}


def chest_hu(seed: int, shape=(20, 18, 8)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000, dtype=np.int16)  # air around the body
    hu[4:16, 3:15, :] = rng.integers(-50, 80, size=(12, 12, shape[2]))
    hu[6:9, 5:8, :] = -850  # lung-ish
    return hu


def write_fixture(root: Path) -> dict[str, np.ndarray]:
    expected: dict[str, np.ndarray] = {}
    rows = []
    raw = chest_hu(1)  # v1-style: raw stored values (HU + 1024), uint16
    path = root / "train" / "train_1" / "train_1_a" / "train_1_a_1.nii.gz"
    path.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image((raw.astype(np.int32) + 1024).astype(np.uint16), np.eye(4)), path)
    expected["train_1_a_1.nii.gz"] = raw
    rows.append({"VolumeName": "train_1_a_1.nii.gz", **META})
    hu = chest_hu(2)  # v2-style: already HU, int16
    path = root / "train" / "train_1" / "train_1_a" / "train_1_a_2.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.eye(4)), path)
    expected["train_1_a_2.nii.gz"] = hu
    rows.append({"VolumeName": "train_1_a_2.nii.gz", **META})
    orphan = root / "valid" / "valid_7" / "valid_7_b" / "valid_7_b_1.nii.gz"  # no metadata row
    orphan.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(hu, np.eye(4)), orphan)
    rows.append({"VolumeName": "train_9_a_1.nii.gz", **META})  # metadata without a file
    with open(root / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["VolumeName", *META])
        writer.writeheader()
        writer.writerows(rows)
    return expected


def test_ctrate_fixture_converts_with_recorded_rescale_decision(tmp_path: Path, convert_dir) -> None:
    expected = write_fixture(tmp_path / "ctrate")
    summary = convert_dir(
        tmp_path / "ctrate",
        tmp_path / "out",
        input_format="ctrate",
        metadata_csv=tmp_path / "ctrate" / "metadata.csv",
        salt=SALT,
    )
    rows = {r.study_id: r for r in summary.rows}
    assert summary.n_studies == 4 and summary.n_ok == 2
    for name, hu in expected.items():
        row = rows[pseudonym(name, SALT, kind="study")]
        assert row.status == "ok", row.reason
        assert row.patient_id == pseudonym("train_1", SALT, kind="patient")
        image = nib.load(tmp_path / "out" / row.volume_path)
        assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
        assert image.header.get_zooms() == pytest.approx((0.75, 0.75, 1.5))
        data = np.asanyarray(image.dataobj)
        assert data.dtype == np.int16
        # LPS -> RAS flips the first two axes; values must be the HU we planted (no double rescale)
        assert np.array_equal(data, hu[::-1, ::-1, :])
        np.testing.assert_allclose(image.affine[:3, 3], [190.0 - 19 * 0.75, 180.0 - 17 * 0.75, -300.0])
        assert row.input_format == "ctrate"
    assert rows[pseudonym("train_1_a_1.nii.gz", SALT, kind="study")].rescale_decision.startswith("rescaled")
    assert rows[pseudonym("train_1_a_2.nii.gz", SALT, kind="study")].rescale_decision.startswith("not rescaled")
    missing = rows[pseudonym("train_9_a_1.nii.gz", SALT, kind="study")]
    assert missing.status == "quarantined" and "no NIfTI file" in missing.reason
    orphan = rows[pseudonym("valid_7_b_1.nii.gz", SALT, kind="study")]
    assert orphan.status == "quarantined" and "no row in the metadata CSV" in orphan.reason
    again = convert_dir(
        tmp_path / "ctrate",
        tmp_path / "out",
        input_format="ctrate",
        metadata_csv=tmp_path / "ctrate" / "metadata.csv",
        salt=SALT,
    )
    assert again.n_reused == 2  # converted volumes reused; missing-file / missing-row checks are redone (cheap)


def test_rescale_decision_handles_signed_raw_padding() -> None:
    hu = chest_hu(3)
    raw = hu.astype(np.int32) + 1024
    raw[0, :, :] = -2000  # signed padding stored in a raw volume: minimum < 0 but not HU
    converted, decision = to_hu(raw.astype(np.int16), 1.0, -1024.0)
    assert decision.startswith("rescaled")
    assert np.array_equal(converted[1:], hu[1:])
    same, decision = to_hu(hu, 1.0, -1024.0)
    assert decision.startswith("not rescaled") and np.array_equal(same, hu)


def test_cli_ctrate(tmp_path: Path, repo_root: Path) -> None:
    from fvlm.cli import main

    write_fixture(tmp_path / "ctrate")
    code = main(
        [
            "--params",
            str(repo_root / "params.yaml"),
            "convert",
            str(tmp_path / "ctrate"),
            str(tmp_path / "out"),
            "--format",
            "ctrate",
            "--metadata-csv",
            str(tmp_path / "ctrate" / "metadata.csv"),
            "--workers",
            "1",
        ]
    )
    assert code == 0
    assert len(list((tmp_path / "out" / "volumes").glob("*.nii.gz"))) == 2
