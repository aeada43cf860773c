"""Documented check (issue #31): the QC pictures open from the Prefect UI and from the MLflow UI.

    .venv/bin/python -m tests.flows.ui_screenshots --out docs/img

1. ``fvlm services up`` on two free ports (Prefect + MLflow under a temporary ``--data-dir``; they die
   with this process);
2. in a child process pointed at them: ``demo-data``'s generator writes a 2-study synthetic cohort, the
   ``fvlm-convert`` and ``fvlm-segment`` flows run on it with QC pictures, so the segment flow logs
   ``qc/*.png`` to an MLflow run ``segment-qc`` and writes the Prefect markdown artifact ``segment-qc``;
3. the artifact is read back through the Prefect API and every link in it fetched: each must be http and
   answer ``200 image/png`` (no ``file://``);
4. a headless Chromium renders the artifact's page in the Prefect UI and the QC picture in the MLflow
   run's artifact view: their DOM must show the artifact / run (not an error page), and each is saved as a
   PNG (``prefect_ui.png``, ``mlflow_ui.png``, palette-reduced when larger than 300 KB).

Chromium: ``apt-get install -y chromium`` (Debian) or ``FVLM_CHROMIUM=/path/to/chrome``. No network is
used: both servers listen on 127.0.0.1 and Chromium runs with its background networking off.
``tests/flows/test_ui_screenshots.py`` (slow) runs the same check into a temporary folder.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
MAX_PNG_BYTES = 300_000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,900",
)

_CHILD = """
import json, sys
from pathlib import Path
from core.env import apply_offline_env
apply_offline_env()
from synthetic import generate_cohort
from flows.stages import convert_flow, segment_flow
from tests.flows.stage_chain import convert_job, fan_out, segment_job
work = Path(sys.argv[1])
generate_cohort(work / "cohort", studies=2, seed=0, size="demo", workers=1)
convert_flow(convert_job(work / "cohort" / "dicom", work / "converted"), fan_out(batch_size=1))
summary = segment_flow(segment_job(work / "converted", work / "segmented", work / "cohort" / "masks", qc=True),
                       fan_out(batch_size=1))
print(json.dumps({"qc": sorted(str(row.get("qc_path")) for row in summary.rows if row.get("qc_path"))}))
"""


class CheckFailed(AssertionError):
    """What the UIs or their links did not show; the message says which."""


@dataclass
class UiCheck:
    prefect_url: str
    mlflow_url: str
    run_id: str
    experiment_id: str
    artifact_markdown: str
    links: dict[str, str] = field(default_factory=dict)  # link -> "200 image/png (N bytes)"
    screenshots: dict[str, Path] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)  # screenshot name -> the URL rendered
    seconds: float = 0.0


def find_chromium() -> str | None:
    """``$FVLM_CHROMIUM``, else the first Chromium / Chrome on PATH; None without one."""
    configured = os.environ.get("FVLM_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _chromium(
    chromium: str, url: str, *args: str, budget_ms: int, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="fvlm-chromium-") as profile:
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",  # let the single-page apps fetch and render first
            *args,
            url,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)  # noqa: S603


def rendered_dom(chromium: str, url: str, *, budget_ms: int = 20_000, timeout_s: float = 180) -> str:
    """The page's DOM after its scripts ran (``--dump-dom``)."""
    return _chromium(chromium, url, "--dump-dom", budget_ms=budget_ms, timeout_s=timeout_s).stdout


def screenshot(chromium: str, url: str, png: Path, *, budget_ms: int = 20_000, timeout_s: float = 180) -> Path:
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    result = _chromium(chromium, url, f"--screenshot={png}", budget_ms=budget_ms, timeout_s=timeout_s)
    if not png.is_file():
        raise CheckFailed(f"chromium wrote no screenshot of {url} (rc {result.returncode}): {result.stderr[-1500:]}")
    return _shrink(png)


def _shrink(png: Path, limit: int = MAX_PNG_BYTES) -> Path:
    """A UI screenshot has few colours: a 256-colour palette keeps it legible and small (docs/img)."""
    if png.stat().st_size <= limit:
        return png
    from PIL import Image

    with Image.open(png) as image:
        reduced = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    reduced.save(png, optimize=True)
    return png


def _get(url: str, timeout_s: float = 30) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1
        return response.status, response.headers.get("Content-Type", ""), response.read()


def _post_json(url: str, body: dict[str, Any], timeout_s: float = 30) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - 127.0.0.1
        return json.loads(response.read())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_check(out_dir: Path, work_dir: Path, *, chromium: str | None = None, timeout_s: float = 600) -> UiCheck:
    """Steps 1-4 of the module docstring; raises :class:`CheckFailed` on what the UIs do not show."""
    from fvlm.cli import main as fvlm

    chromium = chromium or find_chromium()
    if chromium is None:
        raise CheckFailed("no Chromium found (apt-get install -y chromium, or set FVLM_CHROMIUM)")
    started = time.monotonic()
    data_dir = work_dir / "services"
    ports = ["--prefect-port", str(_free_port()), "--mlflow-port", str(_free_port())]
    common = ["--data-dir", str(data_dir), *ports]
    previous = os.environ.get("FVLM_SERVICES_DIE_WITH_PARENT")
    os.environ["FVLM_SERVICES_DIE_WITH_PARENT"] = "1"  # no servers outlive a killed check
    try:
        if fvlm(["services", "up", *common, "--timeout", "300"]) != 0:
            raise CheckFailed(f"fvlm services up failed; logs in {data_dir / 'logs'}")
        env_lines = (data_dir / "services.env").read_text().splitlines()
        client = dict(line.removeprefix("export ").split("=", 1) for line in env_lines if line.startswith("export "))
        check = _check_against(
            client["PREFECT_API_URL"], client["MLFLOW_TRACKING_URI"], work_dir, out_dir, chromium, timeout_s
        )
    finally:
        fvlm(["services", "down", *common])
        if previous is None:
            os.environ.pop("FVLM_SERVICES_DIE_WITH_PARENT", None)
        else:
            os.environ["FVLM_SERVICES_DIE_WITH_PARENT"] = previous
    check.seconds = time.monotonic() - started
    return check


