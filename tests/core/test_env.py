from __future__ import annotations

import json
from pathlib import Path

from core.env import OFFLINE_DEFAULTS, apply_offline_env, ensure_totalseg_config


def test_offline_env_keeps_user_choices() -> None:
    environ = {"DVC_NO_ANALYTICS": "0"}
    apply_offline_env(environ)
    assert environ["DVC_NO_ANALYTICS"] == "0"
    assert environ["MLFLOW_DISABLE_TELEMETRY"] == OFFLINE_DEFAULTS["MLFLOW_DISABLE_TELEMETRY"]
    assert environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_totalseg_usage_statistics_off_before_first_call(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TOTALSEG_HOME_DIR", raising=False)
    home = tmp_path / "totalseg"
    (home).mkdir()
    (home / "config.json").write_text(json.dumps({"totalseg_id": "x", "send_usage_stats": True}))
    ensure_totalseg_config(home)
    config = json.loads((home / "config.json").read_text())
    assert config["send_usage_stats"] is False and config["totalseg_id"] == "x"
    from totalsegmentator.config import get_config_key, setup_totalseg

    assert setup_totalseg()["send_usage_stats"] is False  # TotalSegmentator reads the same file
    assert get_config_key("statistics_disclaimer_shown") is True


def test_argparse_is_the_standard_library() -> None:
    """PyPI's 2015 'argparse' (wanted by unittest2) must not shadow the stdlib (Prefect's server needs it)."""
    import argparse
    import sysconfig
    from pathlib import Path

    assert Path(argparse.__file__).parent == Path(sysconfig.get_paths()["stdlib"])
    assert hasattr(argparse, "BooleanOptionalAction")
