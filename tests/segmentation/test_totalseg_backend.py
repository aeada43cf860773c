"""The TotalSegmentator backend through its real python API / nnU-Net predictor (stand-in weights)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segmentation.totalseg import TotalSegmentatorBackend, WeightsMissingError, parts_for_classes


def _small_ct(make_phantom, *, lps: bool = False) -> nib.Nifti1Image:
    hu, _ = make_phantom((40, 36, 20))
    affine = np.diag([2.5, 2.5, 4.0, 1.0])
    if lps:  # stored as L->R / P->A flipped: not canonical
        affine = np.diag([-2.5, -2.5, 4.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 30.0)
    return nib.Nifti1Image(hu, affine)


def test_warm_backend_end_to_end_on_a_small_ct(totalseg_env: Path, make_phantom) -> None:
    backend = TotalSegmentatorBackend(mode="fast", device="cpu", home_dir=totalseg_env)
    image = _small_ct(make_phantom, lps=True)
    ids, warnings = backend.segment_study("st_x", image)
    assert ids.shape == image.shape and ids.dtype == np.uint8
    from totalsegmentator.map_to_binary import class_map

    assert set(np.unique(ids).tolist()) <= {0, *class_map["total"]}  # labels are noise, ids are valid
    assert "STANDIN" in backend.model_id and "total/fast/297" in backend.model_id
    assert any("stand-in" in w for w in warnings)
    predictor = backend._models[0].predictor
    again = backend.segment(image)  # warm: the same predictor object
    assert backend._models[0].predictor is predictor and np.array_equal(again, ids)


def test_warm_backend_equals_totalsegmentator_api(totalseg_env: Path, shared_data: Path) -> None:
    """Same preprocessing as TotalSegmentator: identical labels to ``totalsegmentator()`` on a real CT."""
    from segmentation.totalseg import segment_with_totalsegmentator_api

    image = nib.load(str(shared_data / "totalsegmentator" / "example_ct_sm.nii.gz"))
    warm = TotalSegmentatorBackend(mode="fast", device="cpu", home_dir=totalseg_env).segment(image)
    cold = segment_with_totalsegmentator_api(image, mode="fast", device="cpu")
    assert warm.shape == cold.shape == image.shape
    assert np.array_equal(warm, cold)


def test_missing_weights_say_how_to_install_and_download_nothing(tmp_path: Path, monkeypatch) -> None:
    import totalsegmentator.libs

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(totalsegmentator.libs, "download_pretrained_weights", no_download)
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "home"))
    backend = TotalSegmentatorBackend(mode="fast", device="cpu", home_dir=tmp_path / "home")
    with pytest.raises(WeightsMissingError) as error:
        backend.load()
    message = str(error.value)
    assert "totalseg_download_weights -t total_fast" in message and "totalseg_import_weights" in message
    assert "Dataset297_TotalSegmentator_total_3mm_1559subj" in message
    assert not (tmp_path / "home" / "nnunet").exists()  # nothing created, nothing fetched
    config = (tmp_path / "home" / "config.json").read_text()
    assert '"send_usage_stats": false' in config


def test_roi_subset_runs_only_the_needed_parts_and_crops_only_when_cheaper() -> None:
    lung_heart = ["lung_upper_lobe_left", "heart", "aorta", "esophagus"]
    assert parts_for_classes("full", lung_heart) == (291, 293)  # organs + cardiac of 5 parts
    assert parts_for_classes("full", None) == (291, 292, 293, 294, 295)
    assert parts_for_classes("fast", lung_heart) == (297,)
    assert TotalSegmentatorBackend(mode="fast", roi_subset=lung_heart).crop_task_id is None  # 3 mm = 3 mm
    assert TotalSegmentatorBackend(mode="fast", roi_subset=lung_heart, roi_subset_robust=False).crop_task_id == 298
    assert TotalSegmentatorBackend(mode="full", roi_subset=lung_heart).crop_task_id == 297
    assert TotalSegmentatorBackend(mode="full").crop_task_id is None


def test_full_mode_with_roi_subset_runs_two_parts_on_a_crop(totalseg_env: Path, make_phantom) -> None:
    """`full` mode: part models 291 + 293 only, rough crop with the 3 mm model, `total` ids back."""
    from core.anatomy_sets import load_anatomy_set, totalseg_name_to_id
    from segmentation.standin_weights import MODE_MODELS, build_standin_model

    trainer, spacing, _ = MODE_MODELS["full"]
    for task_id in (291, 293):
        build_standin_model(totalseg_env / "nnunet" / "results", task_id, trainer, spacing)
    subset = sorted({c for a in load_anatomy_set("ctrate4").anatomies for c in a.classes})
    backend = TotalSegmentatorBackend(mode="full", device="cpu", roi_subset=subset, home_dir=totalseg_env)
    assert backend.main_task_ids == (291, 293) and backend.crop_task_id == 297
    hu, _ = make_phantom((24, 20, 10))
    image = nib.Nifti1Image(hu, np.diag([4.0, 4.0, 6.0, 1.0]))
    ids = backend.segment(image)
    assert ids.shape == image.shape and ids.dtype == np.uint8
    allowed = {0, *(totalseg_name_to_id()[name] for name in subset)}
    assert set(np.unique(ids).tolist()) <= allowed  # only the subset's classes survive
    assert "total/full/291+293/crop297" in backend.model_id
