"""The static import graph of this repository's packages, read from the source (no module is imported).

Every import counts, also the ones inside functions and under ``TYPE_CHECKING``: a lazy import is still a
dependency. Shared by tests/test_architecture.py (layers, cycles) and tests/test_dvc_deps.py (what each
dvc.yaml stage's command reaches).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the installed top-level packages (pyproject.toml [tool.setuptools.packages.find]; tests/test_dvc_deps.py
# checks the two lists agree)
PACKAGES = ("core", "preprocessing", "segmentation", "report_parsing", "synthetic", "training", "flows", "fvlm")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports (resolved to the longest known module name)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def resolve(target: str) -> str | None:
        while target:
            if target in known:
                return target
            target = target.rpartition(".")[0]
        return None

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        for target in targets:
            resolved = resolve(target)
            if resolved and resolved != name:
                found.add(resolved)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imported_modules(path, name, known) for name, path in modules.items()}


def package_of(module: str) -> str:
    return module.split(".", 1)[0]


def reachable(graph: dict[str, set[str]], roots: Iterable[str]) -> set[str]:
    """Every module ``roots`` import, directly or not, plus the roots; importing ``a.b.c`` also runs the
    packages ``a`` and ``a.b`` (their ``__init__``), so those count as reached too."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph)
        todo.extend(graph.get(module, ()))
    return seen


def import_chain(graph: dict[str, set[str]], roots: Iterable[str], target: str) -> list[str]:
    """A shortest chain of imports from one of ``roots`` to ``target`` (``[]`` when none): why it is reached."""
    parents: dict[str, str | None] = {root: None for root in roots}
    queue = list(parents)
    while queue:
        module = queue.pop(0)
        if module == target:
            chain = [module]
            while parents[chain[-1]] is not None:
                chain.append(parents[chain[-1]])  # type: ignore[arg-type]
            return chain[::-1]
        parts = module.split(".")
        packages = [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in graph]
        for nxt in sorted(graph.get(module, set())) + packages:
            if nxt not in parents:
                parents[nxt] = module
                queue.append(nxt)
    return []
