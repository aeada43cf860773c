"""All MLflow code of the project: runs, params, metrics, provenance tags, model logging, registry.

MLflow is imported inside functions only (``training`` imports with torch/numpy/pyarrow alone). Only
rank 0 talks to MLflow: other ranks (and ``tracking.enabled: false``) get a :class:`NullTracker` with
the same methods doing nothing.

The logged model is an MLflow *pyfunc* logged from code (:mod:`training.evaluation.pyfunc_model`, nothing
pickled) wrapping the ``FVLM.save_pretrained`` directory (artifact ``model_dir``, with ``zero_shot.json``:
labels, anatomy index, prompt pairs): ``predict(pyfunc_input(volume, mask))`` (one float32 array
(B, 2, Z, Y, X)) returns a DataFrame of zero-shot positive-class probabilities, one column per scored
label. ``resolve_model_dir`` turns ``models:/name@alias``, ``models:/name/3``, ``runs:/<id>/model`` or a
local directory into that directory for evaluate/predict.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import TrackingConfig

log = logging.getLogger(__name__)

MODEL_ARTIFACT_PATH = "model"
MODEL_DIR_ARTIFACT = "model_dir"
MODEL_CONFIG_FILE = "fvlm_config.json"  # training.models.model.CONFIG_FILE (not imported: keeps this light)
EVAL_HASH_TAG = "eval_data_hash"
MEAN_AUC_TAG = "mean_auc"
MEAN_AUC_CI_TAG = "mean_auc_ci"  # [low, high] of the last recorded evaluation
_PARAM_VALUE_LIMIT = 6000
# tags that tie a training run to what it writes and to the process writing it (abandoned-run detection)
OWNER_TAG = "fvlm.owner"
HOST_TAG = "fvlm.host"
PID_TAG = "fvlm.pid"
# pip requirements of the logged pyfunc: passing them skips MLflow's slow dependency inference (shared/docs/ENV.md)
PYFUNC_PIP_REQUIREMENTS = ("torch", "numpy", "pandas", "transformers", "tokenizers", "mlflow")


# --------------------------------------------------------------------------------------------- runs
class NullTracker:
    """Does nothing; used on ranks > 0 and when tracking is disabled."""

    run_id: str | None = None

    def log_params(self, params: Mapping[str, Any]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def set_tags(self, tags: Mapping[str, Any]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(NullTracker):
    """One MLflow run, addressed by id everywhere (the active run is thread-local, shared/docs/ENV.md)."""

    run_id: str  # always set once constructed

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        run_id: str | None = None,
        run_name: str | None = None,
        system_metrics: bool = False,
        artifact_location: str | None = None,
        owner: str | None = None,
    ) -> None:
        """``owner``: what the run writes (the training output folder). A RUNNING run of the same owner
        whose process is gone (killed, crashed machine) is marked FAILED when this one starts."""
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        if run_id is not None:
            try:
                run = self.client.get_run(run_id)
                self.run_id = run.info.run_id
                self.client.update_run(self.run_id, status="RUNNING")
            except Exception:  # noqa: BLE001 - a resumed run whose store moved: start a fresh one
                log.warning("MLflow run %s not found in %s; starting a new run", run_id, tracking_uri)
                run_id = None
        if run_id is None:
            experiment_obj = self.client.get_experiment_by_name(experiment)
            experiment_id = (
                experiment_obj.experiment_id
                if experiment_obj
                else self.client.create_experiment(experiment, artifact_location=artifact_location)
            )
            run = self.client.create_run(experiment_id, run_name=run_name)
            self.run_id = run.info.run_id
        if owner is not None:
            self._fail_abandoned_runs(run.info.experiment_id, owner)
            self.set_tags({OWNER_TAG: owner, HOST_TAG: socket.gethostname(), PID_TAG: os.getpid()})
        self._system_monitor = None
        if system_metrics:
            try:
                from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

                self._system_monitor = SystemMetricsMonitor(self.run_id)
                self._system_monitor.start()
            except Exception as error:  # noqa: BLE001 - optional (psutil may be missing)
                log.warning("system metrics unavailable: %s", error)

    def _fail_abandoned_runs(self, experiment_id: str, owner: str) -> None:
        """Mark FAILED every other RUNNING run of ``owner`` whose process no longer runs (a ``kill -9``
        leaves its run RUNNING forever otherwise); a live process of this host keeps its run."""
        quoted = owner.replace("'", "\\'")
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{OWNER_TAG}` = '{quoted}'"
        )
        for other in runs:
            if other.info.run_id == self.run_id:
                continue
            tags = other.data.tags
            if tags.get(HOST_TAG) == socket.gethostname() and _process_alive(tags.get(PID_TAG)):
                continue
            log.warning(
                "MLflow run %s of %s was left RUNNING by a process that ended: marked FAILED", other.info.run_id, owner
            )
            self.client.set_tag(
                other.info.run_id, "failure", f"process ended before the run finished; continued by run {self.run_id}"
            )
            self.client.set_terminated(other.info.run_id, status="FAILED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        items = [
            Param(key, _param_value(value))
            for key, value in params.items()
            if key not in existing  # a resumed run keeps its params (MLflow forbids changing them)
        ]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(_metric_key(key), float(value), now, step or 0)
            for key, value in metrics.items()
            if value is not None and math.isfinite(float(value))
        ]
        for start in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[start : start + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(key, str(value)) for key, value in tags.items() if value is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        target = Path(path)
        if target.is_dir():
            self.client.log_artifacts(self.run_id, str(target), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(target), artifact_path)

    def log_dict(self, payload: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, dict(payload), artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        if self._system_monitor is not None:
            try:
                self._system_monitor.finish()
            except Exception:  # noqa: BLE001
                pass
        self.client.set_terminated(self.run_id, status=status)


def _process_alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid or ""), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def make_tracker(
    tracking_cfg: TrackingConfig,
    root: str | Path,
    *,
    is_main_process: bool,
    run_id: str | None = None,
    run_name: str | None = None,
    owner: str | None = None,
) -> NullTracker:
    """MLflow tracker on rank 0 when ``tracking.enabled``; a :class:`NullTracker` otherwise."""
    if not is_main_process or not tracking_cfg.enabled:
        return NullTracker()
    artifact_location = tracking_cfg.artifact_location
    if artifact_location and "://" not in artifact_location:
        artifact_location = (Path(root) / artifact_location).resolve().as_uri()
    return MlflowTracker(
        tracking_uri_for(root, tracking_cfg.mlflow_tracking_uri),
        tracking_cfg.experiment,
        run_id=run_id,
        run_name=run_name,
        system_metrics=tracking_cfg.system_metrics,
        artifact_location=artifact_location,
        owner=owner,
    )


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return text if len(text) <= _PARAM_VALUE_LIMIT else text[: _PARAM_VALUE_LIMIT - 3] + "..."


def _metric_key(key: str) -> str:
    """MLflow keys allow alphanumerics, _ - . space / : replace anything else (label names are safe)."""
    return "".join(ch if ch.isalnum() or ch in "_-. /:" else "_" for ch in key)


# ----------------------------------------------------------------------------------------- provenance
def git_commit(root: str | Path) -> str | None:
    """HEAD commit of the repo at ``root`` (``+dirty`` when the work tree has changes), or None."""
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def optional_file_hash(path: str | Path) -> str | None:
    from core.io import sha256_file

    target = Path(path)
    return sha256_file(target) if target.is_file() else None


def provenance_tags(root: str | Path, shards_dir: str | Path | None) -> dict[str, str]:
    """git commit, dvc.lock hash and shard manifest hash (keys absent when the thing is absent)."""
    code_root = Path(__file__).resolve().parents[2]  # the commit of the code that ran (repo root)
    tags: dict[str, str | None] = {
        "git_commit": git_commit(code_root) or git_commit(root),
        "dvc_lock_sha256": optional_file_hash(Path(root) / "dvc.lock"),
    }
    if shards_dir is not None:
        tags["shard_manifest_sha256"] = optional_file_hash(Path(shards_dir) / "manifest.json")
    return {key: value for key, value in tags.items() if value}


# -------------------------------------------------------------------------------------------- models
PYFUNC_CODE_FILE = Path(__file__).with_name("pyfunc_model.py")  # models-from-code: logged as code, never pickled


def pyfunc_input(volume: Any, mask: Any) -> Any:
    """The logged pyfunc's input: volume (B,1,Z,Y,X) or (B,Z,Y,X) in [0, 1] and mask (B,Z,Y,X) 0..K stacked
    into one float32 array (B, 2, Z, Y, X) (channel 0 volume, channel 1 mask ids)."""
    import numpy as np

    volume_array = np.asarray(volume, dtype=np.float32)
    if volume_array.ndim == 4:
        volume_array = volume_array[:, None]
    mask_array = np.asarray(mask).astype(np.float32)[:, None]
    if volume_array.ndim != 5 or volume_array.shape[1] != 1 or mask_array.shape[2:] != volume_array.shape[2:]:
        raise ValueError(f"volume {volume_array.shape} and mask {mask_array.shape[:1] + mask_array.shape[2:]} differ")
    return np.concatenate([volume_array, mask_array], axis=1)


def log_model(
    tracker: NullTracker,
    model_dir: str | Path,
    *,
    crop_zyx: tuple[int, int, int],
    labels: tuple[str, ...],
    example_zyx: tuple[int, int, int] | None = None,
) -> str | None:
    """Log the model directory as a pyfunc in the tracker's run; returns the model URI (None: no tracking).

    Models-from-code (:mod:`training.evaluation.pyfunc_model`, typed ``predict``): the logged model holds
    that code file and the model directory as plain-file artifacts, no pickled Python object."""
    if not isinstance(tracker, MlflowTracker):
        return None
    import mlflow
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    mlflow.set_tracking_uri(tracker.tracking_uri)
    signature = ModelSignature(
        # (B, 2, Z, Y, X): volume and mask stacked (pyfunc_input); spatial dims free: the model
        # interpolates its position embeddings to other grids; the training grid (z, y, x) = crop_zyx is
        # recorded in the model dir's fvlm_config.json
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 2, -1, -1, -1))]),
        outputs=Schema([ColSpec("double", label) for label in labels]),
    )
    ez, ey, ex = example_zyx or crop_zyx
    example = np.zeros((1, 2, ez, ey, ex), dtype=np.float32)
    with mlflow.start_run(run_id=tracker.run_id):
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_PATH,
            python_model=str(PYFUNC_CODE_FILE),
            artifacts={MODEL_DIR_ARTIFACT: str(model_dir)},
            signature=signature,
            input_example=example if example_zyx else None,
            pip_requirements=list(PYFUNC_PIP_REQUIREMENTS),
        )
    return info.model_uri


def register_model(tracking_uri: str, model_uri: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """Register ``model_uri`` as a new version of ``name``; returns the version (string)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    version = mlflow.register_model(model_uri, name, tags=dict(tags or {}))
    return str(version.version)


