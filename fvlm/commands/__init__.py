"""Subcommands of ``fvlm``; each module: ``register(subparsers)`` + heavy imports inside handlers."""

from __future__ import annotations

import argparse


def load_config_from_args(args: argparse.Namespace):  # -> FvlmConfig (typed lazily to keep startup fast)
    """The typed config for a command, honouring the global --params / --profile flags.

    Also points the command at the stores ``fvlm services up`` serves (running servers, else the same
    files: ``core.config.apply_services_environment``), so every command logs to one MLflow and one Prefect.
    """
    from core.config import apply_services_environment, load_config

    config = load_config(getattr(args, "params", None), profile=getattr(args, "profile", None))
    return apply_services_environment(config)


def run_stage_as_flow(config) -> bool:  # config: FvlmConfig
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
