"""The end-to-end flow behind ``fvlm pipeline``: dvc pull -> dvc repro -> dvc push -> report.

DVC owns *what is stale* (dvc.yaml: one stage per box, each calling an ``fvlm`` command that runs its
stage flow); this flow owns *when* and reports the outcome:

1. ``dvc pull --allow-missing`` when a DVC remote is configured (a fresh clone gets the data others have
   already produced; objects missing from the remote, e.g. on the very first run, are not an error); a
   failed pull (remote unreachable, bad credentials) stops the run -- a repro on stale local data would
   look like success -- unless ``allow_missing_remote`` (``fvlm pipeline --allow-missing-remote``);
2. ``dvc repro [targets]`` from the repository root (the evaluate stage includes the promotion gate);
3. ``dvc push`` when a remote is configured;
4. the report: metrics/eval.json (and the other metrics files), the MLflow run id and the registered
   model version under the promotion alias when present, as a markdown artifact and as the return value.

The commands DVC starts inherit ``PREFECT_API_URL`` (see :mod:`flows.subprocesses`), so their flow runs
land on the same Prefect server as this one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task

from core.config import flatten_keys
from flows.batching import run_logger
from flows.subprocesses import CommandError, child_env, executable, run_command


@dataclass
class PipelineReport:
    repo_root: str
    remote: str | None = None
    pulled: bool = False
    pull_note: str = ""
    reproduced: bool = False
    pushed: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)  # metrics/<name>.json contents by name
    mlflow_run_id: str | None = None  # the training run (metrics/train.json), else the evaluation run
    eval_run_id: str | None = None
    registered_model: str | None = None
    registry_version: str | None = None  # the version this run trained / evaluated
    promoted_alias: str | None = None  # set when that version was promoted
    champion_version: str | None = None  # the version holding the alias now (registry)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        lines = [
            "# fvlm pipeline",
            "",
            f"- repository: `{self.repo_root}`",
            f"- DVC remote: {self.remote or 'none configured'}"
            + (f" (pulled{'; ' + self.pull_note if self.pull_note else ''})" if self.pulled else ""),
            f"- dvc repro: {'done' if self.reproduced else 'not run'}; dvc push: {'done' if self.pushed else 'no'}",
            f"- MLflow run: {self.mlflow_run_id or '-'}"
            + (f" (evaluation run {self.eval_run_id})" if self.eval_run_id else ""),
            f"- registered model: {self.registered_model or '-'} version {self.registry_version or '-'}"
            + (f" (promoted to `{self.promoted_alias}`)" if self.promoted_alias else ""),
        ]
        if self.champion_version:
            lines.append(f"- current champion: version {self.champion_version}")
        if self.seconds:
            lines.append("- timing: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()))
        evaluation = self.metrics.get("eval")
        if isinstance(evaluation, dict):
            scalars = {k: v for k, v in flatten_keys(evaluation).items() if isinstance(v, (int, float))}
            if scalars:
                lines += ["", "## metrics/eval.json", "", "| metric | value |", "|---|---:|"]
                lines += [f"| {k} | {v:.4g} |" for k, v in list(scalars.items())[:40]]
        return "\n".join(lines) + "\n"


def dvc_remote(repo_root: Path) -> str | None:
    """The default DVC remote's name (or the only remote), None when the repo has none.

    Read from ``.dvc/config`` and ``.dvc/config.local`` (as ``dvc remote default`` does, without the
    second of CLI start-up).
    """
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read([repo_root / ".dvc" / "config", repo_root / ".dvc" / "config.local"])
    remotes = [
        section.split('"')[1]
        for section in parser.sections()
        if section.startswith("'remote ") or section.startswith("remote ")
        if section.count('"') >= 2
    ]
    default = parser.get("core", "remote", fallback="").strip()
    if default:
        return default
    return remotes[0] if len(remotes) == 1 else None


class PullFailed(CommandError):
    """``dvc pull`` failed: the message says how to go on with what is local."""

    def __str__(self) -> str:
        lines = [line.strip() for line in self.tail.splitlines() if line.strip()]
        said = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        return (
            f"dvc pull failed (exit {self.returncode}): {said or 'no output'} -- fix the remote "
            "(`dvc remote list`, `dvc pull`), or go on with what is local: `fvlm pipeline --allow-missing-remote`"
        )


@task(name="dvc-pull", retries=2, retry_delay_seconds=10, persist_result=False)
def dvc_pull(repo_root: str, remote: str, allow_missing_remote: bool = False) -> str:
    """``dvc pull --allow-missing``; raise :class:`PullFailed` when it fails, unless ``allow_missing_remote``
    (then a warning and the note for the report)."""
    log = run_logger()
    result = run_command(
        [executable("dvc"), "pull", "--allow-missing", "-r", remote],
        cwd=repo_root,
        env=child_env(),
        log=log,
        check=False,
    )
    if result.returncode == 0:
        return ""
    if not allow_missing_remote:
        raise PullFailed(result.command, result.returncode, result.tail)
    log.warning("dvc pull exited %d; going on with what is local (--allow-missing-remote)", result.returncode)
    return f"dvc pull exited {result.returncode}"


@task(name="dvc-repro", persist_result=False)
def dvc_repro(
    repo_root: str,
    targets: Sequence[str] = (),
    force: bool = False,
    tracking_uri: str | None = None,
    single_item: bool = False,
) -> None:
    flags = [*(["--force"] if force else []), *(["--single-item"] if single_item else [])]
    command = [executable("dvc"), "repro", *flags, *targets]
    run_command(command, cwd=repo_root, env=child_env(tracking_uri=tracking_uri), log=run_logger())


@task(name="dvc-push", retries=2, retry_delay_seconds=10, persist_result=False)
def dvc_push(repo_root: str, remote: str) -> None:
    run_command([executable("dvc"), "push", "-r", remote], cwd=repo_root, env=child_env(), log=run_logger())


def read_metrics(metrics_dir: Path) -> dict[str, Any]:
    """``metrics/<name>.json`` by name, each merged with its ``<name>.info.json`` (core/metrics_files.py)."""
    from core.metrics_files import INFO_SUFFIX

    metrics: dict[str, Any] = {}
    for path in sorted(metrics_dir.glob("*.json")) if metrics_dir.is_dir() else []:
        name = path.name.removesuffix(INFO_SUFFIX) if path.name.endswith(INFO_SUFFIX) else path.stem
        try:
            metrics.setdefault(name, {}).update(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, AttributeError, TypeError, ValueError):
            metrics.setdefault(name, {})["error"] = f"{path.name}: not readable JSON"
    return metrics


def _find_key(data: Any, names: Sequence[str]) -> Any:
    """First value under any of ``names`` anywhere in a nested dict (metrics files vary by stage)."""
    if isinstance(data, dict):
        for name in names:
            if data.get(name) not in (None, ""):
                return data[name]
        for value in data.values():
            found = _find_key(value, names)
            if found not in (None, ""):
                return found
    return None


def fill_mlflow_fields(
    report: PipelineReport, *, tracking_uri: str, registered_model: str, alias: str, root: Path
) -> None:
    """MLflow runs and registry version from the metrics files, the alias holder from the registry."""
    evaluation = report.metrics.get("eval", {})
    training = report.metrics.get("train", {})
    run_keys = ["mlflow_run_id", "run_id"]
    report.eval_run_id = _find_key(evaluation, run_keys)
    report.mlflow_run_id = _find_key(training, run_keys) or report.eval_run_id
    version = _find_key(evaluation, ["registry_version", "model_version"]) or _find_key(
        training, ["registry_version", "model_version"]
    )
    report.registered_model = (
        _find_key(evaluation, ["registered_model"]) or _find_key(training, ["registered_model"]) or registered_model
    )
    report.registry_version = str(version) if version not in (None, "") else None
    promoted = _find_key(evaluation, ["promoted", "promoted_alias"])
    if isinstance(promoted, str):
        report.promoted_alias = promoted
    elif promoted is True or promoted == 1:  # metrics files write yes / no as 1 / 0
        report.promoted_alias = alias
    if _tracking_store_exists(tracking_uri, root):
        try:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=_absolute_tracking_uri(tracking_uri, root))
            champion = client.get_model_version_by_alias(report.registered_model, alias)
            report.champion_version = str(champion.version)
            report.registry_version = report.registry_version or report.champion_version
        except Exception:  # no registered model / alias yet
            pass


def _absolute_tracking_uri(uri: str, root: Path) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
    return uri


def _tracking_store_exists(uri: str, root: Path) -> bool:
    if uri.startswith("sqlite:///"):
        return Path(_absolute_tracking_uri(uri, root).removeprefix("sqlite:///")).exists()
    return True


@flow(name="fvlm-pipeline", log_prints=True)
def pipeline_flow(
    repo_root: str,
    targets: list[str] | None = None,
    pull: bool = True,
    push: bool = True,
    force: bool = False,
    force_stages: list[str] | None = None,
    metrics_dir: str = "metrics",
    tracking_uri: str = "sqlite:///mlflow.db",
    registered_model: str = "fvlm-ct",
    promote_alias: str = "champion",
    allow_missing_remote: bool = False,
) -> dict[str, Any]:
    """dvc pull (when a remote is configured) -> dvc repro -> dvc push -> report (metrics, MLflow run).

    ``force_stages`` are re-run on their own first (``dvc repro --force --single-item <stage>``, e.g. a
    scheduled retrain on unchanged shards) without forcing their upstream stages.
    """
    import time

    log = run_logger()
    root = Path(repo_root).resolve()
    report = PipelineReport(repo_root=str(root))
    report.remote = dvc_remote(root) if (pull or push) else None
    if pull and report.remote:
        started = time.perf_counter()
        report.pull_note = dvc_pull(str(root), report.remote, allow_missing_remote)
        report.pulled = True
        report.seconds["pull"] = time.perf_counter() - started
    started = time.perf_counter()
    uri = _absolute_tracking_uri(tracking_uri, root)
    try:
        for stage in force_stages or []:
            dvc_repro(str(root), [stage], True, uri, single_item=True)
        dvc_repro(str(root), targets or [], force, uri)
    except CommandError as error:
        log.error("dvc repro failed (exit %d); nothing pushed", error.returncode)
        raise
    report.reproduced = True
    report.seconds["repro"] = time.perf_counter() - started
    if push and report.remote:
        started = time.perf_counter()
        dvc_push(str(root), report.remote)
        report.pushed = True
        report.seconds["push"] = time.perf_counter() - started
    metrics_path = Path(metrics_dir)
    report.metrics = read_metrics(metrics_path if metrics_path.is_absolute() else root / metrics_path)
    fill_mlflow_fields(
        report, tracking_uri=tracking_uri, registered_model=registered_model, alias=promote_alias, root=root
    )
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(report.markdown(), key="fvlm-pipeline-report", description="fvlm pipeline run")
    except Exception as error:
        log.warning("pipeline report artifact not written: %s", error)
    log.info(
        "pipeline done: MLflow run %s, %s version %s",
        report.mlflow_run_id or "-",
        report.registered_model,
        report.registry_version or "-",
    )
    return report.as_dict()