def resolve_model_dir(
    model: str | Path, tracking_uri: str | None = None, download_root: str | Path | None = None
) -> Path:
    """A local ``FVLM.save_pretrained`` directory for a local path or an MLflow model URI.

    Accepted: a save_pretrained dir; a training output dir (uses ``<dir>/model``); ``models:/...``,
    ``runs:/...`` or any MLflow artifact URI of a logged pyfunc (its ``model_dir`` artifact is downloaded).
    """
    text = str(model)
    if "://" not in text and not text.startswith(("models:", "runs:")):
        local = Path(text)
        if (local / "model").is_dir() and not (local / MODEL_CONFIG_FILE).is_file():
            local = local / "model"
        if not local.is_dir():
            raise FileNotFoundError(f"{local}: no such model directory")
        return local
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    target = None if download_root is None else str(download_root)
    if target is not None:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
        target = str(Path(target) / safe)
        Path(target).mkdir(parents=True, exist_ok=True)
    local_root = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=target))
    # pyfunc artifacts keep the logged folder's own name under artifacts/ (training logs "model")
    found = sorted(local_root.rglob(MODEL_CONFIG_FILE))
    if not found:
        raise FileNotFoundError(f"{text}: the logged model holds no fVLM model directory ({MODEL_CONFIG_FILE})")
    return found[0].parent


