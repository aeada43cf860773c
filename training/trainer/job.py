"""The train stage's job: what to read, where to write, how to train (``TrainJob.from_config``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# at run time, not only for type checkers: Prefect validates a flow's job argument against these types
from core.config import FvlmConfig, GridConfig, ModelConfig, TrackingConfig, TrainConfig  # noqa: TC001


@dataclass(frozen=True, kw_only=True)
class TrainJob:
    """One training run: the shards it reads, the folder and metrics file it writes, and the config
    sections the loop reads (build it with :meth:`from_config`; the loop reads nothing else).

    ``params``: the whole config flattened (``FvlmConfig.flat()``), logged as the MLflow run's params.
    ``anatomy_set``: the zero-shot anatomy set when the shards do not record theirs.
    """

    shards_dir: Path
    out_dir: Path
    metrics_path: Path | None
    steps: int  # total optimizer steps (also on resume)
    resume: bool
    train: TrainConfig
    model: ModelConfig
    grid: GridConfig
    tracking: TrackingConfig
    shuffle_buffer: int
    anatomy_set: str
    root: Path
    params: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_config(
        cls,
        config: FvlmConfig,
        *,
        shards: str | os.PathLike[str] | None = None,
        out: str | os.PathLike[str] | None = None,
        metrics: str | os.PathLike[str] | None = None,
        steps: int | None = None,
        resume: bool | None = None,
        tracking: bool | None = None,
    ) -> TrainJob:
        """The job of ``config`` (paths.shards -> paths.models + <paths.metrics>/train.json, train.*,
        model.*, grid.*, tracking.*); a ``None`` override keeps the configured value, ``tracking=False``
        turns MLflow off."""
        from core.config import or_config

        tracking_config = config.tracking
        if tracking is not None:
            tracking_config = tracking_config.model_copy(update={"enabled": tracking})
            config = config.model_copy(update={"tracking": tracking_config})
        return cls(
            shards_dir=config.path(or_config(shards, config.paths.shards)),
            out_dir=config.path(or_config(out, config.paths.models)),
            metrics_path=config.path(metrics) if metrics else config.path(config.paths.metrics) / "train.json",
            steps=int(or_config(steps, config.train.steps)),
            resume=bool(or_config(resume, False)),
            train=config.train,
            model=config.model,
            grid=config.grid,
            tracking=tracking_config,
            shuffle_buffer=config.shard.shuffle_buffer,
            anatomy_set=config.segment.anatomy_set,
            root=Path(config.root),
            params=config.flat(),
        )
