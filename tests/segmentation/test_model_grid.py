from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segmentation.model_grid import EmptyRoiError, prepare_model_grid


def _image(hu_xyz: np.ndarray, spacing_xyz: tuple[float, float, float]) -> nib.Nifti1Image:
    affine = np.diag([*spacing_xyz, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 100.0)
    return nib.Nifti1Image(hu_xyz, affine)


def test_shapes_dtypes_spacing_and_every_anatomy_kept(make_phantom) -> None:
    hu, ids = make_phantom((48, 40, 24))
    grid = prepare_model_grid(_image(hu, (0.8, 0.8, 1.5)), ids, "ctrate4", (3.0, 1.0, 1.0), 1, 2)
    assert grid.hu_zyx.dtype == np.int16 and grid.anatomy_index_zyx.dtype == np.uint8
    assert grid.hu_zyx.shape == grid.anatomy_index_zyx.shape
    assert grid.spacing_zyx == (3.0, 1.0, 1.0)
    assert set(np.unique(grid.anatomy_index_zyx)) == {0, 1, 2, 4}  # lung, heart, aorta; no esophagus
    # every anatomy's physical extent survives the crop: compare bbox extents in mm
    src_index = ids
    for k, classes in ((1, (10, 11, 12)), (2, (51,)), (4, (52,))):
        src = np.argwhere(np.isin(src_index, classes))
        src_mm = (src.max(0) - src.min(0) + 1) * np.array([0.8, 0.8, 1.5])  # x, y, z
        out = np.argwhere(grid.anatomy_index_zyx == k)
        out_mm = (out.max(0) - out.min(0) + 1) * np.array([3.0, 1.0, 1.0])  # z, y, x
        assert np.all(out_mm[::-1] >= src_mm - np.array([1.0, 1.0, 3.0]))


def test_integer_steps_sample_source_voxels_exactly_and_affine_is_right(make_phantom) -> None:
    hu, ids = make_phantom((40, 30, 20))
    image = _image(hu, (0.5, 0.5, 1.0))
    grid = prepare_model_grid(image, ids, "ctrate4", (2.0, 1.0, 1.0), 1, 1)
    # output voxel (z, y, x) -> RAS mm via the NIfTI affine -> source voxel: integer, and the same HU
    out_zyx = np.array([[0, 0, 0], [3, 4, 5], [grid.hu_zyx.shape[0] - 1, 2, 7]])
    for z, y, x in out_zyx:
        world = grid.affine @ np.array([x, y, z, 1.0])
        src = np.linalg.inv(image.affine) @ world
        assert np.allclose(src[:3], np.round(src[:3]), atol=1e-6)
        i, j, k = np.round(src[:3]).astype(int)
        assert grid.hu_zyx[z, y, x] == hu[i, j, k]
    # the written image is a valid NIfTI of the same anatomy positions
    out = nib.Nifti1Image(grid.hu_zyx.transpose(2, 1, 0), grid.affine)
    assert np.allclose(out.header.get_zooms()[:3], (1.0, 1.0, 2.0))


def test_fractional_steps_match_scipy_linear_and_nearest(make_phantom) -> None:
    hu, ids = make_phantom((48, 40, 24), seed=3)
    image = _image(hu, (0.7, 0.7, 1.25))
    grid = prepare_model_grid(image, ids, "ctrate4", (3.0, 1.0, 1.0), 0, 0)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in grid.hu_zyx.shape], indexing="ij")
    out_xyz1 = np.stack([xx.ravel(), yy.ravel(), zz.ravel(), np.ones(xx.size)])
    src = (np.linalg.inv(image.affine) @ grid.affine @ out_xyz1)[:3]
    inside = np.all((src >= 0) & (src <= np.array(hu.shape)[:, None] - 1), axis=0)
    reference = ndimage.map_coordinates(hu.astype(np.float64), src[:, inside], order=1)
    got = grid.hu_zyx.ravel()[inside]
    assert np.abs(got - np.rint(reference)).max() <= 1


def test_orientation_does_not_change_the_result(make_phantom) -> None:
    hu, ids = make_phantom((32, 28, 16), seed=5)
    ras = _image(hu, (1.0, 1.0, 2.0))
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])  # LPS-style storage of the same voxels
    flip[:3, 3] = [hu.shape[0] - 1, hu.shape[1] - 1, 0]
    lps = nib.Nifti1Image(hu[::-1, ::-1].copy(), ras.affine @ flip)
    a = prepare_model_grid(ras, ids, "ctrate4", (2.0, 1.0, 1.0), 1, 2)
    b = prepare_model_grid(lps, ids[::-1, ::-1].copy(), "ctrate4", (2.0, 1.0, 1.0), 1, 2)
    assert np.array_equal(a.hu_zyx, b.hu_zyx) and np.array_equal(a.anatomy_index_zyx, b.anatomy_index_zyx)
    assert np.allclose(a.affine, b.affine)


def test_array_input_and_empty_roi() -> None:
    hu = np.zeros((8, 8, 8), dtype=np.int16)
    ids = np.zeros((8, 8, 8), dtype=np.uint8)
    ids[2:4, 2:4, 2:4] = 5  # liver: not in ctrate4
    with pytest.raises(EmptyRoiError, match="ctrate4"):
        prepare_model_grid(hu, ids, "ctrate4", (1.0, 1.0, 1.0), 0, 0, affine=np.eye(4))
    ids[2:4, 2:4, 2:4] = 15
    grid = prepare_model_grid(hu, ids, "ctrate4", (1.0, 1.0, 1.0), 1, 1, affine=np.eye(4))
    assert grid.anatomy_index_zyx.shape == (4, 4, 4) and grid.anatomy_index_zyx.max() == 3
    hu_zyx, index_zyx, spacing, affine = grid  # the tuple the shard stage unpacks
    assert spacing == (1.0, 1.0, 1.0) and np.allclose(affine[:3, 3], (1, 1, 1))
