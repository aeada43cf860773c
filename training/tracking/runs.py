"""MLflow runs: one tracker per run (params, metrics, tags, artifacts) and the provenance tags of a run.

MLflow is imported inside functions only. Only rank 0 talks to MLflow: other ranks (and
``tracking.enabled: false``) get a :class:`NullTracker` with the same methods doing nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import TrackingConfig

log = logging.getLogger(__name__)

_PARAM_VALUE_LIMIT = 6000
# tags that tie a training run to what it writes and to the process writing it (abandoned-run detection)
OWNER_TAG = "fvlm.owner"
HOST_TAG = "fvlm.host"
PID_TAG = "fvlm.pid"
# set by DVC for the commands it runs: `dvc exp run` names the experiment, every stage command gets its stage
DVC_EXP_ENV = "DVC_EXP_NAME"
DVC_STAGE_ENV = "DVC_STAGE"
DVC_EXPERIMENT_TAG = "dvc_experiment"
DVC_STAGE_TAG = "dvc_stage"
GIT_COMMIT_TAG = "git_commit"


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

        mute_mlflow_chatter()
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


# what MLflow prints itself on registering (its `eprint`, not a logger): the command prints the version
MLFLOW_CHATTER = re.compile(
    r"^(Successfully registered model '|Created version '\d+' of model |Registered model '.*' already exists)"
)
VERBOSITY_ENV = "FVLM_VERBOSITY"  # fvlm/console.py exports the console level; "verbose" keeps MLflow's lines


def mute_mlflow_chatter() -> None:
    """Drop MLflow's registry lines (:data:`MLFLOW_CHATTER`) from its print stream unless ``-v``; its
    warnings and errors still print. Idempotent."""
    if os.environ.get(VERBOSITY_ENV) == "verbose":
        return
    from mlflow.utils import logging_utils

    stream = logging_utils.MLFLOW_LOGGING_STREAM
    if getattr(stream, "fvlm_muted", False):
        return
    original = stream.write
    state = {"dropped": False}

    def write(text: str) -> None:
        if MLFLOW_CHATTER.match(text.strip()):
            state["dropped"] = True  # print() writes the message, then its "\n" separately
            return
        if state["dropped"] and text == "\n":
            state["dropped"] = False
            return
        state["dropped"] = False
        original(text)

    stream.write = write  # type: ignore[method-assign]
    stream.fvlm_muted = True  # type: ignore[attr-defined]


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
    """MLflow tracker on rank 0 when ``tracking.enabled``; a :class:`NullTracker` otherwise. The run is
    tagged with the git commit of the code and, under DVC, the experiment and stage (:func:`dvc_tags`)."""
    if not is_main_process or not tracking_cfg.enabled:
        return NullTracker()
    artifact_location = tracking_cfg.artifact_location
    if artifact_location and "://" not in artifact_location:
        artifact_location = (Path(root) / artifact_location).resolve().as_uri()
    tracker = MlflowTracker(
        tracking_uri_for(root, tracking_cfg.mlflow_tracking_uri),
        tracking_cfg.experiment,
        run_id=run_id,
        run_name=run_name,
        system_metrics=tracking_cfg.system_metrics,
        artifact_location=artifact_location,
        owner=owner,
    )
    commit = git_commit(Path(__file__).resolve().parents[2]) or git_commit(root)
    tracker.set_tags({**({GIT_COMMIT_TAG: commit} if commit else {}), **dvc_tags()})
    return tracker


def run_name_for(stage: str, detail: str | None = None) -> str:
    """An MLflow run name a person can find: ``<dvc experiment>-<stage>-<detail>`` under ``dvc exp run``
    (e.g. ``tawny-sash-train-200-steps``), else ``<stage>-<detail>`` (``train-200-steps``, ``eval-v3``)."""
    return "-".join(part for part in (os.environ.get(DVC_EXP_ENV), stage, detail) if part)


def dvc_tags() -> dict[str, str]:
    """The DVC experiment and stage this process runs under (absent outside DVC)."""
    found = {DVC_EXPERIMENT_TAG: os.environ.get(DVC_EXP_ENV), DVC_STAGE_TAG: os.environ.get(DVC_STAGE_ENV)}
    return {key: value for key, value in found.items() if value}


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


def tracking_uri_for(root: str | Path, uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` URI absolute against the config root (cwd-independent)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str((Path(root) / uri[len(prefix) :]).resolve())
    return uri


# ------------------------------------------------------------------------------ artifacts a browser opens
def served_by_http(tracking_uri: str | None) -> bool:
    """True when ``tracking_uri`` is an MLflow server (``fvlm services up``), whose artifacts have http URLs."""
    return bool(tracking_uri) and str(tracking_uri).startswith(("http://", "https://"))


def artifact_url(tracking_uri: str | None, run_id: str | None, artifact_path: str) -> str | None:
    """The http URL of one run artifact (the server's ``get-artifact`` route, as MLflow's UI uses), None
    without a server: a ``file://`` link from an http page (Prefect's UI) does not open in a browser."""
    from urllib.parse import urlencode

    if not run_id or not served_by_http(tracking_uri):
        return None
    query = urlencode({"path": artifact_path, "run_uuid": run_id})
    return f"{str(tracking_uri).rstrip('/')}/get-artifact?{query}"


def run_artifacts_url(tracking_uri: str | None, experiment_id: str | None, run_id: str | None) -> str | None:
    """The MLflow UI page of a run's artifacts (None without a server)."""
    if not run_id or not experiment_id or not served_by_http(tracking_uri):
        return None
    return f"{str(tracking_uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}/artifacts"


def log_files(tracking_uri: str, run_id: str, files: Mapping[str, str | Path]) -> list[str]:
    """Log each existing file (or folder) ``files[artifact_dir]`` to an existing run (also a finished one:
    the loss curve is drawn after training ends); the artifact paths logged."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    logged = []
    for artifact_dir, path in files.items():
        target = Path(path)
        if target.is_dir():
            client.log_artifacts(run_id, str(target), artifact_dir)
            logged += [f"{artifact_dir}/{item.name}" for item in sorted(target.iterdir()) if item.is_file()]
        elif target.is_file():
            client.log_artifact(run_id, str(target), artifact_dir)
            logged.append(f"{artifact_dir}/{target.name}")
    return logged


def experiment_of(tracking_uri: str, run_id: str) -> str | None:
    """The experiment id of a run (None when the store does not know it)."""
    import mlflow

    try:
        return str(mlflow.MlflowClient(tracking_uri=tracking_uri).get_run(run_id).info.experiment_id)
    except Exception:  # noqa: BLE001 - a link is a convenience, never a failure
        return None
