"""``fvlm config``: show or validate the effective configuration."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show / validate the effective params.yaml config")
    parser.add_argument("action", choices=["show", "validate"], nargs="?", default="show")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from fvlm.commands import load_config_from_args

    config = load_config_from_args(args)
    if args.action == "validate":
        print(f"ok: profile {config.profile!r}, root {config.root}")
    else:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0
