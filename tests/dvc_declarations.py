"""What each dvc.yaml stage declares vs the config keys its command read (``$FVLM_CONFIG_ACCESS_LOG``).

Plain helpers shared by tests/test_dvc_params.py and, through the ``undeclared_reads`` fixture,
tests/test_e2e_own_data.py.
"""

from __future__ import annotations

import re
from typing import Any

from core.config import EXECUTION_KEYS

COMMAND_STAGE = {
    "convert": "convert",
    "segment": "segment",
    "parse-reports": "parse_reports",
    "shard": "shard",
    "train": "train",
    "evaluate": "evaluate",
}
TEMPLATE = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


def strings_of(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in (strings_of(key) + strings_of(value))]
    if isinstance(node, list):
        return [s for item in node for s in strings_of(item)]
    return []


def declared_keys(stage: dict[str, Any]) -> set[str]:
    """The params a stage lists plus every ``${key}`` its cmd / deps / outs / metrics / plots use."""
    keys = {item if isinstance(item, str) else next(iter(item)) for item in stage.get("params", [])}
    for text in strings_of({k: v for k, v in stage.items() if k != "params"}):
        keys.update(TEMPLATE.findall(text))
    return keys


def covered(key: str, declared: set[str]) -> bool:
    candidates = declared | set(EXECUTION_KEYS)
    return any(key == item or key.startswith(item + ".") for item in candidates)


def undeclared_reads(access_log: str, dvc_yaml: dict[str, Any]) -> dict[str, set[str]]:
    """``{stage: keys read but not declared}`` from an access log (``<command>\\t<key>`` lines)."""
    missing: dict[str, set[str]] = {}
    for line in access_log.splitlines():
        command, _, key = line.partition("\t")
        stage = COMMAND_STAGE.get(command)
        if stage is None or not key:
            continue
        if not covered(key, declared_keys(dvc_yaml["stages"][stage])):
            missing.setdefault(stage, set()).add(key)
    return missing
