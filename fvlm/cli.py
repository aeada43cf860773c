"""The ``fvlm`` command line: one subcommand per stage.

Each subcommand lives in ``fvlm/commands/<name>.py`` exposing ``register(subparsers)``; that module
must import only the standard library at top level (heavy imports inside its ``run`` function), so
``fvlm --help`` starts fast. A command module that is not present yet is simply not listed.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from core.env import apply_offline_env
from fvlm import __version__
from fvlm.console import configure_console, resolve_verbosity

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
    "lookup",
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
    add_verbosity_flags(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fvlm.commands.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"fvlm.commands.{name}":
                continue
            raise
        module.register(subparsers)
    for subparser in _all_subparsers(subparsers):
        add_verbosity_flags(subparser, default=argparse.SUPPRESS)
    return parser


def add_verbosity_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    """``-v/--verbose`` and ``-q/--quiet`` (fvlm/console.py); on a subcommand their default is SUPPRESS so
    ``fvlm -v convert`` and ``fvlm convert -v`` both work and a global flag is never reset."""
    if any(option in parser._option_string_actions for option in ("-v", "--verbose", "-q", "--quiet")):
        return  # a command that defines its own (none does today)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="everything: debug lines, third-party logs"
    )
    group.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="warnings and errors only, no progress bars"
    )


def _all_subparsers(action: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Every subcommand parser, nested ones (``fvlm services up``) included."""
    found: list[argparse.ArgumentParser] = []
    for subparser in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
        found.append(subparser)
        for nested in subparser._actions:
            if isinstance(nested, argparse._SubParsersAction):
                found.extend(_all_subparsers(nested))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    apply_offline_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_console(resolve_verbosity(bool(args.verbose), bool(args.quiet)))
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
