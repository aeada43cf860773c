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


def library_reason(config: FvlmConfig) -> str | None:
    """Why a stage command runs its library instead of its Prefect flow (``None``: it runs the flow).

    The flow runs when a Prefect server is there to record it: ``PREFECT_API_URL`` is set by ``fvlm
    services up`` (found by :func:`load_config_from_args`), ``tracking.prefect_api_url``, or the one
    temporary server ``fvlm demo`` / ``fvlm pipeline`` start for the whole ``dvc repro``
    (``flows.services.shared_prefect_server``). Without one the library runs directly: a lone ``fvlm
    convert`` or ``dvc repro`` never pays for a per-command temporary server (7-20 s); the stage's
    manifest and ``<services.data_dir>/logs/stage-runs.jsonl`` record what ran.
    ``orchestration.stage_flows: false`` or ``FVLM_NO_FLOWS=1`` run the library even with a server
    (``FVLM_NO_FLOWS`` is also how a flow that launches a command keeps it from starting a flow of its
    own); a torchrun rank (``LOCAL_RANK``) runs the library: ranks never start a flow each.
    The table of these switches is docs/orchestration.md "Which path a command takes".
    """
    import os

    if os.environ.get("FVLM_NO_FLOWS", "").lower() in ("1", "true", "yes"):
        return "FVLM_NO_FLOWS"
    if "LOCAL_RANK" in os.environ:
        return "torchrun rank"
    if not os.environ.get("PREFECT_API_URL"):
        return "no Prefect server"
    if not config.orchestration.stage_flows:
        return "orchestration.stage_flows: false"
    return None


def record_library_run(config: FvlmConfig, flow_name: str, seconds: float, summary: object, reason: str) -> None:
    """One JSON line per stage run without Prefect in ``<services.data_dir>/logs/stage-runs.jsonl``
    (time, stage, seconds, the summary's counts line); never fails the stage."""
    import json
    import time

    describe = getattr(summary, "describe", None)
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stage": flow_name.removesuffix("_flow").replace("_", "-"),
        "mode": "library",
        "reason": reason,
        "seconds": round(seconds, 3),
        "summary": describe() if callable(describe) else "",
    }
    try:
        path = config.path(config.services.data_dir) / "logs" / "stage-runs.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    except (OSError, TypeError, ValueError):
        pass


def run_stage(
    config: FvlmConfig,
    job: Job,
    library: Callable[[Job], Summary],
    flow_name: str,
    fan_out: dict[str, Any] | None = None,
) -> Summary:
    """The one switch of the stage commands: ``library(job)`` when flows are off, no Prefect server is
    there or this is a torchrun rank (:func:`library_reason`), else the stage's Prefect flow
    ``flows.stages.<flow_name>(job, fan_out)``.

    ``fan_out``: the stage's overrides of ``FanOut.from_config(config.orchestration)`` (e.g. its batch
    size); ``None``: the flow takes no fan-out (shard, train, evaluate: one task).
    """
    import os

    reason = library_reason(config)
    if reason is not None:
        import logging
        import time

        if reason == "no Prefect server":
            logging.getLogger("fvlm").info(
                "%s: no Prefect server, running the library (`fvlm services up` records stage flow runs)",
                flow_name.removesuffix("_flow").replace("_", "-"),
            )
        started = time.perf_counter()
        summary = library(job)
        if reason != "torchrun rank" or os.environ.get("RANK", "0") == "0":  # one line per run, not per rank
            record_library_run(config, flow_name, time.perf_counter() - started, summary, reason)
        return summary
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import flows.stages
    from flows.batching import FanOut

    stage_flow = getattr(flows.stages, flow_name)
    # the server of $PREFECT_API_URL even when Prefect was imported (and read its settings) before it was set
    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        if fan_out is None:
            return stage_flow(job)
        return stage_flow(job, FanOut.from_config(config.orchestration, **fan_out))
