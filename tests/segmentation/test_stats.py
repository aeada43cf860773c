from __future__ import annotations

import numpy as np

from segmentation.stats import anatomy_index_map, anatomy_stats


def test_counts_bbox_volume_and_fov_cut() -> None:
    ids = np.zeros((10, 20, 30), dtype=np.uint8)  # (z, y, x)
    ids[0:4, 5:10, 5:15] = 10  # lung lobe touching the first slice
    ids[2:5, 12:15, 20:25] = 51  # heart, inside the FOV
    ids[3:6, 0:3, 0:2] = 52  # aorta touching y_first and x_first
    stats = anatomy_stats(ids, "ctrate4", (2.0, 1.0, 0.5))
    lung, heart, esophagus, aorta = (stats[name] for name in ("lung", "heart", "esophagus", "aorta"))
    assert lung.voxels == 4 * 5 * 10
    assert lung.bbox_zyx == (0, 5, 5, 4, 10, 15)
    assert lung.touches == ("z_first",) and lung.cut_by_fov
    assert abs(lung.volume_ml - 200 * 1.0 / 1000) < 1e-9
    assert heart.voxels == 45 and not heart.cut_by_fov and heart.bbox_zyx == (2, 12, 20, 5, 15, 25)
    assert heart.missing_classes == ("atrial_appendage_left",)
    assert set(aorta.touches) == {"y_first", "x_first"}
    assert not esophagus.present and esophagus.bbox_zyx is None and esophagus.missing_classes == ("esophagus",)
    assert set(lung.missing_classes) == {
        "lung_lower_lobe_left",
        "lung_upper_lobe_right",
        "lung_middle_lobe_right",
        "lung_lower_lobe_right",
    }


def test_lobes_group_into_lung_and_unrelated_classes_are_background() -> None:
    ids = np.array([[[0, 10, 11, 12, 13, 14, 5, 51, 61, 52, 15]]], dtype=np.uint8)
    index = anatomy_index_map(ids, "ctrate4")
    assert index.tolist() == [[[0, 1, 1, 1, 1, 1, 0, 2, 2, 4, 3]]]
    stats = anatomy_stats(ids, "ctrate4", (1.0, 1.0, 1.0))
    assert stats["lung"].voxels == 5 and stats["heart"].voxels == 2 and stats["lung"].missing_classes == ()
