"""dvc.yaml deps cover the code each stage runs: editing any file a stage's command imports makes it stale.

For each stage, the command (``fvlm <subcommand>``) is ``fvlm/cli.py`` plus ``fvlm/commands/<subcommand>.py``;
the static import graph from those two (tests/import_graph.py: every import, also inside functions) gives
the repository files the stage can run, and each must lie under one of the stage's deps. The other way
round, a code dep the command never reaches is a hand-picked list gone stale (a package named for nothing).

Why every stage lists core/, fvlm/, flows/ and all four data-stage libraries: ``fvlm/cli.py`` imports every
command module to register it (so all of fvlm/ runs), ``fvlm.commands.run_stage`` imports ``flows.stages``,
and ``flows/stages.py`` imports the convert, segment, parse-reports and shard libraries at its top.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.import_graph import PACKAGES, REPO, import_chain, import_graph, project_modules, reachable

ENTRY_POINT = "fvlm.cli"  # [project.scripts] fvlm = "fvlm.cli:main"


def command_module(stage: str, cmd: str) -> str:
    """``fvlm parse-reports a b`` -> ``fvlm.commands.parse_reports`` (the module must exist)."""
    words = cmd.split()
    if len(words) < 2 or words[0] != "fvlm":
        raise AssertionError(f"dvc.yaml stage {stage}: cmd {cmd!r} is not an `fvlm <subcommand>` call")
    name = words[1].replace("-", "_")
    if not (REPO / "fvlm" / "commands" / f"{name}.py").is_file():
        raise AssertionError(f"dvc.yaml stage {stage}: no fvlm/commands/{name}.py for `fvlm {words[1]}`")
    return f"fvlm.commands.{name}"


def code_deps(stage: dict[str, Any]) -> list[str]:
    """The stage's deps that are repository paths (``${paths.*}`` data deps left out)."""
    return [str(dep).rstrip("/") for dep in stage.get("deps", []) if "${" not in str(dep)]


def covered_by(path: str, deps: list[str]) -> bool:
    return any(path == dep or path.startswith(dep + "/") for dep in deps)


def roots(stage: str, cmd: str) -> list[str]:
    return [ENTRY_POINT, command_module(stage, cmd)]


def reached_files(stage: str, cmd: str, graph: dict[str, set[str]], modules: dict[str, Path]) -> set[str]:
    """Repository files (relative paths) that the stage's command imports, directly or not."""
    return {str(modules[module].relative_to(REPO)) for module in reachable(graph, roots(stage, cmd))}


@pytest.fixture(scope="module")
def stages() -> dict[str, Any]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return project_modules()


def test_graph_packages_are_the_installed_packages() -> None:
    """A new top-level package must join tests/import_graph.py, or the walk would not see it."""
    # a regex, not tomllib: the project supports Python 3.10
    found = re.search(
        r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*\[([^\]]*)\]", (REPO / "pyproject.toml").read_text()
    )
    assert found, "pyproject.toml: no [tool.setuptools.packages.find] include list"
    installed = {item.strip().strip('"').rstrip("*") for item in found.group(1).split(",") if item.strip()}
    assert installed == set(PACKAGES)


def test_every_file_a_stage_imports_is_a_dep(
    stages: dict[str, Any], graph: dict[str, set[str]], modules: dict[str, Path]
) -> None:
    missing = {
        name: sorted(path for path in reached_files(name, stage["cmd"], graph, modules) if not covered_by(path, deps))
        for name, stage in stages.items()
        for deps in [code_deps(stage)]
    }
    missing = {name: paths for name, paths in missing.items() if paths}
    lines = []
    for name, paths in missing.items():
        file_module = {str(path.relative_to(REPO)): module for module, path in modules.items()}
        for package in sorted({path.split("/")[0] for path in paths}):
            files = [path for path in paths if path.split("/")[0] == package]
            chain = import_chain(graph, roots(name, stages[name]["cmd"]), file_module[files[0]])
            lines.append(f"  {name}: add {package} ({', '.join(files)}; via {' -> '.join(chain)})")
    assert not missing, "files a stage's command imports that its dvc.yaml deps do not cover:\n" + "\n".join(lines)


def test_every_code_dep_is_reached_or_a_data_file(
    stages: dict[str, Any], graph: dict[str, set[str]], modules: dict[str, Path]
) -> None:
    stale = []
    for name, stage in stages.items():
        reached = reached_files(name, stage["cmd"], graph, modules)
        for dep in code_deps(stage):
            path = REPO / dep
            if not path.exists():
                stale.append(f"{name}: {dep} does not exist")
            elif (path.is_dir() or path.suffix == ".py") and not any(covered_by(file, [dep]) for file in reached):
                stale.append(f"{name}: {dep} holds no module the command imports")
    assert not stale, "dvc.yaml deps that name nothing the stage runs:\n" + "\n".join(stale)


def test_the_walk_sees_what_a_hand_picked_list_missed(graph: dict[str, set[str]], modules: dict[str, Path]) -> None:
    """preprocessing/conversion.py (split out of convert.py) is reached by `fvlm convert`; the old hand-picked
    deps list omitted it, and the coverage check names it."""
    reached = reached_files("convert", "fvlm convert in out", graph, modules)
    assert {"fvlm/cli.py", "fvlm/commands/convert.py", "preprocessing/conversion.py"} <= reached
    assert "synthetic/cohort.py" not in reached and "fvlm/commands/predict.py" not in reached
    chain = import_chain(graph, roots("convert", "fvlm convert in out"), "preprocessing.conversion")
    assert chain[0] == "fvlm.commands.convert" and chain[-1] == "preprocessing.conversion"
    hand_picked = ["preprocessing/convert.py", "preprocessing/ctrate.py", "core", "fvlm", "flows"]
    assert not covered_by("preprocessing/conversion.py", hand_picked)
    assert covered_by("preprocessing/conversion.py", ["preprocessing"]) and not covered_by("core2/x.py", ["core"])


def test_a_cmd_that_is_no_fvlm_command_is_a_clear_error() -> None:
    with pytest.raises(AssertionError, match="no fvlm/commands/nope.py"):
        command_module("x", "fvlm nope a b")
    with pytest.raises(AssertionError, match="is not an `fvlm <subcommand>` call"):
        command_module("x", "python train.py")
