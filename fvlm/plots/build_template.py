"""Rebuild ``fvlm/plots/offline_template.html`` from the npm tarballs of vega, vega-lite and vega-embed.

    cd /tmp/vega && npm pack vega@5 vega-lite@5 vega-embed@6
    python -m fvlm.plots.build_template /tmp/vega            # writes fvlm/plots/offline_template.html

The page is DVC's default one (dvc_render.html.PAGE_HTML) with the three minified builds inlined in
place of its ``{scripts}`` placeholder, so the HTML ``dvc plots show`` writes needs no network.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
from pathlib import Path

from fvlm.plots import OFFLINE_TEMPLATE

# npm package -> its browser build inside the tarball, in load order (vega-embed needs the other two)
BUILDS = (
    ("vega", "package/build/vega.min.js"),
    ("vega-lite", "package/build/vega-lite.min.js"),
    ("vega-embed", "package/build/vega-embed.min.js"),
)
# the .map files are not shipped: a browser's developer tools would try to fetch them
SOURCE_MAP_COMMENT = re.compile(r"^//# sourceMappingURL=\S*\s*$", re.MULTILINE)
# what DVC fills in (dvc_render.html.HTML.embed); the inlined code must not contain them
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- {versions}: inlined (BSD-3-Clause, fvlm/plots/LICENSE.vega) so that the page needs no network;
         rebuilt by `python -m fvlm.plots.build_template` -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def read_build(tarball: Path, member: str) -> tuple[str, str]:
    """(version, minified code) of one npm tarball."""
    with tarfile.open(tarball) as archive:
        manifest = archive.extractfile("package/package.json")
        code = archive.extractfile(member)
        if manifest is None or code is None:
            raise SystemExit(
                f"{tarball}: no {member} inside; is it an `npm pack` tarball of vega 5 / vega-lite 5 / vega-embed 6?"
            )
        version = str(json.load(manifest)["version"])
        text = SOURCE_MAP_COMMENT.sub("", code.read().decode("utf-8"))
    if "</script" in text.lower() or any(p in text for p in DVC_PLACEHOLDERS):
        raise SystemExit(f"{tarball}: {member} holds '</script' or a DVC placeholder; it cannot be inlined as is")
    return version, text


def find_tarball(folder: Path, package: str) -> Path:
    # vega-5.33.1.tgz, not vega-lite-5.23.0.tgz: the name is followed by the version's digit
    matches = sorted(folder.glob(f"{package}-[0-9]*.tgz"))
    if len(matches) != 1:
        raise SystemExit(
            f"{folder}: expected one {package}-<version>.tgz, found {len(matches)}; run `npm pack {package}` there"
        )
    return matches[0]


def build_page(folder: Path) -> str:
    versions, scripts = [], []
    for package, member in BUILDS:
        version, code = read_build(find_tarball(folder, package), member)
        versions.append(f"{package} {version}")
        scripts.append(f"    <script type=\"text/javascript\">\n{code}\n    </script>")
    return PAGE.format(versions=", ".join(versions), scripts="\n".join(scripts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tarballs", type=Path, help="folder holding the three `npm pack` tarballs")
    parser.add_argument("--out", type=Path, default=OFFLINE_TEMPLATE, help="template to write")
    args = parser.parse_args(argv)
    page = build_page(args.tarballs)
    args.out.write_text(page, encoding="utf-8")
    print(f"{args.out}: {len(page.encode()) / 1e3:.0f} kB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
