"""``dvc plots show`` draws every plot without network: the repo's ``.dvc/config`` points DVC at
``fvlm/plots/offline_template.html`` (vega, vega-lite and vega-embed inlined), and the page DVC writes with
it loads nothing from outside (no browser here: the HTML is read; docs/plots.md has the browser check)."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from fvlm.plots import LICENSE, OFFLINE_TEMPLATE
from fvlm.plots.build_template import build_page

REPO = Path(__file__).resolve().parents[1]
# any tag attribute that makes a browser fetch: <script src=...>, <link href=...>, <img src=...>, ...
EXTERNAL_RESOURCE = re.compile(r"<(script|link|img|iframe|source)\b[^>]*\b(src|href)\s*=\s*[\"']?\s*(https?:)?//", re.I)
# the globals the inlined builds define (vega-embed looks the other two up by these names)
GLOBALS = ("vega={}", "vegaLite={}", "vegaEmbed=")


def external_resources(html: str) -> list[str]:
    return [match.group(0) for match in EXTERNAL_RESOURCE.finditer(html)]


def test_template_inlines_vega_and_loads_nothing_from_outside() -> None:
    page = OFFLINE_TEMPLATE.read_text(encoding="utf-8")
    assert "{plot_divs}" in page
    # DVC fills {scripts} with its CDN <script> tags; the offline page has none to fill
    assert "{scripts}" not in page
    assert external_resources(page) == []
    compact = page.replace(" ", "")
    for name in GLOBALS:
        assert name in compact, f"{OFFLINE_TEMPLATE.name} does not define {name.rstrip('={}')}"
    assert "sourceMappingURL" not in page
    assert "BSD" in LICENSE.read_text(encoding="utf-8")


def test_repo_dvc_config_uses_the_offline_template() -> None:
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        configured = repo.config["plots"]["html_template"]
        # DVC reads a relative path from .dvc/ (dvc/commands/plots.py)
        assert (Path(repo.dvc_dir) / configured).resolve() == OFFLINE_TEMPLATE


def test_template_is_installed_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data.get("fvlm.plots", [])
    assert "*.html" in patterns and "LICENSE.vega" in patterns


def test_dvc_render_with_the_template_keeps_no_cdn_url(tmp_path: Path) -> None:
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    points = [{"step": step, "loss": 7.0 - 0.01 * step, "rev": "workspace"} for step in range(1, 11)]
    renderer = VegaRenderer(points, "metrics/plots/train_loss.csv", template="linear", x="step", y="loss")
    assert "https://" in renderer.SCRIPTS  # what DVC would add with its own page
    out = render_html([renderer], tmp_path / "index.html", html_template=str(OFFLINE_TEMPLATE))
    html = Path(out).read_text(encoding="utf-8")
    assert external_resources(html) == []
    assert "vegaEmbed('#" in html and "{plot_divs}" not in html


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    path.write_text(buffer.getvalue())


def test_dvc_plots_show_draws_the_three_data_plots_offline(tmp_path: Path) -> None:
    """The repo's own dvc.yaml plot definitions over small CSVs of the shape the stages write."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        (project / name).write_text((REPO / name).read_text())
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=project, check=True)
    # the same setting as the repo's .dvc/config, absolute because the project lies elsewhere
    subprocess.run([*dvc, "config", "plots.html_template", str(OFFLINE_TEMPLATE)], cwd=project, check=True)
    _write_csv(project / "metrics/plots/train_loss.csv", ["step", "loss"], [[s, 7 - 0.1 * s] for s in range(1, 21)])
    _write_csv(
        project / "metrics/plots/auc_per_label.csv", ["label", "auc"], [["emphysema", 0.71], ["atelectasis", 0.64]]
    )
    for label in ("emphysema", "atelectasis"):
        _write_csv(project / f"data/eval/roc_points/roc_{label}.csv", ["fpr", "tpr"], [[0, 0], [0.3, 0.7], [1, 1]])
    # the pictures evaluate and train draw beside the data (dvc.yaml plots them as images)
    (project / "data/eval/roc").mkdir(parents=True)
    for picture in ("data/eval/roc/roc_all.png", "metrics/plots/train_loss.png"):
        Image.new("RGB", (8, 8), "white").save(project / picture)
    shown = subprocess.run([*dvc, "plots", "show"], cwd=project, capture_output=True, text=True, check=False)
    assert shown.returncode == 0, shown.stderr
    html = (project / "dvc_plots" / "index.html").read_text(encoding="utf-8")
    assert external_resources(html) == []
    assert html.count('<img src="static/') == 2  # the pictures, copied beside the page
    drawn = re.findall(r"vegaEmbed\('#(\w+)'", html)
    assert sorted(drawn) == [
        "data_eval_roc_points_roc_atelectasis_csv",
        "data_eval_roc_points_roc_emphysema_csv",
        "metrics_plots_auc_per_label_csv",
        "metrics_plots_train_loss_csv",
    ]


def _npm_tarball(folder: Path, package: str, version: str, member: str, code: str) -> None:
    with tarfile.open(folder / f"{package}-{version}.tgz", "w:gz") as archive:
        for name, text in (("package/package.json", f'{{"version": "{version}"}}'), (member, code)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def test_builder_inlines_the_three_builds_in_load_order(tmp_path: Path) -> None:
    for package, version in (("vega", "5.1.0"), ("vega-lite", "5.2.0"), ("vega-embed", "6.3.0")):
        code = f"var {package.replace('-', '_')}=1;\n//# sourceMappingURL={package}.min.js.map\n"
        _npm_tarball(tmp_path, package, version, f"package/build/{package}.min.js", code)
    page = build_page(tmp_path)
    assert page.index("var vega=1") < page.index("var vega_lite=1") < page.index("var vega_embed=1")
    assert "vega 5.1.0, vega-lite 5.2.0, vega-embed 6.3.0" in page
    assert "sourceMappingURL" not in page and "{plot_divs}" in page and "{scripts}" not in page


def test_builder_names_a_missing_tarball(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="npm pack vega"):
        build_page(tmp_path)
