"""Subcommands of ``fvlm``; each module: ``register(subparsers)`` + heavy imports inside handlers."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # pragma: no cover - typing only; importing core.config here would slow `fvlm --help`
    from core.config import FvlmConfig

Job = TypeVar("Job")
Summary = TypeVar("Summary")


def load_config_from_args(args: argparse.Namespace) -> FvlmConfig:
    """The typed config for a command, honouring the global --params / --profile flags.

    Also points the command at the stores ``fvlm services up`` serves (running servers, else the same
    files: ``core.config.apply_services_environment``), so every command logs to one MLflow and one Prefect.
    """
    from core.config import apply_services_environment, load_config

    config = load_config(getattr(args, "params", None), profile=getattr(args, "profile", None))
    return apply_services_environment(config)


def run_stage_as_flow(config: FvlmConfig) -> bool:
    """Stage commands run their Prefect flow (flows/stages.py) unless turned off.

    ``orchestration.stage_flows: false`` or ``FVLM_NO_FLOWS=1`` runs the library directly (no Prefect
    server at all); a flow started inside a flow worker (``FVLM_STAGE_WORKER``) never nests another.
    """
    import os

    if os.environ.get("FVLM_NO_FLOWS", "").lower() in ("1", "true", "yes"):
        return False
    if os.environ.get("FVLM_STAGE_WORKER"):
        return False
    return bool(config.orchestration.stage_flows)


def run_stage(
    config: FvlmConfig,
    job: Job,
    library: Callable[[Job], Summary],
    flow_name: str,
    fan_out: dict[str, Any] | None = None,
) -> Summary:
    """The one switch of the data-stage commands: ``library(job)`` when flows are off
    (:func:`run_stage_as_flow`), else the stage's Prefect flow ``flows.stages.<flow_name>(job, fan_out)``.

    ``fan_out``: the stage's overrides of ``FanOut.from_config(config.orchestration)`` (e.g. its batch
    size); ``None``: the flow takes no fan-out (shard: one task).
    """
    if not run_stage_as_flow(config):
        return library(job)
    import flows.stages
    from flows.batching import FanOut

    stage_flow = getattr(flows.stages, flow_name)
    if fan_out is None:
        return stage_flow(job)
    return stage_flow(job, FanOut.from_config(config.orchestration, **fan_out))
