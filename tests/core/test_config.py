from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, config_from_dict, load_config


def test_repo_params_load_both_profiles(repo_root: Path) -> None:
    demo = load_config(repo_root / "params.yaml", profile="demo")
    paper = load_config(repo_root / "params.yaml", profile="paper")
    assert demo.profile == "demo" and paper.profile == "paper"
    assert paper.grid.crop_zyx == (112, 256, 352)
    assert paper.grid.spacing_zyx_mm == (3.0, 1.0, 1.0)
    assert paper.model.vision.patch_zyx == (16, 16, 32)
    assert paper.grid.hu_window == (-1150.0, 350.0)
    assert demo.model.vision.embed_dim < paper.model.vision.embed_dim
    # every crop axis divides into whole patches, in both profiles
    for cfg in (demo, paper):
        assert all(c % p == 0 for c, p in zip(cfg.grid.crop_zyx, cfg.model.vision.patch_zyx))
    assert demo.root == repo_root


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
        [sys.executable, "-c", "import sys, fvlm.cli as c; c.build_parser(); "
         "print(sorted(m for m in ('torch','prefect','mlflow','spacy','totalsegmentator','pydicom') if m in sys.modules))"],
        capture_output=True, text=True, check=True,
    )
    assert heavy.stdout.strip() == "[]", heavy.stdout
    assert elapsed < 10


def test_cli_config_error_exit_code(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("train: {lr: -1}\n")
    from fvlm.cli import main

    assert main(["--params", str(params), "config", "validate"]) == 2
