"""Zero-shot evaluation: metrics of the per-label zero-shot probabilities on the val / test splits.

The probabilities come from :mod:`training.models.zero_shot` (prompt pairs scored against the anatomy
embeddings; the global embedding for the CLIP baseline and as a recorded fallback for an absent
anatomy). Unknown labels (-1) are left out per label.

Two protocols are reported, never mixed:

* ``val_threshold`` (the one to quote): per-label thresholds chosen on the validation split (Youden's J or
  best F1, ``evaluate.threshold_method``) and applied to the test split;
* ``fvlm_protocol``: the public fVLM / CT-CLIP code's way, a Youden threshold chosen on the test split
  itself (optimistic; reported for comparison with published numbers only).

The val-chosen threshold of every label whose val split has both classes is also the decision threshold
``fvlm predict`` applies: :func:`threshold_table` -> ``<out>/thresholds.json`` and, for a registered model
version, its tags (:func:`training.tracking.thresholds.store_thresholds`; docs/predict.md).

AUC does not depend on a threshold. Bootstrap percentile intervals (``evaluate.bootstrap`` resamples of
test studies) are given for per-label AUC and the mean AUC.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from training.metrics import binary_metrics, bootstrap_auc, choose_threshold, roc_auc, youden_threshold
from training.models.zero_shot import (
    NEGATIVE_RULES,
    Embeddings,
    ZeroShotSpec,
    embed_batches,
    load_zero_shot_model,
    prompt_embeddings,
    zero_shot_probabilities,
    zero_shot_spec,
)

if TYPE_CHECKING:
    from core.config import EvaluateConfig
    from training.evaluation.job import EvaluateJob
    from training.models.model import FVLM

log = logging.getLogger(__name__)
METRIC_NAMES = ("auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "f1_weighted")


# ------------------------------------------------------------------------------------ metrics
def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(sum(finite) / len(finite)) if finite else float("nan")


def score_splits(
    labels: Sequence[str],
    val_truth: np.ndarray,
    val_scores: np.ndarray,
    test_truth: np.ndarray,
    test_scores: np.ndarray,
    *,
    threshold_method: str = "youden",
    bootstrap: int = 0,
    ci_level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-label and mean metrics. ``*_truth`` (N, S) in {1, 0, -1 unknown}; ``*_scores`` (N, S)."""
    per_label: dict[str, Any] = {}
    skipped: list[str] = []
    for s, label in enumerate(labels):
        val_known = val_truth[:, s] >= 0
        test_known = test_truth[:, s] >= 0
        y_val, p_val = val_truth[val_known, s], val_scores[val_known, s]
        y_test, p_test = test_truth[test_known, s], test_scores[test_known, s]
        entry: dict[str, Any] = {
            "n_val": int(y_val.size),
            "n_test": int(y_test.size),
            "n_test_positive": int((y_test == 1).sum()),
            "n_val_positive": int((y_val == 1).sum()),
        }
        val_two_classes = bool(y_val.size and len(np.unique(y_val)) == 2)
        # the decision threshold predict uses: chosen on val whatever the test split holds
        entry["val_auc"] = roc_auc(y_val, p_val) if val_two_classes else None
        entry["decision_threshold"] = (
            choose_threshold(y_val, p_val, threshold_method)  # type: ignore[arg-type]
            if val_two_classes
            else None
        )
        if y_test.size == 0 or len(np.unique(y_test)) < 2:
            skipped.append(label)
            entry["skipped"] = "test split has a single class (AUC undefined)"
            per_label[label] = entry
            continue
        if val_two_classes:
            threshold = float(entry["decision_threshold"])
            entry["threshold_source"] = f"val ({threshold_method})"
        else:
            threshold = 0.5
            entry["threshold_source"] = "0.5 (validation split has a single class)"
        entry["val_threshold"] = binary_metrics(y_test, p_test, threshold).as_dict()
        entry["fvlm_protocol"] = binary_metrics(y_test, p_test, youden_threshold(y_test, p_test)).as_dict()
        per_label[label] = entry
    scored = [label for label in labels if label not in skipped]
    report: dict[str, Any] = {
        "threshold_method": threshold_method,
        "n_val": int(val_truth.shape[0]),
        "n_test": int(test_truth.shape[0]),
        "labels": per_label,
        "scored_labels": scored,
        "skipped_labels": skipped,
        "mean_val_threshold": {m: _mean(per_label[x]["val_threshold"][m] for x in scored) for m in METRIC_NAMES},
        "mean_fvlm_protocol": {m: _mean(per_label[x]["fvlm_protocol"][m] for x in scored) for m in METRIC_NAMES},
    }
    report["mean_auc"] = report["mean_val_threshold"]["auc"]
    # the validation split's mean AUC: what the promotion gate selects on (test is reported, never compared)
    val_scored = [label for label in labels if per_label[label]["val_auc"] is not None]
    report["val_mean_auc"] = _mean(per_label[label]["val_auc"] for label in val_scored)
    if bootstrap > 0 and val_scored:
        columns = [labels.index(label) for label in val_scored]
        val_intervals = bootstrap_auc(
            val_truth[:, columns], val_scores[:, columns], bootstrap, level=ci_level, seed=seed
        )
        report["val_mean_auc_ci"] = list(val_intervals["mean"])
    if bootstrap > 0 and scored:
        columns = [labels.index(label) for label in scored]
        intervals = bootstrap_auc(test_truth[:, columns], test_scores[:, columns], bootstrap, level=ci_level, seed=seed)
        for j, label in enumerate(scored):
            per_label[label]["auc_ci"] = list(intervals[f"label_{j}"])
        report["mean_auc_ci"] = list(intervals["mean"])
        report["bootstrap"] = {"resamples": bootstrap, "level": ci_level, "seed": seed}
    return report


