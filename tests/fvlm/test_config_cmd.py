"""``fvlm config show``: each value with its source (file, env NAME, default), the salt never printed unless it
is the public demo salt, and a warning when the demo salt is used outside the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from core.config import flatten_keys
from fvlm.cli import main

OVERRIDE_VARIABLES = ("FVLM_DATA_DIR", "FVLM_SALT", "MLFLOW_TRACKING_URI", "PREFECT_API_URL", "FVLM_DVC_REMOTE")


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (*OVERRIDE_VARIABLES, "TOTALSEG_HOME_DIR", "FVLM_PARAMS"):
        monkeypatch.delenv(variable, raising=False)


def shown(params: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[dict[str, tuple[str, str]], str]:
    """``key -> (source, value)`` of ``fvlm config show`` and its stderr."""
    assert main(["--params", str(params), "config", "show", *extra]) == 0
    captured = capsys.readouterr()
    lines = {}
    for line in captured.out.splitlines():
        if line.startswith("#"):
            continue
        source, _, assignment = line.partition("  ")
        key, _, value = assignment.strip().partition(" = ")
        lines[key] = (source.strip(), value)
    return lines, captured.err


def own_data_params(tmp_path: Path, text: str = "") -> Path:
    params = tmp_path / "params.yaml"
    params.write_text(
        "paths:\n  raw_dataset: data/raw\n  raw_dicom: data/raw/dicom\n  reports_csv: data/raw/r.csv\n" + text
    )
    return params


def test_show_marks_file_env_and_default(
    repo_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    lines, err = shown(repo_root / "params.yaml", capsys)
    assert lines["paths.raw_dicom"] == ("file", '"data/demo/dicom"')
    assert lines["tracking.mlflow_tracking_uri"] == ("env MLFLOW_TRACKING_URI", '"http://127.0.0.1:5999"')
    written = flatten_keys(yaml.safe_load((repo_root / "params.yaml").read_text()))
    for key, (source, _) in lines.items():
        if key != "tracking.mlflow_tracking_uri":
            assert (source == "file") == (key in written), key
    assert {source for source, _ in lines.values()} == {"file", "default", "env MLFLOW_TRACKING_URI"}
    assert "demo salt" not in err  # the demo itself: no warning


def test_a_real_salt_is_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "a-long-hospital-secret-0123456789"
    monkeypatch.setenv("FVLM_SALT", secret)
    params = own_data_params(tmp_path)
    lines, err = shown(params, capsys)
    assert lines["privacy.salt"] == ("env FVLM_SALT", f'"<set, {len(secret)} characters, not shown>"')
    assert err == ""
    assert main(["--params", str(params), "config", "show", "--json"]) == 0
    out = capsys.readouterr().out
    assert secret not in out
    assert json.loads(out)["paths"]["raw_dicom"] == "data/raw/dicom"


def test_demo_salt_outside_the_demo_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines, err = shown(own_data_params(tmp_path), capsys)
    assert lines["privacy.salt"] == ("default", '"fvlm-demo-salt-change-me"')
    assert "privacy.salt is still the demo salt" in err and "FVLM_SALT" in err
    assert "paths.raw_dicom 'data/raw/dicom'" in err
    assert main(["--params", str(tmp_path / "params.yaml"), "config", "validate"]) == 0
    assert "demo salt" in capsys.readouterr().err


def test_demo_salt_in_another_profile_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("profile: paper\n")
    _, err = shown(params, capsys)
    assert "profile 'paper'" in err


def test_the_top_level_profile_flag_is_gone(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--profile", "paper", "config", "show"])
    assert stopped.value.code == 2
    assert "--profile" not in capsys.readouterr().err.splitlines()[0]  # not in the usage line
