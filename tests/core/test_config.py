from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, config_from_dict, load_config


def _scales(repo_root: Path, tmp_path: Path):
    import shutil

    from core.config import use_params_file

    demo = load_config(repo_root / "params.yaml")
    params = tmp_path / "params.yaml"
    shutil.copy(repo_root / "params.yaml", params)
    changed = use_params_file(params, repo_root / "params.paper.yaml", name="paper")
    return demo, load_config(params), params, changed


def test_repo_params_are_the_demo_and_params_paper_the_paper(repo_root: Path, tmp_path: Path) -> None:
    demo, paper, _, changed = _scales(repo_root, tmp_path)
    assert demo.profile == "demo" and paper.profile == "paper"
    assert paper.grid.crop_zyx == (112, 256, 352)
    assert paper.grid.spacing_zyx_mm == (3.0, 1.0, 1.0)
    assert paper.model.vision.patch_zyx == (16, 16, 32)
    assert paper.model.text.name_or_path == "microsoft/BiomedVLP-CXR-BERT-specialized"
    assert paper.train.steps == 20000 and paper.train.batch_size == 14 and paper.evaluate.bootstrap == 1000
    assert paper.grid.hu_window == (-1150.0, 350.0)
    assert demo.model.vision.embed_dim < paper.model.vision.embed_dim
    # params.yaml's values are the demo values that ran before profiles were removed
    assert demo.grid.crop_zyx == (48, 64, 96) and demo.grid.spacing_zyx_mm == (8.0, 4.0, 4.0)
    assert demo.train.steps == 300 and demo.train.batch_size == 8 and demo.train.lr == 1e-3
    assert demo.model.vision.kind == "conv" and paper.model.vision.kind == "vit"
    assert demo.model.text.name_or_path is None and demo.model.text.max_length == 320
    assert demo.evaluate.bootstrap == 200
    assert "train.steps" in changed and "paths.raw_dicom" not in changed
    # every crop axis divides into whole patches, at both scales
    for cfg in (demo, paper):
        assert all(c % p == 0 for c, p in zip(cfg.grid.crop_zyx, cfg.model.vision.patch_zyx, strict=True))
    assert demo.root == repo_root


def test_config_use_is_visible_and_reversible(repo_root: Path, tmp_path: Path) -> None:
    """paper -> demo gives params.yaml back byte for byte; both files name the same keys."""
    from fvlm.cli import main

    _, _, params, _ = _scales(repo_root, tmp_path)
    assert params.read_text() != (repo_root / "params.yaml").read_text()
    (tmp_path / "params.demo.yaml").write_text((repo_root / "params.demo.yaml").read_text())
    assert main(["--params", str(params), "config", "use", "demo"]) == 0
    assert params.read_text() == (repo_root / "params.yaml").read_text()
    paper = yaml.safe_load((repo_root / "params.paper.yaml").read_text())
    demo = yaml.safe_load((repo_root / "params.demo.yaml").read_text())

    def keys(data: dict, prefix: str = "") -> set[str]:
        out: set[str] = set()
        for key, value in data.items():
            out |= keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}"}
        return out

    assert keys(paper) == keys(demo)


def test_no_hidden_profile_merge() -> None:
    with pytest.raises(ConfigError, match=r"key 'profiles'"):
        config_from_dict({"profiles": {"demo": {"train": {"steps": 3}}}}, environ={})
    # an empty leftover is harmless; FVLM_PROFILE changes nothing
    cfg = config_from_dict({"profiles": {"demo": {}}, "train": {"steps": 7}}, environ={"FVLM_PROFILE": "paper"})
    assert cfg.train.steps == 7
    with pytest.raises(ConfigError, match=r"fvlm config use paper"):
        config_from_dict({"profile": "demo"}, profile="paper", environ={})


def test_unknown_key_is_named(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"convert": {"strikt": True}}))
    with pytest.raises(ConfigError) as info:
        load_config(params)
    message = str(info.value)
    assert "convert.strikt" in message and str(params) in message


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"key 'grid.hu_window'"):
        config_from_dict({"grid": {"hu_window": [400, -1000]}}, environ={})
    with pytest.raises(ConfigError, match=r"key 'split'"):
        config_from_dict({"split": {"train": 0.9, "val": 0.2, "test": 0.1}}, environ={})
    with pytest.raises(ConfigError, match=r"key 'profile'"):
        config_from_dict({}, profile="nope", environ={})


