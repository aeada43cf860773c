"""``python -m fvlm.install_check [--fix]``: the two ways a plain ``pip install`` of this package goes wrong.

* **CUDA torch on a machine without a GPU.** PyPI's Linux torch wheel is the CUDA build (it pulls about 15
  ``nvidia-*`` packages, gigabytes); on a CPU machine the CPU wheel of the PyTorch CPU index does the same
  work. A warning: the CUDA build still runs on the CPU.
* **PyPI's 2015 ``argparse``.** TotalSegmentator -> nnU-Net -> batchgenerators -> unittest2 requires it:
  every batchgenerators release nnU-Net 2.6 accepts (0.25.1-0.25.5) requires unittest2, every unittest2
  release (0.8.0-1.1.0) requires ``argparse``, pip cannot drop a transitive requirement, and nothing
  imports unittest2 at run time. Its ``argparse.py`` in site-packages is harmless on a normal ``sys.path``
  (the standard library comes first), but Prefect starts its own temporary server (a flow run without a
  server: from Python, the test suite's ``prefect_test_harness``) and ``prefect server start --background``
  as ``python -m uvicorn --app-dir <site-packages>``, which puts site-packages *ahead of* the standard
  library: pydantic-settings' ``from argparse import BooleanOptionalAction`` then fails and the server dies
  at start. ``fvlm services up`` (``prefect server start`` in the foreground imports the standard
  library's argparse before uvicorn moves the path) and the one server of ``fvlm demo`` / ``fvlm pipeline``
  (started without ``--app-dir``, ``flows.services.temporary_server_command``) are not affected. An error;
  ``--fix`` uninstalls it and installs an empty placeholder distribution named ``argparse`` (a wheel it
  writes itself, version ``1.4.0+stdlib``, no module: ``import argparse`` stays the standard library's),
  which satisfies unittest2's requirement, so ``pip check`` stays clean.

Exit 0 when nothing is wrong or only warnings remain, 1 on an error. ``make setup`` runs it with ``--fix``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# the placeholder distribution: a name and a version pip accepts for unittest2's bare "argparse", no files
PLACEHOLDER_VERSION = "1.4.0+stdlib"
PLACEHOLDER_FILES = {
    "METADATA": (
        f"Metadata-Version: 2.1\nName: argparse\nVersion: {PLACEHOLDER_VERSION}\n"
        "Summary: Placeholder: the standard library's argparse satisfies this requirement (fvlm.install_check)\n"
    ),
    "WHEEL": "Wheel-Version: 1.0\nGenerator: fvlm.install_check\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}


@dataclass(frozen=True)
class Finding:
    severity: str  # "warning" or "error"
    message: str


def site_dirs() -> list[Path]:
    import site
    import sysconfig

    folders = [Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")]
    folders += [Path(folder) for folder in site.getsitepackages()]
    return list(dict.fromkeys(folders))


def shadowing_argparse(folders: list[Path]) -> list[Path]:
    """``argparse`` modules in site-packages (the standard library's never lives there)."""
    found = []
    for folder in folders:
        for candidate in (folder / "argparse.py", folder / "argparse" / "__init__.py"):
            if candidate.is_file():
                found.append(candidate)
    return found


def argparse_finding(folders: list[Path]) -> Finding | None:
    modules = shadowing_argparse(folders)
    if not modules:
        return None
    return Finding(
        "error",
        f"{modules[0]}: PyPI's 2015 argparse (required by unittest2 <- batchgenerators <- nnU-Net <- "
        "TotalSegmentator) shadows the standard library inside Prefect's own temporary server (a flow run "
        "without a server, the test suite's harness), which then fails to start (fvlm services up / demo / "
        "pipeline are not affected); run `python -m fvlm.install_check --fix` (it replaces it by an empty "
        "placeholder distribution)",
    )


def cuda_packages() -> list[str]:
    from importlib.metadata import distributions

    names = {(dist.metadata["Name"] or "").lower() for dist in distributions()}
    return sorted(name for name in names if name.startswith("nvidia-"))


def torch_finding(torch_cuda: str | None, gpu_visible: bool, nvidia: list[str]) -> Finding | None:
    """``torch_cuda``: ``torch.version.cuda`` (None for the CPU build)."""
    if torch_cuda is None or gpu_visible:
        return None
    return Finding(
        "warning",
        f"torch is the CUDA {torch_cuda} build ({len(nvidia)} nvidia-* packages installed) but this machine "
        "shows no GPU: the CPU wheel does the same work without them; "
        f"pip install --force-reinstall 'torch==<version>+cpu' --extra-index-url {TORCH_CPU_INDEX} "
        "(then `pip uninstall` the nvidia-* packages), or `make setup` in a fresh venv",
    )


def check_torch() -> Finding | None:
    try:
        import torch
    except ImportError:
        return Finding("error", "torch is not installed; install it first (see README, Installing without make)")
    cuda = getattr(torch.version, "cuda", None)
    return torch_finding(cuda, bool(cuda) and torch.cuda.is_available(), cuda_packages() if cuda else [])


def installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def write_placeholder_wheel(folder: Path) -> Path:
    """``argparse-1.4.0+stdlib-py3-none-any.whl``: metadata only (no build backend, no network)."""
    dist_info = f"argparse-{PLACEHOLDER_VERSION}.dist-info"
    wheel = folder / f"argparse-{PLACEHOLDER_VERSION}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, text in PLACEHOLDER_FILES.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            archive.writestr(f"{dist_info}/{name}", data)
            record.append(f"{dist_info}/{name},sha256={digest},{len(data)}")
        archive.writestr(f"{dist_info}/RECORD", "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n")
    return wheel


def fix_argparse(folders: list[Path]) -> None:
    pip = [sys.executable, "-m", "pip"]
    # a module left by an older install survives one uninstall: repeat while one is still there
    for _ in range(3):
        if not shadowing_argparse(folders):
            break
        subprocess.run([*pip, "uninstall", "-q", "-y", "argparse"], check=False)
    if installed_version("argparse") is not None:
        return
    with tempfile.TemporaryDirectory(prefix="fvlm-argparse-") as folder:
        wheel = write_placeholder_wheel(Path(folder))
        subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fvlm.install_check", description=__doc__.split("\n")[0])
    parser.add_argument("--fix", action="store_true", help="replace PyPI's argparse by the empty placeholder")
    args = parser.parse_args(argv)
    folders = site_dirs()
    if args.fix:
        fix_argparse(folders)
    findings = [finding for finding in (argparse_finding(folders), check_torch()) if finding]
    for finding in findings:
        print(f"fvlm install check: {finding.severity}: {finding.message}", file=sys.stderr)
    if not findings:
        print("fvlm install check: ok (argparse is the standard library's; torch matches the machine)", file=sys.stderr)
    return 1 if any(finding.severity == "error" for finding in findings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
