"""Docs name only files that exist: every repo path written in README.md, docs/*.md and dvc.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOP = (
    "core",
    "fvlm",
    "flows",
    "preprocessing",
    "segmentation",
    "report_parsing",
    "synthetic",
    "training",
    "benchmarks",
    "experiments",
    "tests",
    "docs",
)
PATH_PATTERN = re.compile(r"(?<![\w./-])((?:" + "|".join(TOP) + r")/[\w./-]*\w)")
DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])


def named_paths(text: str) -> set[str]:
    found = set()
    for match in PATH_PATTERN.finditer(text):
        path = match.group(1)
        if any(mark in text[match.end() : match.end() + 1] for mark in "<*{"):
            continue  # a pattern such as volumes/<study_id>.nii.gz or part-*.parquet
        found.add(path)
    return found


def test_pattern_reads_paths() -> None:
    assert named_paths("see `training/trainer/loop.py` and core/layout.py.") == {
        "training/trainer/loop.py",
        "core/layout.py",
    }
    assert named_paths("data/converted/volumes/<id>.nii.gz") == set()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_doc_names_existing_files(doc: Path) -> None:
    missing = sorted(p for p in named_paths(doc.read_text()) if not (REPO / p).exists())
    assert not missing, f"{doc.relative_to(REPO)} names files that do not exist: {missing}"


OUTPUT_PAGES = {"ablation.md"}  # pages that programs write, not docs
MD_PATTERN = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")
SOURCES = sorted([*DOCS, REPO / "dvc.yaml", *(p for top in TOP[:-2] for p in (REPO / top).rglob("*.py"))])


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_references_resolve(source: Path) -> None:
    """A bare ``NAME.md`` must be a page of docs/ or of the repo root (DESIGN.md lives outside it)."""
    missing = sorted(
        name
        for name in set(MD_PATTERN.findall(source.read_text()))
        if name not in OUTPUT_PAGES and not (REPO / "docs" / name).exists() and not (REPO / name).exists()
    )
    assert not missing, f"{source.relative_to(REPO)} refers to pages that are not in the repo: {missing}"
