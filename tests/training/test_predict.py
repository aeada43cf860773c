"""Prediction: NIfTI / DICOM study + mask -> model grid -> per-anatomy, per-label probabilities (JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.inference.predict import PredictionError, center_crop_or_pad, predict_study
from training.trainer.batch import InMemoryBatches
from training.trainer.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, anatomies, make_samples, tiny_config) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config(root)
    source = InMemoryBatches(make_samples(8, seed=4), batch_size=4)
    result = train(config, source, anatomies, root / "run", steps=2, corpus_texts=source.texts())
    return {"root": root, "config": config, "model_dir": Path(result.model_dir)}


def _write_study(folder: Path, with_heart: bool = True) -> tuple[Path, Path]:
    """A 96 x 96 x 40 (x, y, z) RAS HU volume at 2 x 2 x 4 mm with TotalSegmentator ids for ctrate4."""
    import nibabel as nib

    from core.anatomy_sets import totalseg_name_to_id

    ids = totalseg_name_to_id()
    hu = np.full((96, 96, 40), -1000, dtype=np.int16)
    hu[8:88, 8:88, :] = 0  # body
    mask = np.zeros(hu.shape, dtype=np.uint8)
    mask[12:44, 20:76, 8:32] = ids["lung_upper_lobe_right"]
    mask[52:84, 20:76, 8:32] = ids["lung_upper_lobe_left"]
    hu[mask > 0] = -850
    if with_heart:
        mask[40:64, 50:74, 10:22] = ids["heart"]
    mask[46:50, 30:34, 4:36] = ids["esophagus"]
    mask[50:56, 36:42, 4:36] = ids["aorta"]
    affine = np.diag([2.0, 2.0, 4.0, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "seg.nii.gz")
    return folder / "ct.nii.gz", folder / "seg.nii.gz"


def test_predict_nifti_with_mask(trained: dict[str, Any], tmp_path: Path) -> None:
    volume, mask = _write_study(tmp_path / "study", with_heart=False)
    payload = predict_study(trained["config"], trained["model_dir"], volume, mask_path=mask, work_dir=tmp_path / "w")
    assert payload["input_kind"] == "nifti"
    assert payload["anatomies_found"] == ["lung", "esophagus", "aorta"]
    assert payload["anatomies"]["heart"]["found"] is False
    heart_labels = payload["anatomies"]["heart"]["labels"]
    assert set(heart_labels) == {"Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification"}
    assert all(entry["scored_on"] == "global" for entry in heart_labels.values())
    assert payload["anatomies"]["lung"]["labels"]["Emphysema"]["scored_on"] == "anatomy"
    assert len(payload["labels"]) == 16
    assert all(0.0 < p < 1.0 for p in payload["labels"].values())
    json.dumps(payload)  # JSON-serialisable


def test_predict_cli_writes_json(trained: dict[str, Any], tmp_path: Path, anatomies) -> None:
    from fvlm.cli import main

    volume, mask = _write_study(tmp_path / "study")
    params = trained["root"] / "params.yaml"
    import yaml

    raw = trained["config"].model_dump(mode="json", exclude={"root"})
    params.write_text(yaml.safe_dump({**raw, "profiles": {"demo": {}}}))
    out = tmp_path / "prediction.json"
    code = main(
        [
            "--params",
            str(params),
            "predict",
            str(volume),
            "--mask",
            str(mask),
            "--model",
            str(trained["model_dir"]),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["anatomies_found"] == list(anatomies)


def test_predict_errors_are_clear(trained: dict[str, Any], tmp_path: Path) -> None:
    volume, mask = _write_study(tmp_path / "study")
    config, model_dir = trained["config"], trained["model_dir"]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(PredictionError, match="broken.nii.gz: cannot read NIfTI"):
        predict_study(config, model_dir, broken, mask_path=mask, work_dir=tmp_path / "w")
    empty_dir = tmp_path / "no_dicom"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("not dicom")
    with pytest.raises(PredictionError, match="no readable DICOM study"):
        predict_study(config, model_dir, empty_dir, mask_path=mask, work_dir=tmp_path / "w")
    import nibabel as nib

    small = tmp_path / "small_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), small)
    with pytest.raises(PredictionError, match="mask shape"):
        predict_study(config, model_dir, volume, mask_path=small, work_dir=tmp_path / "w")
    with pytest.raises(PredictionError, match="cannot load"):
        predict_study(config, tmp_path / "missing_model", volume, mask_path=mask, work_dir=tmp_path / "w")


def test_center_crop_or_pad() -> None:
    array = np.arange(5 * 6 * 7).reshape(5, 6, 7)
    out = center_crop_or_pad(array, (3, 8, 7), fill=-1)
    assert out.shape == (3, 8, 7)
    assert (out[:, 0] == -1).all() and (out[:, -1] == -1).all()
    np.testing.assert_array_equal(out[:, 1:7], array[1:4])
    shifted = center_crop_or_pad(array, (2, 6, 7), fill=0, center=(0, 3, 3))
    np.testing.assert_array_equal(shifted, array[0:2])  # clamped at the volume's start


def test_predict_real_dicom_study_with_reference_mask(
    trained: dict[str, Any], shared_data: Path, tmp_path: Path
) -> None:
    """TotalSegmentator's public example: 20-slice JPEG 2000 DICOM series + its reference segmentation."""
    dicom_dir = shared_data / "totalsegmentator" / "example_ct_dicom"
    mask = shared_data / "totalsegmentator" / "example_seg_dicom.nii.gz"
    try:
        payload = predict_study(
            trained["config"], trained["model_dir"], dicom_dir, mask_path=mask, work_dir=tmp_path / "w"
        )
    except PredictionError as error:
        if "affine differs" in str(error) or "mask shape" in str(error):
            pytest.fail(f"converted grid does not match the reference segmentation's: {error}")
        raise
    assert payload["input_kind"] == "dicom" and payload["study_id"].startswith("st_")
    assert payload["anatomies_found"] == ["aorta"]  # an abdominal scan: of ctrate4 only the aorta
    assert len(payload["labels"]) == 16
    text = json.dumps(payload)
    assert "1.3.12.2.1107" not in text  # no UID leaks into the output


@pytest.mark.slow
def test_predict_segments_with_totalsegmentator_backend(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --mask: TotalSegmentator's real code path with random stand-in weights (noise labels)."""
    from core.env import ensure_totalseg_config
    from segmentation.standin_weights import build_standin_weights

    home = tmp_path / "totalseg_home"
    ensure_totalseg_config(home)
    build_standin_weights(home / "nnunet" / "results", ("fast",))
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, str(home / "nnunet" / "results"))
    config = trained["config"].model_copy(
        update={
            "segment": trained["config"].segment.model_copy(
                update={
                    "backend": "totalsegmentator",
                    "mode": "fast",
                    "device": "cpu",
                    "roi_subset": False,
                    "totalseg_home": str(home),
                }
            )
        }
    )
    volume, _ = _write_study(tmp_path / "study")
    try:
        payload = predict_study(config, trained["model_dir"], volume, work_dir=tmp_path / "w")
    except PredictionError as error:  # noise labels may hold no anatomy of the set: a clear error
        assert "no anatomy" in str(error)
        return
    assert len(payload["labels"]) == 16
