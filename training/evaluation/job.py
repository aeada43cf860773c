"""The evaluate stage's job: which model, which shards, where the report goes (``EvaluateJob.from_config``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# at run time, not only for type checkers: Prefect validates a flow's job argument against these types
from core.config import EvaluateConfig, FvlmConfig, GridConfig, TrackingConfig  # noqa: TC001


@dataclass(frozen=True, kw_only=True)
class EvaluateJob:
    """One evaluation: the model (a registered version, an alias, a run or a local directory), the
    val / test shards, the report folder and metrics file, and the config sections evaluation reads
    (build it with :meth:`from_config`).

    ``prompts_path``: ``evaluate.prompts_file`` resolved against the config root (None: the model's
    prompts). ``num_workers``: DataLoader workers (``train.num_workers``).
    """

    model_ref: str
    shards_dir: Path
    out_dir: Path
    metrics_path: Path | None
    promote: bool
    evaluate: EvaluateConfig
    grid: GridConfig
    tracking: TrackingConfig
    prompts_path: Path | None
    num_workers: int
    root: Path

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        model: str | os.PathLike[str] | None = None,
        shards: str | os.PathLike[str] | None = None,
        out: str | os.PathLike[str] | None = None,
        metrics: str | os.PathLike[str] | None = None,
        promote: bool | None = None,
        tracking: bool | None = None,
    ) -> EvaluateJob:
        """The job of ``config`` (paths.shards -> paths.eval + <paths.metrics>/eval.json,
        evaluate.*, tracking.*); a ``None`` override keeps the configured value, ``tracking=False``
        turns MLflow off. ``model`` defaults to :func:`default_model_ref`."""
        from core.config import or_config

        if tracking is not None:
            config = config.model_copy(update={"tracking": config.tracking.model_copy(update={"enabled": tracking})})
        section = config.evaluate
        return cls(
            model_ref=str(model) if model is not None else default_model_ref(config),
            shards_dir=config.path(or_config(shards, config.paths.shards)),
            out_dir=config.path(out or config.paths.eval),
            metrics_path=config.path(metrics) if metrics else config.path(config.paths.metrics) / "eval.json",
            promote=bool(or_config(promote, True)),
            evaluate=section,
            grid=config.grid,
            tracking=config.tracking,
            prompts_path=config.path(section.prompts_file) if section.prompts_file else None,
            num_workers=config.train.num_workers,
            root=Path(config.root),
        )


def default_model_ref(config: FvlmConfig) -> str:
    """The model the last `fvlm train` produced: its registered version (``<paths.metrics>/train.json``)
    when tracking is on, else its local directory ``<paths.models>/model``."""
    from core.metrics_files import info_path, read_metrics_and_info

    train_metrics = config.path(config.paths.metrics) / "train.json"
    if config.tracking.enabled and info_path(train_metrics).is_file():
        recorded = read_metrics_and_info(train_metrics)
        if recorded.get("registered_model") and recorded.get("model_version"):
            return f"models:/{recorded['registered_model']}/{recorded['model_version']}"
    return str(config.path(config.paths.models) / "model")
