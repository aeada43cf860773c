"""The promotion gate (``promote_if_better``): the absolute floor (``evaluate.promote_floor``) before the
champion comparison, on a real MLflow registry (SQLite store in pytest's tmp dir).

Model versions are created directly in the registry (a source folder, no logged model): the gate reads
and writes only registry tags and aliases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.config import EvaluateConfig
from training.tracking.gate import check_floor, describe_floor, promote_if_better


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One SQLite store for the module (creating one costs seconds); each test gets its own model name."""
    root = tmp_path_factory.mktemp("gate")
    (root / "model").mkdir()
    return f"sqlite:///{root / 'mlflow.db'}", root / "model"


@pytest.fixture()
def registry(store: tuple[str, Path], request: pytest.FixtureRequest) -> dict[str, Any]:
    import mlflow

    uri, source = store
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = f"fvlm-gate-{request.node.name.replace('_', '-')}"
    client.create_registered_model(name)

    def new_version() -> str:
        return str(client.create_model_version(name, source=str(source)).version)

    return {"uri": uri, "client": client, "name": name, "new_version": new_version}


def _champion(registry: dict[str, Any]) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(registry["client"].get_model_version_by_alias(registry["name"], "champion").version)
    except MlflowException:
        return None


def test_first_model_below_the_ci_floor_is_registered_but_not_promoted(registry: dict[str, Any]) -> None:
    version = registry["new_version"]()
    decision = promote_if_better(
        registry["uri"], registry["name"], version, 0.375, "hash-a", floor="ci_low", mean_auc_ci=(0.21, 0.58)
    )
    assert not decision.promoted and decision.floor_passed is False
    assert decision.reason == (
        "below the floor (val_mean_auc_ci_low > 0.5): val mean AUC CI low 0.2100 <= 0.5 (not above chance)"
    )
    assert decision.floor == "val_mean_auc_ci_low > 0.5"
    assert _champion(registry) is None
    tags = registry["client"].get_model_version(registry["name"], version).tags
    assert tags["promoted"] == "false" and tags["promotion_reason"] == decision.reason
    assert float(tags["val_mean_auc"]) == pytest.approx(0.375) and tags["val_mean_auc_ci"] == "[0.21, 0.58]"


def test_first_model_above_the_ci_floor_is_promoted(registry: dict[str, Any]) -> None:
    version = registry["new_version"]()
    decision = promote_if_better(
        registry["uri"], registry["name"], version, 0.71, "hash-a", floor="ci_low", mean_auc_ci=(0.62, 0.80)
    )
    assert decision.promoted and decision.floor_passed is True
    assert "no 'champion' yet" in decision.reason and "0.6200 > 0.5" in decision.reason
    assert _champion(registry) == version
    assert registry["client"].get_model_version(registry["name"], version).tags["promoted"] == "true"


def test_better_than_champion_but_below_the_floor_is_not_promoted(registry: dict[str, Any]) -> None:
    uri, name = registry["uri"], registry["name"]
    first = registry["new_version"]()
    # a champion from before the floor existed (floor disabled), scoring 0.40 on this data
    assert promote_if_better(uri, name, first, 0.40, "hash-a", floor="none").promoted
    second = registry["new_version"]()
    decision = promote_if_better(uri, name, second, 0.45, "hash-a", floor="ci_low", mean_auc_ci=(0.30, 0.60))
    assert not decision.promoted and "below the floor" in decision.reason
    assert _champion(registry) == first
    # a numeric floor: the mean AUC itself must reach it
    third = registry["new_version"]()
    decision = promote_if_better(uri, name, third, 0.45, "hash-a", floor=0.6)
    assert not decision.promoted
    assert decision.reason == "below the floor (val_mean_auc >= 0.6): val mean AUC 0.4500 < 0.6"
    assert _champion(registry) == first
    # above the floor and better than the champion: promoted
    decision = promote_if_better(uri, name, third, 0.65, "hash-a", floor=0.6)
    assert decision.promoted and decision.champion_version == first and decision.champion_mean_auc == pytest.approx(0.4)
    assert _champion(registry) == third


def test_above_the_floor_still_has_to_beat_the_champion(registry: dict[str, Any]) -> None:
    uri, name = registry["uri"], registry["name"]
    first = registry["new_version"]()
    assert promote_if_better(uri, name, first, 0.80, "hash-a", mean_auc_ci=(0.70, 0.90)).promoted
    second = registry["new_version"]()
    decision = promote_if_better(uri, name, second, 0.75, "hash-a", mean_auc_ci=(0.65, 0.85))
    assert not decision.promoted and decision.floor_passed is True and "does not beat champion" in decision.reason
    assert _champion(registry) == first


def test_floor_disabled_keeps_the_old_gate(registry: dict[str, Any]) -> None:
    uri, name = registry["uri"], registry["name"]
    first = registry["new_version"]()
    decision = promote_if_better(uri, name, first, 0.375, "hash-a", floor="none")
    assert decision.promoted and decision.reason == "no 'champion' yet" and decision.floor_passed is None
    worse = registry["new_version"]()
    assert not promote_if_better(uri, name, worse, 0.30, "hash-a", floor="none").promoted
    better = registry["new_version"]()
    assert promote_if_better(uri, name, better, 0.40, "hash-a", floor="none").promoted
    assert _champion(registry) == better


def test_ci_floor_without_a_ci_never_promotes(registry: dict[str, Any]) -> None:
    version = registry["new_version"]()
    for ci in (None, (float("nan"), float("nan")), (None, None)):
        decision = promote_if_better(registry["uri"], registry["name"], version, 0.9, "hash-a", mean_auc_ci=ci)
        assert not decision.promoted and "no finite bootstrap CI" in decision.reason
    assert _champion(registry) is None


def test_floor_rules() -> None:
    assert check_floor("ci_low", 0.7, (0.5, 0.9))[0] is False  # strictly above chance
    assert check_floor("ci_low", 0.7, (0.501, 0.9))[0] is True
    assert check_floor(0.6, 0.6)[0] is True and check_floor(0.6, 0.599)[0] is False
    assert check_floor(0.6, float("nan"))[0] is False
    assert check_floor("none", float("nan"))[0] is True
    rules = [describe_floor(floor) for floor in ("ci_low", 0.65, "none")]
    assert rules == ["val_mean_auc_ci_low > 0.5", "val_mean_auc >= 0.65", "none"]


def test_promote_floor_config_values() -> None:
    assert EvaluateConfig().promote_floor == "ci_low"
    assert EvaluateConfig(promote_floor=None).promote_floor == "none"  # YAML null
    assert EvaluateConfig(promote_floor="None").promote_floor == "none"
    assert EvaluateConfig(promote_floor=0.7).promote_floor == pytest.approx(0.7)
    for bad in (1.5, -0.1, "ci_high", True):
        with pytest.raises(ValueError):
            EvaluateConfig(promote_floor=bad)