def model_version_for_uri(tracking_uri: str, model_uri: str) -> tuple[str, str] | None:
    """(name, version) for ``models:/name/N`` or ``models:/name@alias``; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    body = model_uri[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = body.partition("/")
    return name, version


# ------------------------------------------------------------------------------------------ promotion
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

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "new_mean_auc": self.new_mean_auc,
            "champion_version": self.champion_version,
            "champion_mean_auc": self.champion_mean_auc,
            "floor": self.floor,
            "floor_passed": self.floor_passed,
        }


def describe_floor(floor: str | float) -> str:
    """The floor rule in words: ``mean_auc_ci_low > 0.5``, ``mean_auc >= 0.6`` or ``none``."""
    if floor == "ci_low":
        return f"mean_auc_ci_low > {CHANCE_AUC}"
    if floor == "none":
        return "none"
    return f"mean_auc >= {float(floor):g}"


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
            return True, f"mean AUC CI low {float(low):.4f} > {CHANCE_AUC}"
        return False, f"mean AUC CI low {float(low):.4f} <= {CHANCE_AUC} (not above chance)"
    bar = float(floor)
    if math.isfinite(mean_auc) and mean_auc >= bar:
        return True, f"mean AUC {mean_auc:.4f} >= {bar:g}"
    return False, f"mean AUC {mean_auc:.4f} < {bar:g}"


def _auc_tag(eval_hash: str) -> str:
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
) -> PromotionDecision:
    """Point ``alias`` at ``version`` only if it clears ``floor`` and beats the current holder on the same data.

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
) -> PromotionDecision:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    record_evaluation(tracking_uri, name, version, mean_auc, eval_hash, mean_auc_ci)
    rule = describe_floor(floor)
    if not math.isfinite(mean_auc):
        return PromotionDecision(False, "mean AUC is not finite", mean_auc, floor=rule)
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
            f"mean AUC {mean_auc:.4f} does not beat champion v{champion_version} ({champion_auc:.4f})",
            mean_auc,
            champion_version,
            champion_auc,
            floor=rule,
            floor_passed=floor_passed,
        )
    client.set_registered_model_alias(name, alias, version)
    return PromotionDecision(
        True,
        f"mean AUC {mean_auc:.4f} beats champion v{champion_version} ({champion_auc:.4f}){floor_note}",
        mean_auc,
        champion_version,
        champion_auc,
        floor=rule,
        floor_passed=floor_passed,
    )


