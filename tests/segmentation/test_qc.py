from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from segmentation.qc import write_qc_png
from segmentation.stats import anatomy_index_map


def test_qc_mosaic_is_a_png_with_anatomy_colours(tmp_path: Path, make_phantom) -> None:
    hu, ids = make_phantom((48, 40, 24))
    hu_zyx, index_zyx = hu.transpose(2, 1, 0), anatomy_index_map(ids.transpose(2, 1, 0), "ctrate4")
    path = write_qc_png(
        hu_zyx,
        index_zyx,
        ("lung", "heart", "esophagus", "aorta"),
        (3.0, 1.0, 1.0),
        tmp_path / "qc" / "st_1.png",
        title="st_1",
        voxel_counts={"lung": 10},
    )
    assert path == tmp_path / "qc" / "st_1.png" and not list((tmp_path / "qc").glob(".*tmp*"))
    with Image.open(path) as picture:
        rgb = np.asarray(picture.convert("RGB")).astype(int)
    assert picture.format == "PNG" and rgb.shape[1] > 4 * rgb.shape[0] / 2
    # the lung overlay colour (#e6194b blended over grey) shows up: red clearly above green and blue
    reddish = (rgb[..., 0] - rgb[..., 1] > 60) & (rgb[..., 0] - rgb[..., 2] > 40)
    assert reddish.sum() > 200


def test_qc_without_any_anatomy_still_writes(tmp_path: Path) -> None:
    hu = np.zeros((6, 10, 12), dtype=np.int16)
    index = np.zeros((6, 10, 12), dtype=np.uint8)
    path = write_qc_png(hu, index, ("lung",), (1.0, 1.0, 1.0), tmp_path / "empty.png")
    assert path.stat().st_size > 0
