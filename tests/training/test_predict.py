"""Prediction: NIfTI / DICOM / converted study (+ mask, or found by identity) -> per-anatomy calls (JSON v1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training.predict_samples import predict, validate_prediction, write_study
from training.inference.predict import PredictionError, center_crop_or_pad
from training.trainer.batch import InMemoryBatches
from training.trainer.job import TrainJob
from training.trainer.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, anatomies, make_samples, tiny_config) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config(root)
    source = InMemoryBatches(make_samples(8, seed=4), batch_size=4)
    result = train(
        TrainJob.from_config(config, out=root / "run", steps=2), source, anatomies, corpus_texts=source.texts()
    )
    return {"root": root, "config": config, "model_dir": Path(result.model_dir)}


def test_predict_nifti_with_mask_absent_anatomy_not_assessable(trained: dict[str, Any], tmp_path: Path) -> None:
    volume, mask = write_study(tmp_path / "study", with_heart=False)
    payload = predict(trained["config"], trained["model_dir"], volume, mask_path=mask, work_dir=tmp_path / "w")
    validate_prediction(payload)
    assert payload["schema_version"] == 1
    assert payload["input"] == {
        "kind": "nifti",
        "study_id": None,
        "mask_source": "argument",
        "series_description": None,
    }
    assert payload["anatomies_found"] == ["lung", "esophagus", "aorta"]
    assert payload["anatomies_not_assessable"] == ["heart"]
    heart = payload["anatomies"]["heart"]
    assert heart["status"] == "not_assessable" and "mask is empty" in heart["reason"]
    assert set(heart["labels"]) == {"Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification"}
    for row in heart["labels"].values():  # no probability scored on the global embedding any more
        assert row["status"] == "not_assessable" and row["probability"] is None and row["call"] is None
    emphysema = payload["labels"]["Emphysema"]
    assert emphysema["status"] == "assessed" and 0.0 < emphysema["probability"] < 1.0
    # a local model has no registry thresholds: probabilities, no calls, and it says so
    assert payload["model"]["version"] is None and payload["model"]["thresholds"]["source"] is None
    assert "no registry thresholds" in payload["model"]["thresholds"]["note"]
    assert all(row["call"] is None for row in payload["labels"].values())
    assert len(payload["labels"]) == 16


def test_predict_calls_with_a_thresholds_file(trained: dict[str, Any], tmp_path: Path) -> None:
    volume, mask = write_study(tmp_path / "study")
    table = {
        "schema_version": 1,
        "model": {"name": None, "version": None},
        "labels": {
            "Emphysema": {"anatomy": "lung", "threshold": 0.0, "val_auc": 0.71, "method": "youden"},
            "Cardiomegaly": {"anatomy": "heart", "threshold": 1.0, "val_auc": None, "method": "youden"},
        },
    }
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps(table))
    payload = predict(
        trained["config"],
        trained["model_dir"],
        volume,
        mask_path=mask,
        work_dir=tmp_path / "w",
        thresholds_path=thresholds,
    )
    validate_prediction(payload)
    emphysema, heart = payload["labels"]["Emphysema"], payload["labels"]["Cardiomegaly"]
    assert (emphysema["call"], emphysema["threshold"], emphysema["val_auc"]) == ("positive", 0.0, 0.71)
    assert (heart["call"], heart["threshold"], heart["val_auc"]) == ("negative", 1.0, None)
    assert payload["positive_calls"] == ["Emphysema"]
    unthresholded = payload["labels"]["Lung nodule"]
    assert unthresholded["call"] is None and "single class" in unthresholded["reason"]
    table["model"] = {"name": "fvlm-ct", "version": "7"}  # another version's thresholds: fine for a local model
    thresholds.write_text(json.dumps(table))
    predict(
        trained["config"],
        trained["model_dir"],
        volume,
        mask_path=mask,
        work_dir=tmp_path / "w2",
        thresholds_path=thresholds,
    )
    thresholds.write_text(json.dumps({"labels": {}}))
    with pytest.raises(PredictionError, match="schema_version 1"):
        predict(
            trained["config"],
            trained["model_dir"],
            volume,
            mask_path=mask,
            work_dir=tmp_path / "w3",
            thresholds_path=thresholds,
        )


def test_predict_cli_writes_json(trained: dict[str, Any], tmp_path: Path, anatomies) -> None:
    from fvlm.cli import main

    volume, mask = write_study(tmp_path / "study")
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
    assert payload["anatomies_found"] == list(anatomies) and payload["anatomies_not_assessable"] == []


def test_predict_errors_are_clear(trained: dict[str, Any], tmp_path: Path) -> None:
    volume, mask = write_study(tmp_path / "study")
    config, model_dir = trained["config"], trained["model_dir"]
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(PredictionError, match="broken.nii.gz: cannot read NIfTI"):
        predict(config, model_dir, broken, mask_path=mask, work_dir=tmp_path / "w")
    empty_dir = tmp_path / "no_dicom"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("not dicom")
    with pytest.raises(PredictionError, match="no readable DICOM study"):
        predict(config, model_dir, empty_dir, mask_path=mask, work_dir=tmp_path / "w")
    import nibabel as nib

    small = tmp_path / "small_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), small)
    with pytest.raises(PredictionError, match="mask shape"):
        predict(config, model_dir, volume, mask_path=small, work_dir=tmp_path / "w")
    with pytest.raises(PredictionError, match="cannot load"):
        predict(config, tmp_path / "missing_model", volume, mask_path=mask, work_dir=tmp_path / "w")


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
        payload = predict(trained["config"], trained["model_dir"], dicom_dir, mask_path=mask, work_dir=tmp_path / "w")
    except PredictionError as error:
        if "affine differs" in str(error) or "mask shape" in str(error):
            pytest.fail(f"converted grid does not match the reference segmentation's: {error}")
        raise
    assert payload["input"]["kind"] == "dicom" and payload["input"]["study_id"].startswith("st_")
    assert payload["anatomies_found"] == ["aorta"]  # an abdominal scan: of ctrate4 only the aorta
    assert payload["anatomies_not_assessable"] == ["lung", "heart", "esophagus"]
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
    volume, _ = write_study(tmp_path / "study")
    try:
        payload = predict(config, trained["model_dir"], volume, work_dir=tmp_path / "w")
    except PredictionError as error:  # noise labels may hold no anatomy of the set: a clear error
        assert "no anatomy" in str(error)
        return
    assert len(payload["labels"]) == 16 and payload["input"]["mask_source"] == "totalsegmentator"


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory: pytest.TempPathFactory, trained: dict[str, Any]) -> dict[str, Any]:
    """One generated demo study (DICOM + its StudyInstanceUID-keyed mask) and a config pointing at it."""
    from synthetic import generate_cohort

    root = tmp_path_factory.mktemp("demo_study")
    generate_cohort(root / "demo", studies=1, seed=0, size="demo", workers=1)
    paths = {
        "raw_dicom": str(root / "demo" / "dicom"),
        "precomputed_masks": str(root / "demo" / "masks"),
        "converted": str(root / "converted"),
        "segmented": str(root / "segmented"),
    }
    config = trained["config"]
    config = config.model_copy(update={"paths": config.paths.model_copy(update=paths)})
    return {"root": root, "config": config, "folder": root / "demo" / "dicom" / "study_0000"}


def test_predict_demo_study_finds_its_mask_from_its_identity(
    demo_study: dict[str, Any], trained: dict[str, Any], tmp_path: Path
) -> None:
    """No --mask: the demo mask is keyed by StudyInstanceUID, the folder is not; the study_id links them."""
    payload = predict(demo_study["config"], trained["model_dir"], demo_study["folder"], work_dir=tmp_path / "w")
    validate_prediction(payload)
    assert payload["input"]["kind"] == "dicom" and payload["input"]["mask_source"] == "precomputed"
    assert payload["anatomies_found"] == ["lung", "heart", "esophagus", "aorta"]
    # without a mask anywhere, a clear error (the demo config segments with the precomputed backend)
    config = demo_study["config"]
    bare = config.model_copy(update={"paths": config.paths.model_copy(update={"precomputed_masks": str(tmp_path)})})
    with pytest.raises(PredictionError, match="no mask found"):
        predict(bare, trained["model_dir"], demo_study["folder"], work_dir=tmp_path / "w2")


def test_predict_converted_study_by_study_id(
    demo_study: dict[str, Any], trained: dict[str, Any], tmp_path: Path
) -> None:
    from preprocessing.convert import ConvertJob, run_convert
    from training.inference.predict import PredictJob, resolve_study_input

    config = demo_study["config"]
    run_convert(ConvertJob.from_config(config, workers=1))
    job = PredictJob.from_config(config, model=trained["model_dir"], study="st_nope")
    with pytest.raises(PredictionError, match="neither a converted study_id"):
        resolve_study_input(job, "st_nope")
    assert resolve_study_input(job, "study_0000") == demo_study["folder"]
    from preprocessing.conversion import read_manifest

    (study_id,) = read_manifest(Path(config.paths.converted) / "studies.parquet")
    volume = resolve_study_input(job, study_id)
    payload = predict(config, trained["model_dir"], volume, work_dir=tmp_path / "w")
    validate_prediction(payload)
    assert payload["input"] == {
        "kind": "converted",
        "study_id": study_id,
        "mask_source": "precomputed",
        "series_description": None,
    }


def test_predict_cli_study_option_and_png(demo_study: dict[str, Any], trained: dict[str, Any], tmp_path: Path) -> None:
    import yaml

    from fvlm.cli import main

    params = tmp_path / "params.yaml"
    raw = demo_study["config"].model_dump(mode="json", exclude={"root"})
    params.write_text(yaml.safe_dump({**raw, "profiles": {"demo": {}}}))
    out, png = tmp_path / "prediction.json", tmp_path / "prediction.png"
    args = ["--params", str(params), "predict", "--study", "study_0000", "--model", str(trained["model_dir"])]
    assert main([*args, "--out", str(out), "--png", str(png)]) == 0
    payload = json.loads(out.read_text())
    validate_prediction(payload)
    assert payload["png"] == str(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert main([*args, str(demo_study["folder"])]) == 2  # INPUT and --study together
