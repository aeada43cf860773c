"""``--help`` for the ``fvlm`` commands: resolved defaults from params.yaml and an Examples section.

Standard library only at import time (``fvlm --help`` stays fast). A command registers itself with
:func:`add_command` (its formatter and its Examples epilog) and its options with :func:`arg`, naming
the params.yaml key an option defaults to (``key="convert.workers"``, or a template such as
``key="{paths.metrics}/train.json"``). Only when that command's help is printed does
:class:`HelpFormatter` load the config (``core.config.load_config``, honouring ``--params`` /
``--profile`` / ``$FVLM_PARAMS`` as the command would) and show both the value and where it comes
from: ``(default: 2, convert.workers)``. When the config cannot be loaded it shows the key alone.

Paths: a path typed on the command line is relative to the shell's working directory; a path written in
params.yaml is relative to the params file's folder (``core.config.FvlmConfig.path``). So :func:`arg`
makes a path option's value absolute as it is parsed (:func:`cli_path`): options naming a path key
(``paths.*``, :data:`PATH_KEYS`) or declared with ``path=True``.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Sequence
from typing import Any

EXAMPLES_HEADING = "Examples:"
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_MISSING = object()


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    *,
    help: str,
    examples: Sequence[tuple[str, str]],
    description: str | None = None,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """``subparsers.add_parser(name, ...)`` with :class:`HelpFormatter` and an Examples epilog:
    ``examples`` are (command line, what it does) pairs."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        epilog=format_examples(examples),
        formatter_class=HelpFormatter,
        **kwargs,
    )


def format_examples(examples: Sequence[tuple[str, str]]) -> str:
    lines = [EXAMPLES_HEADING]
    for command, comment in examples:
        lines += [f"  # {comment}", f"  {command}"] if comment else [f"  {command}"]
    return "\n".join(lines)


# params keys outside ``paths.`` that hold a path (an option defaulting to one takes a path)
PATH_KEYS: tuple[str, ...] = (
    "convert.ctrate_metadata_csv",
    "orchestration.watch_dir",
    "services.data_dir",
    "segment.totalseg_home",
)


def is_path_key(key: str) -> bool:
    """``paths.x``, a template starting with ``{paths.x}``, or one of :data:`PATH_KEYS`."""
    return key.startswith(("paths.", "{paths.")) or key in PATH_KEYS


def cli_path(value: str) -> str:
    """A path typed on the command line, absolute against the shell's working directory (the config then
    passes it through instead of resolving it against the params file's folder)."""
    import os

    return os.path.abspath(os.path.expanduser(value)) if value else value


def arg(
    container: Any, *flags: str, key: str | None = None, path: bool | None = None, **kwargs: Any
) -> argparse.Action:
    """``container.add_argument(*flags, **kwargs)`` (a parser or a group) remembering the params.yaml
    ``key`` its ``None`` default stands for; the help text then ends with the resolved value.

    ``path``: the value is a path, made absolute against the working directory (:func:`cli_path`);
    default: whether ``key`` is a path key."""
    if path is None:
        path = bool(key) and is_path_key(str(key))
    if path and "type" not in kwargs and kwargs.get("action", "store") == "store":
        kwargs["type"] = cli_path
    action: argparse.Action = container.add_argument(*flags, **kwargs)
    action.config_key = key  # type: ignore[attr-defined]
    return action


def config_key(action: argparse.Action) -> str | None:
    return getattr(action, "config_key", None)


def shown_key(key: str) -> str:
    """How a key is named in help: ``convert.workers``; a template ``{paths.metrics}/x`` as ``<paths.metrics>/x``."""
    return _TEMPLATE_FIELD.sub(r"<\1>", key)


def _global_flags(argv: Sequence[str]) -> tuple[str | None, str | None]:
    """``--params`` / ``--profile`` of the command line being helped (given before the command)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default=None)
    parser.add_argument("--profile", default=None)
    known, _ = parser.parse_known_args(list(argv))
    return known.params, known.profile


@functools.lru_cache(maxsize=4)
def _load(params: str | None, profile: str | None) -> Any:
    try:
        from core.config import load_config

        return load_config(params, profile=profile)
    except Exception:  # noqa: BLE001 - help never fails: no config -> key names only
        return None


def help_config() -> Any:
    """The config this command line would use (``None`` when it cannot be loaded)."""
    return _load(*_global_flags(sys.argv[1:]))


def _lookup(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        value = getattr(value, part, _MISSING)
        if value is _MISSING:
            return _MISSING
    return value


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(_show(item) for item in value)
    return str(value)


def resolve(key: str, config: Any = _MISSING) -> str | None:
    """The value ``key`` (dotted or a ``{...}`` template) has in ``config`` (default: :func:`help_config`),
    as help shows it; ``None`` when there is no config or no such key."""
    config = help_config() if config is _MISSING else config
    if config is None:
        return None
    if "{" not in key:
        value = _lookup(config, key)
        return None if value is _MISSING else _show(value)
    missing = False

    def field(match: re.Match[str]) -> str:
        nonlocal missing
        value = _lookup(config, match.group(1))
        if value is _MISSING:
            missing = True
            return match.group(0)
        return _show(value)

    text = _TEMPLATE_FIELD.sub(field, key)
    return None if missing else text


def default_text(action: argparse.Action, config: Any = _MISSING) -> str | None:
    """What ``(default: ...)`` says for ``action``: ``VALUE, KEY`` for a params.yaml default, the plain
    argparse default for an option with a value, ``None`` when there is nothing to show."""
    key = config_key(action)
    if key:
        value = resolve(key, config)
        return f"{value}, {shown_key(key)}" if value is not None else shown_key(key)
    default = action.default
    if (
        action.option_strings
        and action.nargs != 0
        and default not in (None, argparse.SUPPRESS)
        and not isinstance(default, bool)
    ):
        return _show(default)
    return None


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, plus: every option's help ends with its resolved default and the
    Examples epilog is printed as written (not re-wrapped)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default:" in text or "%(default)" in text:
            return text
        shown = default_text(action)
        if shown is None:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        text = self._whitespace_matcher.sub(" ", text).strip()  # type: ignore[attr-defined]
        return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)  # paths stay whole

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES_HEADING):
            return "\n".join(indent + line for line in text.splitlines())
        import textwrap

        text = self._whitespace_matcher.sub(" ", text).strip()  # type: ignore[attr-defined]
        return textwrap.fill(
            text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False, break_long_words=False
        )
