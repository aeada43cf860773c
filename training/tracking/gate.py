"""The promotion gate: a registered version gets the champion alias only if its evaluation has enough
evidence (``check_evidence``), it clears the floor and it beats the current holder on the same evaluation
data; the evaluation and the decision become version tags.

The score the gate compares is the **validation** split's mean AUC (``score_splits``' ``val_mean_auc``):
the test split is reported, never compared, so a champion's quoted test AUC is not the winner of repeated
comparisons on it. Version tags: ``val_mean_auc`` / ``val_mean_auc_ci`` (compared) and ``test_mean_auc`` /
``test_mean_auc_ci`` (reported, set by the evaluation).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

EVAL_HASH_TAG = "eval_data_hash"
MEAN_AUC_TAG = "val_mean_auc"  # the selection score: validation mean AUC
MEAN_AUC_CI_TAG = "val_mean_auc_ci"  # [low, high] of the last recorded evaluation
TEST_MEAN_AUC_TAG = "test_mean_auc"  # reported only
TEST_MEAN_AUC_CI_TAG = "test_mean_auc_ci"
EVIDENCE_TAG = "evidence"  # "ok" or why the evaluation cannot support a promotion
CHANCE_AUC = 0.5
PROMOTED_TAG = "promoted"
PROMOTION_REASON_TAG = "promotion_reason"
_REASON_LIMIT = 500


@dataclass(frozen=True)
class PromotionDecision:
    promoted: bool
    reason: str
    new_mean_auc: float
    champion_version: str | None = None
    champion_mean_auc: float | None = None
    floor: str = "none"  # the floor rule applied (describe_floor)
    floor_passed: bool | None = None  # None: the floor was not checked
    evidence: str | None = None  # check_evidence's why (None: not checked)

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "new_mean_auc": self.new_mean_auc,
            "champion_version": self.champion_version,
            "champion_mean_auc": self.champion_mean_auc,
            "floor": self.floor,
            "floor_passed": self.floor_passed,
            "evidence": self.evidence,
        }


def describe_floor(floor: str | float) -> str:
    """The floor rule in words: ``val_mean_auc_ci_low > 0.5``, ``val_mean_auc >= 0.6`` or ``none``."""
    if floor == "ci_low":
        return f"val_mean_auc_ci_low > {CHANCE_AUC}"
    if floor == "none":
        return "none"
    return f"val_mean_auc >= {float(floor):g}"


def check_floor(
    floor: str | float, mean_auc: float, mean_auc_ci: Sequence[float | None] | None = None
) -> tuple[bool, str]:
    """(passed, why) for the promotion floor (``evaluate.promote_floor``).

    ``"ci_low"``: the lower end of the mean-AUC bootstrap CI must be above 0.5 (a missing or non-finite
    CI fails: the floor cannot be shown to hold); a number: the mean AUC must be at least that;
    ``"none"``: always passes."""
    if floor == "none":
        return True, "no floor"
    if floor == "ci_low":
        low = None if not mean_auc_ci else mean_auc_ci[0]
        if low is None or not math.isfinite(float(low)):
            return False, "no finite bootstrap CI of the mean AUC (evaluate.bootstrap: 0, or too few test studies)"
        if float(low) > CHANCE_AUC:
            return True, f"val mean AUC CI low {float(low):.4f} > {CHANCE_AUC}"
        return False, f"val mean AUC CI low {float(low):.4f} <= {CHANCE_AUC} (not above chance)"
    bar = float(floor)
    if math.isfinite(mean_auc) and mean_auc >= bar:
        return True, f"val mean AUC {mean_auc:.4f} >= {bar:g}"
    return False, f"val mean AUC {mean_auc:.4f} < {bar:g}"


@dataclass(frozen=True)
class EvidenceFloor:
    """How much data a promotion needs (``evaluate.min_*``): a CI on 2 studies or a mean over 3 labels is
    noise, and the gate must say so rather than promote it."""

    min_studies: int = 20
    min_label_positives: int = 3
    min_label_negatives: int = 3
    min_scored_labels: int = 8

    @classmethod
    def from_config(cls, evaluate: Any) -> EvidenceFloor:
        return cls(
            int(evaluate.min_studies),
            int(evaluate.min_label_positives),
            int(evaluate.min_label_negatives),
            int(evaluate.min_scored_labels),
        )


def powered_labels(report: dict[str, Any], floor: EvidenceFloor) -> list[str]:
    """Labels with at least ``min_label_positives`` positives and ``min_label_negatives`` negatives among
    the known labels of both the validation and the test split (``score_splits``' per-label counts)."""
    powered = []
    for label, entry in report.get("labels", {}).items():
        val_pos, test_pos = int(entry.get("n_val_positive", 0)), int(entry.get("n_test_positive", 0))
        val_neg, test_neg = int(entry.get("n_val", 0)) - val_pos, int(entry.get("n_test", 0)) - test_pos
        if min(val_pos, test_pos) >= floor.min_label_positives and min(val_neg, test_neg) >= floor.min_label_negatives:
            powered.append(label)
    return powered


def check_evidence(report: dict[str, Any], floor: EvidenceFloor) -> tuple[bool, str]:
    """(enough, why): the evaluation has ``min_studies`` studies in val and in test, and at least
    ``min_scored_labels`` (capped at the number of labels) labels with enough positives and negatives in
    both. ``why`` names the key that would have to change."""
    n_val, n_test = int(report.get("n_val", 0)), int(report.get("n_test", 0))
    if min(n_val, n_test) < floor.min_studies:
        return False, (
            f"{n_val} val / {n_test} test studies, fewer than evaluate.min_studies ({floor.min_studies}) in a split: "
            "add studies (or change split.*) before a model can be promoted"
        )
    powered = powered_labels(report, floor)
    needed = min(floor.min_scored_labels, len(report.get("labels", {})))
    if len(powered) < max(needed, 1):
        return False, (
            f"{len(powered)} labels have >= {floor.min_label_positives} positives and >= {floor.min_label_negatives} "
            f"negatives in both val and test, fewer than evaluate.min_scored_labels ({needed}) "
            "(evaluate.min_label_positives / min_label_negatives)"
        )
    return True, f"{n_val} val / {n_test} test studies, {len(powered)} labels with enough positives and negatives"


def _auc_tag(eval_hash: str) -> str:  # val_mean_auc.<hash>: tags written before selection moved to val never match
    return f"{MEAN_AUC_TAG}.{eval_hash[:16]}"


def record_evaluation(
    tracking_uri: str,
    name: str,
    version: str,
    mean_auc: float,
    eval_hash: str,
    mean_auc_ci: Sequence[float | None] | None = None,
) -> None:
    """Tag a model version with the evaluation-data hash, its mean AUC on that data (and its CI)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_model_version_tag(name, version, EVAL_HASH_TAG, eval_hash)
    client.set_model_version_tag(name, version, MEAN_AUC_TAG, repr(float(mean_auc)))
    client.set_model_version_tag(name, version, _auc_tag(eval_hash), repr(float(mean_auc)))
    bounds = [float(bound) for bound in mean_auc_ci or () if bound is not None]
    if len(bounds) == 2:
        client.set_model_version_tag(name, version, MEAN_AUC_CI_TAG, json.dumps(bounds))


def record_test_score(
    tracking_uri: str, name: str, version: str, mean_auc: float, mean_auc_ci: Sequence[float | None] | None = None
) -> None:
    """Tag the version with its test mean AUC (and CI): reported with the model, never compared."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_model_version_tag(name, version, TEST_MEAN_AUC_TAG, repr(float(mean_auc)))
    bounds = [float(bound) for bound in mean_auc_ci or () if bound is not None]
    if len(bounds) == 2:
        client.set_model_version_tag(name, version, TEST_MEAN_AUC_CI_TAG, json.dumps(bounds))


def record_decision(tracking_uri: str, name: str, version: str, decision: PromotionDecision) -> None:
    """Tag the model version with the gate's decision (``promoted``, ``promotion_reason``)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    client.set_model_version_tag(name, version, PROMOTED_TAG, str(decision.promoted).lower())
    client.set_model_version_tag(name, version, PROMOTION_REASON_TAG, decision.reason[:_REASON_LIMIT])


def promote_if_better(
    tracking_uri: str,
    name: str,
    version: str,
    mean_auc: float,
    eval_hash: str,
    *,
    alias: str = "champion",
    evaluate_version: Callable[[str], float] | None = None,
    floor: str | float = "ci_low",
    mean_auc_ci: Sequence[float | None] | None = None,
    evidence: tuple[bool, str] | None = None,
) -> PromotionDecision:
    """Point ``alias`` at ``version`` only if it clears ``floor`` and beats the current holder on the same data.

    ``mean_auc`` / ``mean_auc_ci``: the validation split's mean AUC and its CI (what is compared);
    ``evidence`` (:func:`check_evidence`): a failed check never promotes.

    The version is tagged with the evaluation (:func:`record_evaluation`) and the decision
    (:func:`record_decision`) whatever the outcome. ``floor`` (``evaluate.promote_floor``, see
    :func:`check_floor`) is checked first: a model below it is never promoted, not even the first one.
    The champion's score on ``eval_hash`` comes from its ``mean_auc.<hash>`` tag, else from
    ``evaluate_version(champion_version)`` (then recorded as a tag). Without a way to score the
    champion on the same data, nothing changes. A NaN mean AUC never promotes.
    """
    decision = _decide(
        tracking_uri,
        name,
        version,
        mean_auc,
        eval_hash,
        alias=alias,
        evaluate_version=evaluate_version,
        floor=floor,
        mean_auc_ci=mean_auc_ci,
        evidence=evidence,
    )
    record_decision(tracking_uri, name, version, decision)
    log.info("promotion of %s v%s to '%s': %s (%s)", name, version, alias, decision.promoted, decision.reason)
    return decision


def _decide(
    tracking_uri: str,
    name: str,
    version: str,
    mean_auc: float,
    eval_hash: str,
    *,
    alias: str,
    evaluate_version: Callable[[str], float] | None,
    floor: str | float,
    mean_auc_ci: Sequence[float | None] | None,
    evidence: tuple[bool, str] | None = None,
) -> PromotionDecision:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    record_evaluation(tracking_uri, name, version, mean_auc, eval_hash, mean_auc_ci)
    rule = describe_floor(floor)
    if evidence is not None:
        client.set_model_version_tag(name, version, EVIDENCE_TAG, "ok" if evidence[0] else evidence[1][:_REASON_LIMIT])
        if not evidence[0]:
            return PromotionDecision(
                False, f"not enough evidence: {evidence[1]}", mean_auc, floor=rule, evidence=evidence[1]
            )
    evidence_note = None if evidence is None else evidence[1]
    if not math.isfinite(mean_auc):
        return PromotionDecision(False, "mean AUC is not finite", mean_auc, floor=rule, evidence=evidence_note)
    try:
        champion = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        champion = None
    champion_version = None if champion is None else str(champion.version)
    if champion_version == str(version):
        return PromotionDecision(
            True, f"version {version} already holds '{alias}'", mean_auc, champion_version, mean_auc, floor=rule
        )
    passed, why = check_floor(floor, mean_auc, mean_auc_ci)
    if not passed:
        return PromotionDecision(
            False, f"below the floor ({rule}): {why}", mean_auc, champion_version, floor=rule, floor_passed=False
        )
    floor_passed = None if floor == "none" else True
    floor_note = "" if floor == "none" else f"; {why}"
    if champion is None or champion_version is None:
        client.set_registered_model_alias(name, alias, version)
        return PromotionDecision(True, f"no '{alias}' yet{floor_note}", mean_auc, floor=rule, floor_passed=floor_passed)
    champion_tag = champion.tags.get(_auc_tag(eval_hash))
    champion_auc = float(champion_tag) if champion_tag is not None else None
    if champion_auc is None and evaluate_version is not None:
        champion_auc = float(evaluate_version(champion_version))
        client.set_model_version_tag(name, champion_version, _auc_tag(eval_hash), repr(champion_auc))
    if champion_auc is None:
        return PromotionDecision(
            False,
            f"champion v{champion_version} has no score on this evaluation data",
            mean_auc,
            champion_version,
            floor=rule,
            floor_passed=floor_passed,
        )
    if math.isfinite(champion_auc) and mean_auc <= champion_auc:
        return PromotionDecision(
            False,
            f"val mean AUC {mean_auc:.4f} does not beat champion v{champion_version} ({champion_auc:.4f})",
            mean_auc,
            champion_version,
            champion_auc,
            floor=rule,
            floor_passed=floor_passed,
        )
    client.set_registered_model_alias(name, alias, version)
    return PromotionDecision(
        True,
        f"val mean AUC {mean_auc:.4f} beats champion v{champion_version} ({champion_auc:.4f}){floor_note}",
        mean_auc,
        champion_version,
        champion_auc,
        floor=rule,
        floor_passed=floor_passed,
    )
