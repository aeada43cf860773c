"""The layering, checked from the source: libraries never import the CLI or the orchestration, and
neither packages nor files import each other in a circle.

Layers (lowest first): ``core`` <- libraries (``preprocessing``, ``segmentation``, ``report_parsing``,
``synthetic``, ``training``) <- ``flows`` (Prefect orchestration) <- ``fvlm`` (the CLI). Every import counts, also the
ones inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.import_graph import PACKAGES, REPO, import_graph, package_of, project_modules

LIBRARIES = ("core", "preprocessing", "segmentation", "report_parsing", "synthetic", "training")
FORBIDDEN_FOR_LIBRARIES = ("flows", "fvlm")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


GRAPH = import_graph()


def test_graph_sees_the_tree() -> None:
    assert "core.config" in GRAPH and "training" in GRAPH
    assert any("core.config" in deps for deps in GRAPH.values())


@pytest.mark.parametrize("library", LIBRARIES)
def test_libraries_do_not_import_cli_or_flows(library: str) -> None:
    upward = sorted(
        f"{module} -> {dep}"
        for module, deps in GRAPH.items()
        if package_of(module) == library
        for dep in deps
        if package_of(dep) in FORBIDDEN_FOR_LIBRARIES
    )
    assert not upward, "library imports the CLI or the orchestration:\n" + "\n".join(upward)


def test_core_imports_only_core() -> None:
    upward = sorted(
        f"{m} -> {d}" for m, deps in GRAPH.items() if package_of(m) == "core" for d in deps if package_of(d) != "core"
    )
    assert not upward, "core is the bottom layer:\n" + "\n".join(upward)


def test_flows_do_not_import_cli() -> None:
    upward = sorted(
        f"{m} -> {d}" for m, deps in GRAPH.items() if package_of(m) == "flows" for d in deps if package_of(d) == "fvlm"
    )
    assert not upward, "\n".join(upward)


def test_no_cycle_between_packages() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, deps in GRAPH.items():
        packages[package_of(module)] |= {package_of(d) for d in deps if package_of(d) != package_of(module)}
    cycle = find_cycle(packages)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle or [])


def test_no_cycle_between_files() -> None:
    # a package's __init__ importing its own submodules is the usual re-export, not a cycle
    files = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    cycle = find_cycle(files)
    assert cycle is None, "file import cycle: " + " -> ".join(cycle or [])


def test_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# inside training/: models at the bottom, tracking (MLflow; its logged pyfunc loads models), then trainer and
# evaluation side by side (the trainer imports no evaluation), inference on top
TRAINING_MAY_IMPORT = {
    "training.models": ("training.models",),
    "training.tracking": ("training.tracking", "training.models"),
    "training.metrics": (),
    "training.trainer": ("training.trainer", "training.models", "training.tracking", "training.metrics"),
    "training.evaluation": ("training.evaluation", "training.models", "training.tracking", "training.metrics"),
}


@pytest.mark.parametrize("part", sorted(TRAINING_MAY_IMPORT))
def test_training_parts_import_only_what_their_layer_allows(part: str) -> None:
    allowed = TRAINING_MAY_IMPORT[part]
    wrong = sorted(
        f"{module} -> {dep}"
        for module, deps in GRAPH.items()
        if module == part or module.startswith(part + ".")
        for dep in deps
        if package_of(dep) == "training"
        and dep != "training"
        and not any(dep == ok or dep.startswith(ok + ".") for ok in allowed)
    )
    assert not wrong, f"{part} imports outside its layer:\n" + "\n".join(wrong)


CHECKED_FOR_PRIVATES = (*PACKAGES, "benchmarks", "experiments")


def private_uses(path: Path, known: set[str]) -> list[str]:
    """``from other_module import _name`` and ``other_module._name`` in ``path`` (other = a project module
    that is not ``path`` itself)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    module_aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if target in known:
                    module_aliases[alias.asname or alias.name] = target
                elif alias.name.startswith("_") and not alias.name.startswith("__") and node.module in known:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known and alias.asname:
                    module_aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {module_aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    known = set(project_modules())
    uses = [
        use
        for top in CHECKED_FOR_PRIVATES
        for path in sorted((REPO / top).rglob("*.py"))
        for use in private_uses(path, known)
    ]
    assert not uses, "private names used across modules (make them public):\n" + "\n".join(uses)
