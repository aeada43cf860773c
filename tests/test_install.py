"""The install: every third-party package our code imports is declared in pyproject.toml, the Makefile makes
the torch CPU/CUDA choice itself, and ``fvlm.install_check`` names the two ways a plain ``pip install`` goes
wrong (PyPI's argparse shadowing the stdlib in Prefect's server; a CUDA torch without a GPU)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from fvlm import install_check

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "fvlm", "flows", "preprocessing", "segmentation", "report_parsing", "synthetic", "training")
# imports allowed from an extra instead of the dependencies (each sits behind an ImportError with a hint)
EXTRA_IMPORTS = {"prefect_dask": "dask", "dask": "dask", "distributed": "dask"}  # module -> extra


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> tuple[set[str], dict[str, set[str]]]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {normalized(Requirement(line).name) for line in project["dependencies"]}
    extras = {
        extra: {normalized(Requirement(line).name) for line in lines}
        for extra, lines in project["optional-dependencies"].items()
    }
    return names, extras


def third_party_imports() -> dict[str, str]:
    """Top-level module -> first file importing it, over the installed packages (lazy imports included)."""
    skip = set(sys.stdlib_module_names) | set(PACKAGES) | {"__future__"}
    found: dict[str, str] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in skip:
                        found.setdefault(top, str(path.relative_to(REPO)))
    return found


def test_every_imported_package_is_declared() -> None:
    dependencies, extras = declared()
    providers = packages_distributions()
    missing = []
    for module, where in sorted(third_party_imports().items()):
        distributions = {normalized(name) for name in providers.get(module, [])}
        if not distributions:
            missing.append(f"{module} ({where}): not installed here, so its distribution is unknown")
            continue
        allowed = dependencies | extras.get(EXTRA_IMPORTS.get(module, ""), set())
        if not distributions & allowed:
            missing.append(f"{module} ({where}): distribution {sorted(distributions)} not in pyproject.toml")
    assert not missing, "imported but not declared:\n  " + "\n  ".join(missing)


def test_the_two_undeclared_ones_of_issue_31_are_declared() -> None:
    dependencies, _ = declared()
    assert {"rich", "ruamel-yaml"} <= dependencies


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", "torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu"), ("cuda", "torch==2.13.0")],
)
def test_make_setup_installs_the_torch_build_of_the_device(device: str, expected: str, tmp_path: Path) -> None:
    if device == "cpu" and sys.platform != "linux":
        pytest.skip("the +cpu wheels are chosen on Linux only (PyPI's torch elsewhere has no CUDA)")
    shown = subprocess.run(
        ["make", "-n", "-B", "setup", f"VENV={tmp_path / 'venv'}", f"TORCH_DEVICE={device}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    torch_lines = [line for line in shown.stdout.splitlines() if "pip install -q --no-deps torch" in line]
    assert len(torch_lines) == 1 and torch_lines[0].endswith(f"pip install -q --no-deps {expected}")
    # the install check runs in the setup, after the package
    assert "-m fvlm.install_check --fix" in shown.stdout


def test_argparse_in_site_packages_is_an_error(tmp_path: Path) -> None:
    assert install_check.argparse_finding([tmp_path]) is None
    (tmp_path / "argparse.py").write_text("__version__ = '1.4.0'\n")
    finding = install_check.argparse_finding([tmp_path])
    assert finding is not None and finding.severity == "error"
    assert str(tmp_path / "argparse.py") in finding.message and "--fix" in finding.message


def test_this_environment_has_the_standard_library_argparse() -> None:
    assert install_check.shadowing_argparse(install_check.site_dirs()) == []


def test_cuda_torch_without_a_gpu_is_a_warning() -> None:
    assert install_check.torch_finding(None, gpu_visible=False, nvidia=[]) is None  # the CPU build
    assert install_check.torch_finding("12.8", gpu_visible=True, nvidia=["nvidia-cublas-cu12"]) is None
    finding = install_check.torch_finding("12.8", gpu_visible=False, nvidia=["nvidia-cublas-cu12"] * 15)
    assert finding is not None and finding.severity == "warning"
    assert "15 nvidia-* packages" in finding.message and install_check.TORCH_CPU_INDEX in finding.message


def test_the_argparse_placeholder_is_metadata_only(tmp_path: Path) -> None:
    """The wheel ``--fix`` installs: a distribution named argparse that ships no module (the stdlib's stays)."""
    import zipfile

    wheel = install_check.write_placeholder_wheel(tmp_path)
    assert wheel.name == f"argparse-{install_check.PLACEHOLDER_VERSION}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert all(name.startswith(f"argparse-{install_check.PLACEHOLDER_VERSION}.dist-info/") for name in names)
    metadata = zipfile.ZipFile(wheel).read(f"argparse-{install_check.PLACEHOLDER_VERSION}.dist-info/METADATA")
    assert b"Name: argparse" in metadata and b"Version: 1.4.0+stdlib" in metadata
    # unittest2 asks for a bare "argparse": any version satisfies it
    assert Requirement("argparse").specifier.contains(install_check.PLACEHOLDER_VERSION)


def test_pip_installs_the_placeholder_offline(tmp_path: Path) -> None:
    wheel = install_check.write_placeholder_wheel(tmp_path)
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target)]
    installed = subprocess.run([*command, str(wheel)], capture_output=True, text=True, check=False)
    assert installed.returncode == 0, installed.stderr
    assert sorted(path.name for path in target.iterdir()) == [f"argparse-{install_check.PLACEHOLDER_VERSION}.dist-info"]
    assert install_check.shadowing_argparse([target]) == []
