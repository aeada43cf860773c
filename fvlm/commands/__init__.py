"""Subcommands of ``fvlm``; each module: ``register(subparsers)`` + heavy imports inside handlers."""

from __future__ import annotations

import argparse


def load_config_from_args(args: argparse.Namespace):  # -> FvlmConfig (typed lazily to keep startup fast)
    """The typed config for a command, honouring the global --params / --profile flags."""
    from fvlm.config import load_config

    return load_config(getattr(args, "params", None), profile=getattr(args, "profile", None))
