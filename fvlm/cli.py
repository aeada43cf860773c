"""The ``fvlm`` command line: one subcommand per stage.

Each subcommand lives in ``fvlm/commands/<name>.py`` exposing ``register(subparsers)``; that module
must import only the standard library at top level (heavy imports inside its ``run`` function), so
``fvlm --help`` starts fast. A command module that is not present yet is simply not listed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from core.env import apply_offline_env
from fvlm import __version__

# order = order in --help
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "demo_data",
    "convert",
    "segment",
    "parse_reports",
    "shard",
    "train",
    "evaluate",
    "predict",
    "pipeline",
    "deploy",
    "services",
    "config_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fvlm",
        description="fvlm-pipeline: DICOM + reports -> anatomy masks -> Parquet shards -> fVLM model.",
    )
    parser.add_argument("--version", action="version", version=f"fvlm-pipeline {__version__}")
    parser.add_argument("--params", default=None, help="params.yaml to use (default: nearest upwards)")
    parser.add_argument("--profile", default=None, help="config profile (default: params.yaml / $FVLM_PROFILE)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fvlm.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"fvlm.commands.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    apply_offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    from core.config import ConfigError

    try:
        return int(args.handler(args) or 0)
    except ConfigError as error:
        print(f"fvlm: config error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fvlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
