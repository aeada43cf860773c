"""``fvlm config``: show / validate the configuration; ``fvlm config use NAME`` applies params.NAME.yaml.

There is no run-time profile merge: what params.yaml says is what runs (and what DVC tracks). A scale
such as the paper's lives in ``params.paper.yaml``; ``fvlm config use paper`` writes its keys into
params.yaml (comments and the other keys, e.g. your paths, kept) and prints what changed, so switching
is a visible params change (``git diff params.yaml``, ``dvc params diff``). ``fvlm config use demo``
writes the demo scale back.

``fvlm config show`` prints one ``key = value`` line per setting with where the value came from:
``file`` (params.yaml), ``env NAME`` (an environment override, ``core.config`` table) or ``default`` (the
built-in value of ``core/config.py``); ``--json`` prints the resolved config as JSON. A salt other than the
demo's is never printed. ``show`` and ``validate`` warn (stderr) when ``privacy.salt`` is still the demo salt
outside the demo: a params file whose profile is not ``demo`` or whose inputs lie outside ``paths.demo_dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    from fvlm.commands._help import add_command, arg

    parser = add_command(
        subparsers,
        "config",
        help="show / validate params.yaml; `config use paper|demo` writes params.<name>.yaml into it",
        description=(
            "show: every resolved value with its source (file, env NAME, default; --json: as JSON); "
            "validate: check params.yaml against the schema (exit 2 on "
            "errors); use NAME: merge params.<NAME>.yaml into params.yaml, keeping its "
            "comments, and list the keys that changed (DVC then sees the change)."
        ),
        examples=[
            ("fvlm config", "show the resolved config"),
            ("fvlm config validate", "check params.yaml"),
            ("fvlm config use paper", "switch params.yaml to the paper scale (params.paper.yaml)"),
            ("fvlm --params other/params.yaml config show", "another params file"),
            ("fvlm config show --json", "the resolved config as JSON"),
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
    arg(parser, "--json", action="store_true", help="with `show`: the resolved config as JSON (no sources)")
    parser.set_defaults(handler=run)


def value_sources(keys: list[str], file_values: dict[str, Any], environment: dict[str, str]) -> dict[str, str]:
    """``key`` -> ``env NAME`` / ``file`` / ``default``, in the order config_from_dict applies them."""
    sources = {}
    for key in keys:
        if key in environment:
            sources[key] = f"env {environment[key]}"
        elif key in file_values:
            sources[key] = "file"
        else:
            sources[key] = "default"
    return sources


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def demo_salt() -> str:
    """The salt params.yaml ships with (public: it is in the repository)."""
    from core.config import PrivacyConfig

    return str(PrivacyConfig.model_fields["salt"].default)


def shown_salt(salt: str) -> str:
    """The demo salt as it is; any other salt is a secret and never printed."""
    return salt if salt == demo_salt() else f"<set, {len(salt)} characters, not shown>"


def demo_salt_warning(config: Any, params: Path | None) -> str | None:
    """The warning when ``privacy.salt`` is the demo salt outside the demo (None otherwise)."""
    if config.privacy.salt != demo_salt():
        return None
    paths = config.paths
    demo_dir = config.path(paths.demo_dir)
    outside = [
        f"paths.{key} {getattr(paths, key)!r}"
        for key in ("raw_dicom", "reports_csv")
        if not _inside(config.path(getattr(paths, key)), demo_dir)
    ]
    reasons = ([f"profile {config.profile!r}"] if config.profile != "demo" else []) + (
        [f"{' and '.join(outside)} outside paths.demo_dir {paths.demo_dir!r}"] if outside else []
    )
    if not reasons:
        return None
    return (
        f"warning: {params or '<defaults>'}: privacy.salt is still the demo salt {demo_salt()!r}, but this is not "
        f"the demo ({'; '.join(reasons)}): anyone holding the public salt can recompute the pseudonyms from "
        "patient identifiers. Set FVLM_SALT to a long random secret (e.g. `python -c \"import secrets; "
        "print(secrets.token_hex(32))\"`) before `fvlm convert`, and keep it with the data's keys."
    )


def show(config: Any, params: Path | None) -> None:
    import yaml

    from core.config import environment_overrides, flatten_keys

    raw = yaml.safe_load(params.read_text()) if params else {}
    file_values = flatten_keys(raw if isinstance(raw, dict) else {})
    values = {"profile": config.profile, **config.flat()}
    sources = value_sources(list(values), file_values, environment_overrides())
    print(f"# {params or 'no params.yaml: built-in defaults'} (profile {config.profile!r}, root {config.root})")
    print("# source: file = that params file, env NAME = environment variable, default = core/config.py")
    width = max(len(source) for source in sources.values())
    for key, value in values.items():
        shown = json.dumps(shown_salt(value) if key == "privacy.salt" else value)
        print(f"{sources[key]:<{width}}  {key} = {shown}")


def run(args: argparse.Namespace) -> int:
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
    params = Path(args.params) if getattr(args, "params", None) else find_params()
    config = load_config(params)
    warning = demo_salt_warning(config, params)
    if args.action == "validate":
        print(f"ok: profile {config.profile!r}, root {config.root}")
    elif args.json:
        document = config.model_dump(mode="json")
        document["privacy"]["salt"] = shown_salt(config.privacy.salt)
        print(json.dumps(document, indent=2))
    else:
        show(config, params)
    if warning:
        print(warning, file=sys.stderr)
    return 0
