"""Every ``fvlm`` command's ``--help``: help text on every option, resolved params.yaml defaults, Examples."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fvlm.cli import build_parser
from fvlm.commands import _help

# distinctive values, so a shown default can only come from this file
PARAMS = """\
paths:
  converted: data/conv-from-test
  metrics: metrics-from-test
convert:
  workers: 7
  min_slices: 13
reports:
  id_column: accession_from_test
demo_data:
  studies: 17
services:
  prefect_port: 4321
shard:
  workers: 3
tracking:
  registered_model: model-from-test
"""
EXPECTED = {  # command -> text its help must show
    "convert": [
        "default: 7, convert.workers",
        "default: 13, convert.min_slices",
        "default: data/conv-from-test, paths.converted",
    ],
    "label-reports": ["default: accession_from_test, reports.id_column"],
    "demo-data": ["default: 17, demo_data.studies"],
    "services": ["default: 4321, services.prefect_port"],
    "shard": ["default: 3, shard.workers", "default: metrics-from-test/shard.json, <paths.metrics>/shard.json"],
    "predict": ["default: models:/model-from-test@champion"],
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = sub
    return found


@pytest.fixture()
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    _help._load.cache_clear()
    yield path
    _help._load.cache_clear()


def _help_text(parser: argparse.ArgumentParser, params: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> str:
    monkeypatch.setattr(sys, "argv", ["fvlm", "--params", str(params), name, "--help"])
    return parser.format_help()


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_every_command_is_listed_and_walked() -> None:
    commands = _commands()
    assert {"demo", "convert", "segment", "parse-reports", "label-reports", "eval-labels", "shard", "train"} <= set(
        commands
    )
    assert {"evaluate", "predict", "pipeline", "deploy", "services", "config", "demo-data"} <= set(commands)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_has_texts_resolved_defaults_and_examples(
    name: str, params: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.config import load_config

    parser = _commands()[name]
    text = _help_text(parser, params, monkeypatch, name)
    flat = _flat(text)
    config = load_config(params)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"fvlm {name}: {label} has no help text"
        key = _help.config_key(action)
        if key:
            value = _help.resolve(key, config)
            assert value is not None, f"fvlm {name} {label}: {key} is not a params.yaml key"
            assert _flat(f"default: {value}, {_help.shown_key(key)}") in flat, f"fvlm {name} {label}"
    for expected in EXPECTED.get(name, []):
        assert expected in flat, f"fvlm {name}: {expected!r} not in help"
    # the last section is Examples, each one a comment line and an `fvlm` (or launcher) command line
    head, _, examples = text.rpartition("\nExamples:\n")
    assert head, f"fvlm {name}: no Examples section"
    lines = [line for line in examples.splitlines() if line.strip()]
    assert lines and all(line.startswith("  ") for line in lines)
    commands = [line.strip() for line in lines if not line.strip().startswith("#")]
    assert commands, f"fvlm {name}: no example command"
    for line in commands:  # each example runs this command
        assert line.startswith(("fvlm ", "torchrun ")) and f" {name}" in line, (name, line)


def test_without_a_loadable_config_help_shows_key_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("convert: [not, a, mapping\n")
    _help._load.cache_clear()
    try:
        text = _flat(_help_text(_commands()["convert"], broken, monkeypatch, "convert"))
    finally:
        _help._load.cache_clear()
    assert "(default: convert.workers)" in text and "Examples:" in text


def test_help_from_the_command_line_reads_the_params_flag(params: Path) -> None:
    """The real path: `fvlm --params P convert --help` in a fresh process; `fvlm --help` loads no config."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    shown = subprocess.run(
        [sys.executable, "-m", "fvlm.cli", "--params", str(params), "convert", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "default: 7, convert.workers" in _flat(shown)
    probe = (
        "import sys; from fvlm.cli import build_parser; build_parser().format_help(); "
        "print(sorted(m for m in ('core.config', 'pydantic', 'yaml', 'prefect') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True)
    assert loaded.stdout.strip() == "[]"
