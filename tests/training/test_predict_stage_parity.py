"""Predict converts and segments exactly as the convert and segment stages do: every ``convert.*`` and
``segment.*`` key that reaches a stage's job reaches predict's (issue #25)."""

from __future__ import annotations

import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from core.config import ConvertConfig, FvlmConfig, SegmentConfig, config_from_dict
from preprocessing.convert import ConvertJob
from segmentation.stage import SegmentJob
from training.inference.predict import PredictJob

# values a generic rule cannot pick (they must name something that exists)
VALID_OTHER: dict[str, Any] = {
    "segment.anatomy_set": "chest_abdomen",
    "convert.study_key_tag": "AccessionNumber",
}


def other_value(key: str, default: Any, annotation: Any) -> Any:
    """A valid value of the key that differs from its default."""
    if key in VALID_OTHER:
        return VALID_OTHER[key]
    choices = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in choices if choice != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 3
    if isinstance(default, float):
        return default * 2
    if isinstance(default, list):
        return list(reversed(default))
    return f"other-{key.split('.')[-1]}"  # str or str | None


def each_key() -> list[tuple[str, Any]]:
    keys = []
    for section, model in (("convert", ConvertConfig), ("segment", SegmentConfig)):
        for name, info in model.model_fields.items():
            key = f"{section}.{name}"
            keys.append((key, other_value(key, info.default, info.annotation)))
    return keys


def config_with(tmp_path: Path, key: str, value: Any) -> FvlmConfig:
    section, name = key.split(".")
    return config_from_dict({section: {name: value}}, root=tmp_path, environ={})


def test_the_generic_rule_changes_every_key(tmp_path: Path) -> None:
    """Each key of both sections gets a valid, non-default value (else the parity test proves nothing)."""
    default = config_from_dict({}, root=tmp_path, environ={})
    for key, value in each_key():
        section, name = key.split(".")
        assert getattr(getattr(config_with(tmp_path, key, value), section), name) != getattr(
            getattr(default, section), name
        ), key


@pytest.mark.parametrize(("key", "value"), each_key(), ids=[key for key, _ in each_key()])
def test_predict_builds_the_stage_jobs(tmp_path: Path, key: str, value: Any) -> None:
    config = config_with(tmp_path, key, value)
    job = PredictJob.from_config(config, model="unused", input_path=tmp_path)
    assert job.convert == ConvertJob.from_config(config)
    assert job.convert.settings == ConvertJob.from_config(config).settings
    assert job.segment == SegmentJob.from_config(config)


@pytest.mark.parametrize(
    ("key", "value"),
    [item for item in each_key() if item[0].startswith("segment.")],
    ids=[key for key, _ in each_key() if key.startswith("segment.")],
)
def test_predict_segments_with_the_stage_backend(tmp_path: Path, key: str, value: Any) -> None:
    """The TotalSegmentator backend predict builds for a model's anatomy set is the segment stage's
    (``SegmentJob.make_backend``) for that set, down to every attribute (mode, device, roi subset,
    the robust crop, the weights folder)."""
    config = config_with(tmp_path, key, value)
    job = PredictJob.from_config(config, model="unused", input_path=tmp_path)
    stage = replace(SegmentJob.from_config(config), backend="totalsegmentator", anatomy_set="ctrate4")
    built, expected = job.segment_backend("totalsegmentator", "ctrate4"), stage.make_backend()
    assert type(built) is type(expected) and vars(built) == vars(expected)


def test_predict_converts_dicom_with_the_stage_settings(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DICOM study goes through ``convert_study`` with the convert job's settings (``.nii`` here)."""
    import preprocessing.convert
    from training.inference.predict import load_input_image

    seen: list[Any] = []
    convert_study = preprocessing.convert.convert_study

    def spy(study: Any, output_dir: Any, settings: Any, **kwargs: Any) -> Any:
        seen.append(settings)
        return convert_study(study, output_dir, settings, **kwargs)

    monkeypatch.setattr(preprocessing.convert, "convert_study", spy)
    config = config_from_dict(
        {"convert": {"output_extension": ".nii", "min_slices": 5, "strict": False}}, root=tmp_path, environ={}
    )
    job = PredictJob.from_config(config, model="unused", input_path=tmp_path)
    image, info = load_input_image(shared_data / "totalsegmentator" / "example_ct_dicom", job.convert, tmp_path / "w")
    assert seen == [ConvertJob.from_config(config).settings]
    assert info["input_kind"] == "dicom" and len(image.shape) == 3
    assert [path.name for path in (tmp_path / "w" / "volumes").iterdir()] == [f"{info['study_id']}.nii"]