def plot_roc_curves(
    labels: Sequence[str], truth: np.ndarray, scores: np.ndarray, out_dir: str | Path, title: str = "test"
) -> list[Path]:
    """ROC PNGs (matplotlib Agg): one per scored label + ``roc_all.png`` grid, and the curves as data for
    ``dvc plots`` (``<out_dir>_points/roc_<label>.csv``: fpr, tpr). Returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from core.io import atomic_path, atomic_write_text
    from training.metrics import roc_auc, roc_curve

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    curves = []
    for s, label in enumerate(labels):
        known = truth[:, s] >= 0
        y, p = truth[known, s], scores[known, s]
        if y.size == 0 or len(np.unique(y)) < 2:
            continue
        fpr, tpr, _ = roc_curve(y, p)
        curves.append((label, fpr, tpr, roc_auc(y, p)))
    points = folder.with_name(f"{folder.name}_points")
    for label, fpr, tpr, _auc in curves:
        csv_lines = "".join(f"{x:.6g},{y:.6g}\n" for x, y in zip(fpr.tolist(), tpr.tolist(), strict=True))
        target = points / f"roc_{_slug(label)}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, "fpr,tpr\n" + csv_lines)
    for label, fpr, tpr, auc in curves:
        figure, axis = plt.subplots(figsize=(4, 4), dpi=80)
        axis.plot(fpr, tpr, lw=2, label=f"AUC {auc:.3f}")
        axis.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        axis.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"{label} ({title})", xlim=(0, 1), ylim=(0, 1))
        axis.legend(loc="lower right")
        target = folder / f"roc_{_slug(label)}.png"
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format="png", bbox_inches="tight")
        plt.close(figure)
        written.append(target)
    if curves:
        columns = 4
        rows = math.ceil(len(curves) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), dpi=70, squeeze=False)
        for axis in axes.flat:
            axis.set_visible(False)
        for axis, (label, fpr, tpr, auc) in zip(axes.flat, curves, strict=False):
            axis.set_visible(True)
            axis.plot(fpr, tpr, lw=1.5)
            axis.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
            axis.set_title(f"{label}\nAUC {auc:.3f}", fontsize=8)
            axis.tick_params(labelsize=6)
        figure.tight_layout()
        target = folder / "roc_all.png"
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format="png")
        plt.close(figure)
        written.append(target)
    return written


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


# ------------------------------------------------------------------------------------ one model
@dataclass
class SplitScores:
    truth: np.ndarray  # (N, S) 1/0/-1 of the scored labels
    scores: np.ndarray  # (N, S)
    used_global: np.ndarray  # (N, S)
    study_ids: list[str]


def score_model_on(
    model: FVLM, spec: ZeroShotSpec, batches: Iterable[Mapping[str, Any]], description: str = "evaluate"
) -> SplitScores:
    """Zero-shot scores of every study in ``batches`` (the studies scored are counted on a progress bar)."""
    return score_embeddings(model, spec, embed_batches(model, counted_studies(batches, description)))


def counted_studies(batches: Iterable[Mapping[str, Any]], description: str) -> Iterator[Mapping[str, Any]]:
    """``batches`` on a progress bar that counts studies as their crops are embedded, out of the split's
    study count (the shard reader's ``num_rows``: one row per study): a DataLoader over the iterable shard
    reader has no length, so counting batches showed ``1/?``."""
    from core.progress import progress_of_keys

    total = getattr(getattr(batches, "dataset", None), "num_rows", None)
    total = total if isinstance(total, int) else None  # a plain list of batches: its studies, counted up front
    return progress_of_keys(batches, description, "studies", lambda batch: batch["study_id"], total=total)


def score_embeddings(model: FVLM, spec: ZeroShotSpec, embeddings: Embeddings) -> SplitScores:
    """Zero-shot scores of embedded studies under ``spec`` (its prompts and negative rule)."""
    prompts = prompt_embeddings(model, spec)
    scale = float(model.logit_scale.detach().cpu())
    scores, used_global = zero_shot_probabilities(embeddings, prompts, spec, scale)
    truth = embeddings.labels[:, list(spec.label_columns)].astype(np.int8)
    return SplitScores(truth, scores, used_global, embeddings.study_ids)


def split_mean_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Mean AUC over the labels (columns) whose known truth holds both classes; NaN when none does."""
    aucs = []
    for s in range(truth.shape[1]):
        known = truth[:, s] >= 0
        if len(np.unique(truth[known, s])) == 2:
            aucs.append(roc_auc(truth[known, s], scores[known, s]))
    return _mean(aucs)


def choose_negative_rule(
    model: FVLM, spec: ZeroShotSpec, val: Embeddings, requested: str
) -> tuple[ZeroShotSpec, dict[str, Any]]:
    """The spec scored with ``requested`` (``plain`` / ``with_normal``), or for ``auto`` with the rule
    of higher *validation* mean AUC (ties: ``plain``, the fVLM pair). Test is never looked at here."""
    if requested != "auto":
        return spec.with_negative_rule(requested), {"rule": requested, "requested": requested, "chosen_on": None}
    val_auc = {}
    for rule in NEGATIVE_RULES:
        scored = score_embeddings(model, spec.with_negative_rule(rule), val)
        val_auc[rule] = split_mean_auc(scored.truth, scored.scores)
    finite = {rule: auc for rule, auc in val_auc.items() if math.isfinite(auc)}
    chosen = max(finite, key=lambda rule: (finite[rule], rule == "plain")) if finite else "plain"
    return spec.with_negative_rule(chosen), {
        "rule": chosen,
        "requested": "auto",
        "chosen_on": "val",
        "val_mean_auc": val_auc,
    }


def prompt_set_spread(model: FVLM, spec: ZeroShotSpec, val: Embeddings, test: Embeddings) -> dict[str, Any]:
    """Mean AUC per prompt set of ``core/prompt_sets.yaml`` (same embeddings, same negative rule) and the
    spread across sets: a result that holds for one wording only is a prompt artefact."""
    from core.anatomy_sets import PROMPT_SETS_FILE, load_prompt_sets

    sets: dict[str, Any] = {}
    for name, pairs in load_prompt_sets().items():
        worded = spec.with_prompts(pairs)
        val_scored, test_scored = score_embeddings(model, worded, val), score_embeddings(model, worded, test)
        sets[name] = {
            "test_mean_auc": split_mean_auc(test_scored.truth, test_scored.scores),
            "val_mean_auc": split_mean_auc(val_scored.truth, val_scored.scores),
        }
    test_aucs = [entry["test_mean_auc"] for entry in sets.values() if math.isfinite(entry["test_mean_auc"])]
    return {
        "source": PROMPT_SETS_FILE.name,
        "negative_rule": spec.negative_rule,
        "sets": sets,
        "test_mean_auc_mean": _mean(test_aucs),
        "test_mean_auc_min": min(test_aucs) if test_aucs else float("nan"),
        "test_mean_auc_max": max(test_aucs) if test_aucs else float("nan"),
    }


def evaluate_model(
    model: FVLM,
    spec: ZeroShotSpec,
    val_batches: Iterable[Mapping[str, Any]],
    test_batches: Iterable[Mapping[str, Any]],
    eval_cfg: EvaluateConfig,
    *,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Full report for one model: metrics (both protocols), CIs, fallback counts; ROC PNGs in out_dir/roc.

    The negative rule is ``evaluate.negative_rule`` (``auto``: chosen on val, :func:`choose_negative_rule`;
    ``report["negative_rule"]``); the spread over the prompt sets is ``report["prompt_sets"]``.
    """
    val_embeddings = embed_batches(model, counted_studies(val_batches, "evaluate: val"))
    test_embeddings = embed_batches(model, counted_studies(test_batches, "evaluate: test"))
    spec, rule = choose_negative_rule(model, spec, val_embeddings, eval_cfg.negative_rule)
    val = score_embeddings(model, spec, val_embeddings)
    test = score_embeddings(model, spec, test_embeddings)
    report = score_splits(
        spec.labels,
        val.truth,
        val.scores,
        test.truth,
        test.scores,
        threshold_method=eval_cfg.threshold_method,
        bootstrap=eval_cfg.bootstrap,
        ci_level=eval_cfg.ci_level,
        seed=eval_cfg.seed,
    )
    report["embedding"] = "global" if spec.use_global else "anatomy"
    report["negative_rule"] = rule
    report["prompt_sets"] = prompt_set_spread(model, spec, val_embeddings, test_embeddings)
    report["anatomy_absent_fallbacks_test"] = (
        {label: int(test.used_global[:, s].sum()) for s, label in enumerate(spec.labels)} if not spec.use_global else {}
    )
    if out_dir is not None:
        report["roc_pngs"] = [
            str(p) for p in plot_roc_curves(spec.labels, test.truth, test.scores, Path(out_dir) / "roc")
        ]
        write_study_scores(Path(out_dir) / STUDY_SCORES_FILE, spec.labels, val, test)
    return report


STUDY_SCORES_FILE = "study_scores.npz"


def write_study_scores(path: Path, labels: Sequence[str], val: SplitScores, test: SplitScores) -> None:
    """Per-study truth and scores of both splits (pseudonymous study ids): what a study-level bootstrap
    across runs (experiments/ablation.py) resamples; the report only holds each run's own interval."""
    from core.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(
            handle,
            labels=np.array(list(labels)),
            val_truth=val.truth,
            val_scores=val.scores,
            val_ids=np.array(val.study_ids),
            test_truth=test.truth,
            test_scores=test.scores,
            test_ids=np.array(test.study_ids),
        )


def data_hash(paths: Iterable[str | Path], extra: dict[str, Any] | None = None) -> str:
    """Evaluation-data hash: the evaluated files' contents (order-free) + the protocol settings."""
    from core.io import sha256_files

    digest = hashlib.sha256(sha256_files(sorted(str(p) for p in paths)).encode())
    digest.update(json.dumps(extra or {}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """MLflow metric dict: eval/<protocol>/<metric>[/<label>]."""
    out: dict[str, float] = {}
    for protocol in ("val_threshold", "fvlm_protocol"):
        for metric, value in report[f"mean_{protocol}"].items():
            out[f"eval/{protocol}/{metric}"] = value
        for label in report["scored_labels"]:
            for metric in METRIC_NAMES + ("threshold",):
                out[f"eval/{protocol}/{metric}/{label}"] = report["labels"][label][protocol][metric]
    if "mean_auc_ci" in report:
        out["eval/mean_auc_ci_low"], out["eval/mean_auc_ci_high"] = report["mean_auc_ci"]
    out["eval/mean_auc"] = report["mean_auc"]
    return out


# ------------------------------------------------------------------------------------ thresholds
THRESHOLDS_FILE = "thresholds.json"


def threshold_table(
    report: Mapping[str, Any],
    spec: ZeroShotSpec,
    *,
    name: str | None,
    version: str | None,
    prompts: str = "model",
    eval_mode: str | None = None,
) -> dict[str, Any]:
    """``thresholds.json``: per-label decision threshold (chosen on val) and val AUC, schema version 1.

    ``{"schema_version": 1, "model": {"name", "version"}, "labels": {label: {"anatomy", "threshold",
    "val_auc", "method"}}, "unthresholded": {label: reason}, "prompts": ...}``. A label whose val split
    holds a single class gets no threshold (listed under ``unthresholded``): predict then gives its
    probability without a call rather than a call at an arbitrary 0.5.
    """
    from training.tracking.thresholds import THRESHOLDS_SCHEMA_VERSION

    method = str(report["threshold_method"])
    labels: dict[str, Any] = {}
    unthresholded: dict[str, str] = {}
    for s, label in enumerate(spec.labels):
        entry = report["labels"].get(label, {})
        threshold = entry.get("decision_threshold")
        if threshold is None or not math.isfinite(float(threshold)):
            unthresholded[label] = "validation split has a single class for this label"
            continue
        auc = entry.get("val_auc")
        labels[label] = {
            "anatomy": spec.anatomy_names[spec.anatomy_index[s]],
            "threshold": float(threshold),
            "val_auc": float(auc) if auc is not None and math.isfinite(float(auc)) else None,
            "method": method,
        }
    return {
        "schema_version": THRESHOLDS_SCHEMA_VERSION,
        "model": {"name": name, "version": version},
        "labels": labels,
        "unthresholded": unthresholded,
        "prompts": prompts,
        "eval_mode": eval_mode,  # the crops the thresholds were chosen on (predict scores the same)
        # the zero-shot negative rule the thresholds were chosen with (predict scores the same)
        "negative_rule": (report.get("negative_rule") or {}).get("rule", spec.negative_rule),
        "n_val": int(report["n_val"]),
    }


# ------------------------------------------------------------------------------------ the stage
def run_evaluation(
    job: EvaluateJob,
    val_batches: Callable[[], Iterable[dict[str, Any]]],
    test_batches: Callable[[], Iterable[dict[str, Any]]],
    *,
    eval_data_hash: str,
    train_run_id: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``job.model_ref`` (local dir or MLflow URI) on the given batches, log to MLflow, write
    ``job.out_dir`` and ``job.metrics_path``, promote when ``job.promote``. The stage's entry is
    :func:`run_evaluate` (it reads the shards and hashes the evaluation data).

    ``*_batches`` are factories (the champion may have to be scored on the same data too). With
    tracking on, the metrics go to an evaluation run linked to the training run (``mlflow.parentRunId``
    and ``train_run_id`` tags); when the model is a registered version, the evaluation-data hash and
    the mean AUC are tagged on it and ``evaluate.promote_alias`` moves to it only if it clears
    ``evaluate.promote_floor`` and beats the current holder on the same data
    (:func:`training.tracking.gate.promote_if_better`). ``report["promotion"]`` (and the metrics
    file's ``promoted`` / ``promotion_reason``) says what happened and why, also when the gate did not run.
    The per-label decision thresholds (chosen on val) and val AUCs go to ``out_dir/thresholds.json``,
    the evaluation run's artifacts and the registered version's tags.
    """
    from training.tracking.gate import (
        PROMOTED_TAG,
        PROMOTION_REASON_TAG,
        EvidenceFloor,
        check_evidence,
        promote_if_better,
        record_evaluation,
        record_test_score,
    )
    from training.tracking.registry import model_version_for_uri, resolve_model_dir
    from training.tracking.runs import make_tracker, run_name_for, tracking_uri_for
    from training.tracking.thresholds import store_thresholds

    model_ref, promote, metrics_path = job.model_ref, job.promote, job.metrics_path
    out = Path(job.out_dir)
    tracking_uri = tracking_uri_for(job.root, job.tracking.mlflow_tracking_uri)
    uses_mlflow = job.tracking.enabled
    download_root = out / "downloaded_models"
    model_dir = resolve_model_dir(model_ref, tracking_uri if uses_mlflow else None, download_root)
    registered = model_version_for_uri(tracking_uri, str(model_ref)) if uses_mlflow else None
    bundle = load_zero_shot_model(model_dir)
    spec = bundle.spec
    if job.prompts_path is not None:
        spec = zero_shot_spec(
            spec.anatomy_set,
            spec.anatomy_names,
            use_global=spec.use_global,
            prompts_file=job.prompts_path,
        )
    report = evaluate_model(bundle.model, spec, val_batches(), test_batches(), job.evaluate, out_dir=out)
    enough, evidence_why = check_evidence(report, EvidenceFloor.from_config(job.evaluate))
    report["evidence"] = {"enough": enough, "why": evidence_why}
    thresholds = threshold_table(
        report,
        spec,
        name=registered[0] if registered else None,
        version=registered[1] if registered else None,
        prompts=str(job.evaluate.prompts_file) if job.evaluate.prompts_file else "model",
        eval_mode=job.evaluate.eval_mode,
    )
    report.update(
        {
            "model": str(model_ref),
            "eval_data_hash": eval_data_hash,
            "registered_model": registered[0] if registered else None,
            "model_version": registered[1] if registered else None,
        }
    )

    run_id = None
    if uses_mlflow:
        if registered and train_run_id is None:
            import mlflow

            version = mlflow.MlflowClient(tracking_uri=tracking_uri).get_model_version(*registered)
            train_run_id = version.run_id
        tracker = make_tracker(
            job.tracking,
            job.root,
            is_main_process=True,
            run_name=run_name_for("eval", f"v{registered[1]}" if registered else "local"),
        )
        run_id = tracker.run_id
        try:
            tracker.set_tags(
                {
                    "stage": "evaluate",
                    "eval_data_hash": eval_data_hash,
                    "model": str(model_ref),
                    "train_run_id": train_run_id,
                    "mlflow.parentRunId": train_run_id,
                }
            )
            tracker.log_params({"evaluate." + k: v for k, v in job.evaluate.model_dump().items()})
            tracker.log_metrics(flat_metrics(report))
            for png in report.get("roc_pngs", []):
                tracker.log_artifact(png, "roc")
            if registered and promote:

                def champion_auc(version: str) -> float:
                    champion_dir = resolve_model_dir(
                        f"models:/{registered[0]}/{version}", tracking_uri, download_root / f"v{version}"
                    )
                    champion = load_zero_shot_model(champion_dir)
                    scored = evaluate_model(champion.model, spec, val_batches(), test_batches(), job.evaluate)
                    return float(scored["val_mean_auc"])  # the gate compares validation scores only

                decision = promote_if_better(
                    tracking_uri,
                    registered[0],
                    registered[1],
                    float(report["val_mean_auc"]),
                    eval_data_hash,
                    alias=job.evaluate.promote_alias,
                    evaluate_version=champion_auc,
                    floor=job.evaluate.promote_floor,
                    mean_auc_ci=report.get("val_mean_auc_ci"),
                    evidence=(enough, evidence_why),
                )
                report["promotion"] = decision.as_dict()
            elif registered:
                record_evaluation(
                    tracking_uri,
                    registered[0],
                    registered[1],
                    float(report["val_mean_auc"]),
                    eval_data_hash,
                    report.get("val_mean_auc_ci"),
                )
            if registered:
                record_test_score(tracking_uri, *registered, float(report["mean_auc"]), report.get("mean_auc_ci"))
            report.setdefault("promotion", _not_promoted(report, job, registered, promote))
            tracker.set_tags(
                {
                    PROMOTED_TAG: report["promotion"]["promoted"],
                    PROMOTION_REASON_TAG: report["promotion"]["reason"][:500],
                }
            )
            tracker.log_dict(_json_safe(report), "eval_report.json")
            tracker.log_dict(thresholds, THRESHOLDS_FILE)
            if registered:  # predict reads the thresholds of the version it resolved
                store_thresholds(
                    tracking_uri,
                    *registered,
                    thresholds,
                    eval_data_hash=eval_data_hash,
                    artifact_uri=f"runs:/{run_id}/{THRESHOLDS_FILE}",
                )
        except BaseException:
            tracker.end("FAILED")
            raise
        tracker.end("FINISHED")
    report["run_id"] = run_id
    report.setdefault("promotion", _not_promoted(report, job, registered, promote))
    from core.io import atomic_write_text

    atomic_write_text(out / "eval_report.json", json.dumps(_json_safe(report), indent=2) + "\n")
    atomic_write_text(out / THRESHOLDS_FILE, json.dumps(_json_safe(thresholds), indent=2) + "\n")
    if metrics_path is not None:
        from core.metrics_files import write_metrics

        write_metrics(metrics_path, _json_safe(summary_metrics(report)), _json_safe(summary_info(report)))
    return report


def _ci_bounds(name: str, interval: Any) -> dict[str, Any]:
    """``[low, high]`` -> ``{name_low, name_high}`` (numbers DVC can compare; None without a CI)."""
    low, high = interval if isinstance(interval, (list, tuple)) and len(interval) == 2 else (None, None)
    return {f"{name}_low": low, f"{name}_high": high}


def summary_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The DVC metrics file ``metrics/eval.json``: numbers only (core/metrics_files.py) -- means of both
    protocols with their CIs, per-label AUC, split sizes, promoted / evidence_enough as 0 / 1."""
    return {
        "mean_auc": report["mean_auc"],
        **_ci_bounds("mean_auc_ci", report.get("mean_auc_ci")),
        "val_mean_auc": report.get("val_mean_auc"),  # what the promotion gate compares
        **_ci_bounds("val_mean_auc_ci", report.get("val_mean_auc_ci")),
        "evidence_enough": int(bool((report.get("evidence") or {}).get("enough"))),
        "val_threshold": report["mean_val_threshold"],
        "fvlm_protocol": report["mean_fvlm_protocol"],
        "per_label_auc": {label: report["labels"][label]["val_threshold"]["auc"] for label in report["scored_labels"]},
        "n_val": report["n_val"],
        "n_test": report["n_test"],
        "promoted": int(bool((report.get("promotion") or {}).get("promoted"))),
    }


def summary_info(report: dict[str, Any]) -> dict[str, Any]:
    """``metrics/eval.info.json``: what identifies and explains the evaluation (never compared by DVC)."""
    return {
        "evidence": str((report.get("evidence") or {}).get("why") or ""),
        "threshold_method": report["threshold_method"],
        "eval_data_hash": report["eval_data_hash"],
        "run_id": report.get("run_id"),
        "model": report.get("model"),
        "model_version": report.get("model_version"),
        "promotion_reason": str((report.get("promotion") or {}).get("reason") or "no promotion attempted"),
    }


def _not_promoted(
    report: dict[str, Any], job: EvaluateJob, registered: tuple[str, str] | None, promote: bool
) -> dict[str, Any]:
    """The promotion record of an evaluation that did not run the gate, with the reason."""
    from training.tracking.gate import PromotionDecision, describe_floor

    if not job.tracking.enabled:
        reason = "tracking disabled: no registry to promote in"
    elif registered is None:
        reason = f"{report.get('model')} is not a registered model version"
    elif not promote:
        reason = "promotion not requested (--no-promote)"
    else:
        reason = "no promotion attempted"
    floor = describe_floor(job.evaluate.promote_floor)
    return PromotionDecision(False, reason, float(report.get("val_mean_auc", float("nan"))), floor=floor).as_dict()


def _json_safe(value: Any) -> Any:
    """NaN / inf -> None so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return _json_safe(value.item())
    return value
