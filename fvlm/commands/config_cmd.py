"""``fvlm config``: show / validate the configuration; ``fvlm config use NAME`` applies params.NAME.yaml.

There is no run-time profile merge: what params.yaml says is what runs (and what DVC tracks). A scale
such as the paper's lives in ``params.paper.yaml``; ``fvlm config use paper`` writes its keys into
params.yaml (comments and the other keys, e.g. your paths, kept) and prints what changed, so switching
is a visible params change (``git diff params.yaml``, ``dvc params diff``). ``fvlm config use demo``
writes the demo scale back.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "config",
        help="show / validate params.yaml; `config use paper|demo` writes params.<name>.yaml into it",
        description=(
            "show: the resolved config as JSON; validate: check params.yaml against the schema (exit 2 on "
            "errors); use NAME: merge params.<NAME>.yaml into params.yaml, keeping its "
            "comments, and list the keys that changed (DVC then sees the change)."
        ),
        examples=[
            ("fvlm config", "show the resolved config"),
            ("fvlm config validate", "check params.yaml"),
            ("fvlm config use paper", "switch params.yaml to the paper scale (params.paper.yaml)"),
            ("fvlm --params other/params.yaml --profile paper config show", "another file and profile"),
        ],
    )
    arg(
        parser,
        "action",
        choices=["show", "validate", "use"],
        nargs="?",
        default="show",
        help="show (default), validate, or use NAME",
    )
    arg(parser, "name", nargs="?", default=None, help="with `use`: params.<name>.yaml to apply (paper, demo)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from core.config import PARAMS_FILE, ConfigError, find_params, load_config, params_file_for, use_params_file

    if args.action == "use":
        if not args.name:
            print("fvlm config use: name a params file, e.g. `fvlm config use paper`", file=sys.stderr)
            return 2
        params = Path(args.params) if getattr(args, "params", None) else (find_params() or Path(PARAMS_FILE))
        overlay = params_file_for(args.name, params)
        if not params.is_file() or not overlay.is_file():
            missing = params if not params.is_file() else overlay
            print(f"fvlm config use: {missing}: no such file", file=sys.stderr)
            return 2
        try:
            changed = use_params_file(params, overlay, name=args.name)
        except ConfigError as error:
            print(f"fvlm config use: {error}", file=sys.stderr)
            return 2
        print(f"{params}: wrote {overlay.name} ({len(changed)} values changed)")
        for key in changed:
            print(f"  {key}")
        return 0
    config = load_config(getattr(args, "params", None), profile=getattr(args, "profile", None))
    if args.action == "validate":
        print(f"ok: profile {config.profile!r}, root {config.root}")
    else:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0
