"""Offline / no-telemetry environment, applied by the CLI and the tests (shared/docs/ENV.md beside the repo)."""

from __future__ import annotations

import json
import os
from pathlib import Path

OFFLINE_DEFAULTS: dict[str, str] = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GIT_PYTHON_REFRESH": "quiet",
}


def apply_offline_env(environ: dict[str, str] | None = None) -> None:
    """Set telemetry-off variables unless the user already chose a value."""
    target = os.environ if environ is None else environ
    for key, value in OFFLINE_DEFAULTS.items():
        target.setdefault(key, value)


def ensure_totalseg_config(home_dir: str | os.PathLike[str]) -> Path:
    """Write TotalSegmentator's config.json with usage statistics off before its first call."""
    home = Path(home_dir)
    home.mkdir(parents=True, exist_ok=True)
    config_path = home / "config.json"
    config: dict[str, object] = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError:
            config = {}
    if config.get("send_usage_stats") is not False or not config.get("statistics_disclaimer_shown"):
        config["send_usage_stats"] = False
        config["statistics_disclaimer_shown"] = True  # statistics are off: no "sends statistics" banner
        config.setdefault("prediction_counter", 0)
        tmp = config_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.replace(config_path)
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    return config_path