# ------------------------------------------------------------------------------- decision thresholds
THRESHOLDS_SCHEMA_VERSION = 1
THRESHOLD_TAG_PREFIX = "threshold."  # threshold.<label slug> = repr(float), chosen on the val split
VAL_AUC_TAG_PREFIX = "val_auc."  # val_auc.<label slug> = repr(float) (tag absent: val AUC undefined)
THRESHOLDS_METHOD_TAG = "thresholds.method"  # evaluate.threshold_method (youden | f1)
THRESHOLDS_SCHEMA_TAG = "thresholds.schema_version"
THRESHOLDS_HASH_TAG = "thresholds.eval_data_hash"  # the evaluation data the thresholds were chosen on
THRESHOLDS_ARTIFACT_TAG = "thresholds.artifact"  # runs:/<eval run>/thresholds.json (the full table)
THRESHOLDS_EVAL_MODE_TAG = "thresholds.eval_mode"  # evaluate.eval_mode: the crops the thresholds were chosen on


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
    }


def resolve_model_version(tracking_uri: str, model_uri: str) -> dict[str, str | None] | None:
    """``models:/name@alias`` / ``models:/name/N`` -> {"name", "version", "alias", "run_id"}; None otherwise.

    The alias is resolved once (``get_model_version_by_alias``): whoever then reads the model and its
    thresholds reads that version, even if the alias moves meanwhile.
    """
    if not model_uri.startswith("models:/"):
        return None
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    body = model_uri[len("models:/") :]
    if "@" in body:
        name, alias = body.split("@", 1)
        found = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = body.partition("/")
        alias = None
        found = client.get_model_version(name, number)
    return {"name": name, "version": str(found.version), "alias": alias, "run_id": found.run_id}


def tracking_uri_for(root: str | Path, uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` URI absolute against the config root (cwd-independent)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((Path(root) / uri[len(prefix) :]).resolve())
    return uri