def test_env_overrides_paths_and_uris() -> None:
    cfg = config_from_dict(
        {},
        environ={"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "FVLM_DATA_DIR": "/srv/ct", "FVLM_SALT": "s3cret"},
    )
    assert cfg.tracking.mlflow_tracking_uri == "http://127.0.0.1:5000"
    assert cfg.paths.data_dir == "/srv/ct"
    assert cfg.privacy.salt == "s3cret"
    assert cfg.path("/abs/x") == Path("/abs/x")


def test_flat_view_for_mlflow() -> None:
    flat = config_from_dict({}, environ={}).flat()
    assert flat["train.lr"] > 0 and "grid.crop_zyx" in flat


def test_cli_help_version_and_startup_time(repo_root: Path) -> None:
    fvlm = Path(sys.executable).with_name("fvlm")
    command = [str(fvlm)] if fvlm.exists() else [sys.executable, "-m", "fvlm.cli"]
    started = time.perf_counter()
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    assert "convert" in out.stdout or "config" in out.stdout
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, check=True)
    assert "fvlm-pipeline" in version.stdout
    # not a timing assertion on the work itself: a guard that no heavy import sneaked into --help
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, fvlm.cli as c; c.build_parser(); "
            "heavy = ('torch', 'prefect', 'mlflow', 'spacy', 'totalsegmentator', 'pydicom'); "
            "print(sorted(m for m in heavy if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert heavy.stdout.strip() == "[]", heavy.stdout
    assert elapsed < 10


def test_cli_config_error_exit_code(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: -1}\n")
    from fvlm.cli import main

    assert main(["--params", str(params), "config", "validate"]) == 2


def test_series_preference_set_is_the_one_selection_interprets() -> None:
    from typing import get_args

    from core.config import SeriesPreference
    from preprocessing.series_selection import KNOWN_PREFERENCES

    assert get_args(SeriesPreference) == KNOWN_PREFERENCES


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        ("convert", {"series_preference": ["fattest"]}, "convert.series_preference.0"),
        ("convert", {"series_preference": []}, "convert.series_preference"),
        ("grid", {"spacing_zyx_mm": [-8, 4, 4]}, "grid.spacing_zyx_mm.0"),
        ("grid", {"spacing_zyx_mm": [8, 0, 4]}, "grid.spacing_zyx_mm.1"),
        ("grid", {"crop_zyx": [0, 64, 96]}, "grid.crop_zyx.0"),
        ("grid", {"hu_window": [350, -1150]}, "grid.hu_window"),
        ("split", {"train": 1.2, "val": 0.0, "test": -0.2}, "split.train"),
        ("split", {"train": 0.5, "val": 0.1, "test": 0.1}, "split"),
        ("model", {"vision": {"patch_zyx": [16, 0, 32]}}, "model.vision.patch_zyx.1"),
        ("services", {"mlflow_port": 0}, "services.mlflow_port"),
        ("segment", {"anatomy_set": "ctrate5"}, "segment.anatomy_set"),
        ("orchestration", {"ingest_cron": "every night"}, "orchestration.ingest_cron"),
        ("orchestration", {"timezone": "Mars/Olympus"}, "orchestration.timezone"),
        ("train", {"batch_size": 0}, "train.batch_size"),
    ],
)
def test_closed_sets_and_ranges_rejected_at_load(section: str, values: dict, key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict({section: values}, environ={})
    assert f"key '{key}'" in str(raised.value)


def test_config_validate_cli_rejects_what_convert_would(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fvlm.cli import main

    params = tmp_path / "params.yaml"
    params.write_text("convert:\n  series_preference: [fattest]\n")
    assert main(["--params", str(params), "config", "validate"]) == 2
    error = capsys.readouterr().err
    assert "convert.series_preference.0" in error and "'fattest'" in error and "largest_coverage" in error


def test_a_saved_model_config_with_the_old_vocab_key_still_loads() -> None:
    from core.config import ModelConfig

    cfg = ModelConfig.model_validate({"text": {"name_or_path": None, "vocab_min_reports": 5}})
    assert cfg.text.vocab_min_patients == 5