def _check_against(
    prefect_api: str, mlflow_url: str, work_dir: Path, out_dir: Path, chromium: str, timeout_s: float
) -> UiCheck:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("FVLM_NO_FLOWS", "MLFLOW_EXPERIMENT_NAME")},
        "PYTHONPATH": str(REPO),
        "PREFECT_API_URL": prefect_api,
        "MLFLOW_TRACKING_URI": mlflow_url,
        "PREFECT_HOME": str(work_dir / "prefect-client"),
    }
    child = subprocess.run(  # noqa: S603 - fixed argv
        [sys.executable, "-c", _CHILD, str(work_dir)],
        cwd=work_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if child.returncode != 0:
        raise CheckFailed(f"convert + segment flows failed (rc {child.returncode}):\n{child.stderr[-3000:]}")
    qc = json.loads(child.stdout.strip().splitlines()[-1])["qc"]
    if len(qc) != 2:
        raise CheckFailed(f"expected 2 QC pictures, the segment flow wrote {qc}")

    artifacts = _post_json(f"{prefect_api}/artifacts/filter", {"artifacts": {"key": {"any_": ["segment-qc"]}}})
    if not artifacts:
        raise CheckFailed("no segment-qc artifact on the Prefect server")
    markdown = str(artifacts[0]["data"])
    if "file://" in markdown:
        raise CheckFailed(f"the segment-qc artifact still links file:// URLs:\n{markdown}")
    links = re.findall(r"\]\((http[^)\s]+)\)", markdown)
    picture_links = [link for link in links if "/get-artifact?" in link]
    run_pages = [link for link in links if "/#/experiments/" in link]
    if len(picture_links) != 2 or len(run_pages) != 1:
        raise CheckFailed(f"expected 2 picture links and 1 run page in the artifact:\n{markdown}")
    check = UiCheck(
        prefect_url=prefect_api.removesuffix("/api"),
        mlflow_url=mlflow_url,
        run_id=urllib.parse.parse_qs(urllib.parse.urlsplit(picture_links[0]).query)["run_uuid"][0],
        experiment_id=run_pages[0].split("/#/experiments/", 1)[1].split("/", 1)[0],
        artifact_markdown=markdown,
    )
    for link in picture_links:
        status, content_type, body = _get(link)
        if status != 200 or not content_type.startswith("image/png") or not body.startswith(b"\x89PNG"):
            raise CheckFailed(f"{link} answered {status} {content_type} ({len(body)} bytes), not a PNG")
        check.links[link] = f"{status} {content_type} ({len(body)} bytes)"

    # the Prefect UI: the artifact's own page (v1 UI), its markdown rendered with the http links
    prefect_page = f"{check.prefect_url}/artifacts/artifact/{artifacts[0]['id']}"
    dom = rendered_dom(chromium, prefect_page)
    hrefs = {html.unescape(href) for href in re.findall(r'href="([^"]+)"', dom)}
    if "QC pictures" not in dom or check.run_id not in dom or not set(picture_links) <= hrefs:
        raise CheckFailed(f"the Prefect UI page {prefect_page} does not link the pictures:\n{dom[-2000:]}")
    check.pages["prefect_ui.png"] = prefect_page
    check.screenshots["prefect_ui.png"] = screenshot(chromium, prefect_page, out_dir / "prefect_ui.png")

    # the MLflow UI: the run's artifact view with the first QC picture open
    picture = Path(qc[0]).name
    mlflow_page = f"{mlflow_url}/#/experiments/{check.experiment_id}/runs/{check.run_id}/artifacts/qc/{picture}"
    dom = rendered_dom(chromium, mlflow_page)
    if "segment-qc" not in dom or picture not in dom:
        raise CheckFailed(f"the MLflow UI page {mlflow_page} does not show the run's QC picture:\n{dom[-2000:]}")
    check.pages["mlflow_ui.png"] = mlflow_page
    check.screenshots["mlflow_ui.png"] = screenshot(chromium, mlflow_page, out_dir / "mlflow_ui.png")
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img", help="where the two PNGs go")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fvlm-ui-check-") as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        try:
            check = run_check(args.out, work)
        except CheckFailed as error:
            print(f"ui check FAILED: {error}", file=sys.stderr)
            return 1
    for link, answer in check.links.items():
        print(f"link {link} -> {answer}")
    for name, path in check.screenshots.items():
        print(f"screenshot {path} ({path.stat().st_size // 1024} KB) of {check.pages[name]}")
    print(f"ui check passed in {check.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
