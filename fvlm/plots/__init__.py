"""Offline ``dvc plots show``: DVC's HTML page with vega, vega-lite and vega-embed inlined.

DVC's default page loads the three scripts from a CDN, so on an air-gapped site the data plots (loss curve,
per-label AUC, ROC points) stay blank. ``offline_template.html`` holds the same page with the scripts inside
it and no ``{scripts}`` placeholder (DVC then adds no CDN tags); ``.dvc/config`` ``plots.html_template``
points to it. ``python -m fvlm.plots.build_template`` rebuilds it from ``npm pack`` tarballs.
"""

from __future__ import annotations

from pathlib import Path

OFFLINE_TEMPLATE = Path(__file__).resolve().with_name("offline_template.html")
LICENSE = Path(__file__).resolve().with_name("LICENSE.vega")
