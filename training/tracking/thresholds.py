"""Per-label decision thresholds stored as tags of a registered model version (read back by predict)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

THRESHOLDS_SCHEMA_VERSION = 1
THRESHOLD_TAG_PREFIX = "threshold."  # threshold.<label slug> = repr(float), chosen on the val split
VAL_AUC_TAG_PREFIX = "val_auc."  # val_auc.<label slug> = repr(float) (tag absent: val AUC undefined)
THRESHOLDS_METHOD_TAG = "thresholds.method"  # evaluate.threshold_method (youden | f1)
THRESHOLDS_SCHEMA_TAG = "thresholds.schema_version"
THRESHOLDS_HASH_TAG = "thresholds.eval_data_hash"  # the evaluation data the thresholds were chosen on
THRESHOLDS_ARTIFACT_TAG = "thresholds.artifact"  # runs:/<eval run>/thresholds.json (the full table)
THRESHOLDS_EVAL_MODE_TAG = "thresholds.eval_mode"  # evaluate.eval_mode: the crops the thresholds were chosen on
THRESHOLDS_NEGATIVE_RULE_TAG = "thresholds.negative_rule"  # the zero-shot negative rule they were chosen with


def label_slug(label: str) -> str:
    """'Lung nodule' -> 'lung_nodule' (the tag-key form of a label)."""
    import re

    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def store_thresholds(
    tracking_uri: str,
    name: str,
    version: str,
    table: Mapping[str, Any],
    *,
    eval_data_hash: str | None = None,
    artifact_uri: str | None = None,
) -> None:
    """Tag a registered model version with its per-label decision thresholds and val AUCs.

    ``table`` is the ``thresholds.json`` content (``{"schema_version", "model", "labels": {label:
    {"anatomy", "threshold", "val_auc", "method"}}}``). Tags, one per label and value, so a version's
    thresholds are read without downloading anything: ``threshold.<slug>``, ``val_auc.<slug>`` (absent
    when undefined), ``thresholds.method``, ``thresholds.schema_version``, ``thresholds.eval_data_hash``
    and ``thresholds.artifact`` (where the full JSON was logged). Tags of labels no longer in the table
    (an earlier evaluation) are removed: a version carries one evaluation's thresholds.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    labels: Mapping[str, Mapping[str, Any]] = table.get("labels", {})
    keep = set()
    methods = set()
    for label, entry in labels.items():
        slug = label_slug(label)
        keep.add(THRESHOLD_TAG_PREFIX + slug)
        client.set_model_version_tag(name, version, THRESHOLD_TAG_PREFIX + slug, repr(float(entry["threshold"])))
        auc = entry.get("val_auc")
        if auc is not None and math.isfinite(float(auc)):
            keep.add(VAL_AUC_TAG_PREFIX + slug)
            client.set_model_version_tag(name, version, VAL_AUC_TAG_PREFIX + slug, repr(float(auc)))
        methods.add(str(entry.get("method", "")))
    for key in client.get_model_version(name, version).tags:
        if key.startswith((THRESHOLD_TAG_PREFIX, VAL_AUC_TAG_PREFIX)) and key not in keep:
            client.delete_model_version_tag(name, version, key)
    client.set_model_version_tag(name, version, THRESHOLDS_METHOD_TAG, ",".join(sorted(methods)) or "none")
    client.set_model_version_tag(
        name, version, THRESHOLDS_SCHEMA_TAG, str(table.get("schema_version", THRESHOLDS_SCHEMA_VERSION))
    )
    if eval_data_hash:
        client.set_model_version_tag(name, version, THRESHOLDS_HASH_TAG, eval_data_hash)
    if artifact_uri:
        client.set_model_version_tag(name, version, THRESHOLDS_ARTIFACT_TAG, artifact_uri)
    if table.get("eval_mode"):
        client.set_model_version_tag(name, version, THRESHOLDS_EVAL_MODE_TAG, str(table["eval_mode"]))
    if table.get("negative_rule"):
        client.set_model_version_tag(name, version, THRESHOLDS_NEGATIVE_RULE_TAG, str(table["negative_rule"]))


def read_thresholds(
    tracking_uri: str, name: str, version: str, labels: Mapping[str, str] | None = None
) -> dict[str, Any] | None:
    """The thresholds stored on a model version, as a ``thresholds.json`` table; None when none are.

    ``labels`` (label -> anatomy, the model's scored labels) names the labels to look up (tags hold
    slugs); without it the labels are given by their slugs and anatomy is None.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    tags = client.get_model_version(name, version).tags
    if THRESHOLDS_SCHEMA_TAG not in tags:
        return None
    method = tags.get(THRESHOLDS_METHOD_TAG)
    wanted = (
        dict(labels)
        if labels is not None
        else {key[len(THRESHOLD_TAG_PREFIX) :]: None for key in tags if key.startswith(THRESHOLD_TAG_PREFIX)}
    )
    out: dict[str, Any] = {}
    for label, anatomy in wanted.items():
        slug = label_slug(label)
        raw = tags.get(THRESHOLD_TAG_PREFIX + slug)
        if raw is None:
            continue
        auc = tags.get(VAL_AUC_TAG_PREFIX + slug)
        out[label] = {
            "anatomy": anatomy,
            "threshold": float(raw),
            "val_auc": float(auc) if auc is not None else None,
            "method": method,
        }
    return {
        "schema_version": int(tags[THRESHOLDS_SCHEMA_TAG]),
        "model": {"name": name, "version": str(version)},
        "labels": out,
        "eval_data_hash": tags.get(THRESHOLDS_HASH_TAG),
        "artifact": tags.get(THRESHOLDS_ARTIFACT_TAG),
        "eval_mode": tags.get(THRESHOLDS_EVAL_MODE_TAG),
        "negative_rule": tags.get(THRESHOLDS_NEGATIVE_RULE_TAG),
    }
