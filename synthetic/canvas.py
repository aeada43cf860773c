"""The painting surface: an HU volume and a TotalSegmentator label map sharing one grid and pose."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from synthetic.geometry import DistanceFn, Grid, Pose, Vec3, capsule

HuValue = float | Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class Canvas:
    """``hu`` (float32) and ``label`` (uint8) in native (k, j, i) order, body coordinates cached."""

    def __init__(self, grid: Grid, pose: Pose) -> None:
        self.grid = grid
        self.pose = pose
        self.hu = np.full(grid.shape_kji, -1000.0, dtype=np.float32)
        self.label = np.zeros(grid.shape_kji, dtype=np.uint8)
        self.u, self.v, self.w = pose.body_coordinates(grid)
        self.voxel_mm = float(min(grid.spacing_kji[1:]))

    # ----------------------------------------------------------------------------------- bounding boxes
    def voxel_box(self, body_lo: Vec3, body_hi: Vec3) -> tuple[slice, slice, slice] | None:
        """Native slices covering a body-frame box (expanded by the pose's deformation); None if outside."""
        margin = self.pose.max_deformation_mm + 2.0
        lo = np.asarray(body_lo) - margin
        hi = np.asarray(body_hi) + margin
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        lps = self.pose.body_to_lps(corners)
        origin = np.asarray(self.grid.origin_lps)
        spacing_xyz = np.asarray(self.grid.spacing_kji[::-1])
        index = (lps - origin) / spacing_xyz
        first = np.floor(index.min(axis=0)).astype(int)
        last = np.ceil(index.max(axis=0)).astype(int) + 1
        shape_xyz = np.asarray(self.grid.shape_kji[::-1])
        first = np.clip(first, 0, shape_xyz)
        last = np.clip(last, 0, shape_xyz)
        if np.any(last <= first):
            return None
        return (slice(first[2], last[2]), slice(first[1], last[1]), slice(first[0], last[0]))

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.u[box], self.v[box], self.w[box]

    # ----------------------------------------------------------------------------------------- painting
    def paint(
        self,
        distance: DistanceFn,
        body_lo: Vec3,
        body_hi: Vec3,
        hu: HuValue | None,
        label: int | None,
        *,
        soft: bool = False,
        only_labels: Iterable[int] | None = None,
        mode: str = "set",
    ) -> int:
        """Paint the region ``distance < 0`` inside the body box; returns the number of voxels claimed.

        ``label=None`` leaves the label map alone (image content only). ``only_labels`` restricts the
        paint to voxels currently carrying one of those labels. ``soft`` blends the HU over one voxel
        at the border (partial volume for thin tubes). ``mode``: "set", "min" or "max" for the HU.
        """
        box = self.voxel_box(body_lo, body_hi)
        if box is None:
            return 0
        u, v, w = self.coords(box)
        sd = distance(u, v, w)
        if soft:
            fraction = np.clip(0.5 - sd / np.float32(self.voxel_mm), 0.0, 1.0)
            region = fraction > 0
        else:
            fraction = None
            region = sd < 0
        if only_labels is not None:
            region &= np.isin(self.label[box], np.fromiter(only_labels, dtype=np.uint8))
        if not region.any():
            return 0
        if hu is not None:
            target = self.hu[box]
            current = target[region]
            if callable(hu):  # evaluated on the claimed voxels only
                value = np.asarray(hu(u[region], v[region], w[region]), dtype=np.float32)
                value = np.broadcast_to(value, current.shape)
            else:
                value = np.float32(hu)
            if mode == "min":
                value = np.minimum(current, value)
            elif mode == "max":
                value = np.maximum(current, value)
            if fraction is None:
                target[region] = value
            else:
                f = fraction[region]
                target[region] = current * (1 - f) + value * f
        if label is not None:
            inside = region if fraction is None else (region & (sd < 0))
            self.label[box][inside] = label
        return int(region.sum())

    def count(self, distance: DistanceFn, body_lo: Vec3, body_hi: Vec3, only_labels: Iterable[int]) -> int:
        """How many voxels :meth:`paint` (hard edge) would claim there, without painting."""
        box = self.voxel_box(body_lo, body_hi)
        if box is None:
            return 0
        region = distance(*self.coords(box)) < 0
        region &= np.isin(self.label[box], np.fromiter(only_labels, dtype=np.uint8))
        return int(region.sum())

    def paint_tube(
        self,
        points: np.ndarray,
        radii: Sequence[float] | float,
        hu: HuValue | None,
        label: int | None,
        **options: object,
    ) -> int:
        """A tube along a polyline (union of capsules), radius per point."""
        pts = np.asarray(points, dtype=np.float64)
        rad = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
        claimed = 0
        for index in range(len(pts) - 1):
            r0, r1 = float(rad[index]), float(rad[index + 1])
            lo = np.minimum(pts[index], pts[index + 1]) - max(r0, r1)
            hi = np.maximum(pts[index], pts[index + 1]) + max(r0, r1)
            claimed += self.paint(
                capsule(pts[index], pts[index + 1], r0, r1), tuple(lo), tuple(hi), hu, label, **options
            )  # type: ignore[arg-type]
        return claimed

    # ------------------------------------------------------------------------------------------ helpers
    def body_point_to_native(self, body: Sequence[float]) -> tuple[int, int, int]:
        """Nearest native voxel (k, j, i) of a body-frame point (deformation ignored)."""
        lps = self.pose.body_to_lps(np.asarray([body]))[0]
        index = (lps - np.asarray(self.grid.origin_lps)) / np.asarray(self.grid.spacing_kji[::-1])
        i, j, k = (int(round(x)) for x in index)
        return k, j, i

    def native_to_lps(self, kji: Sequence[float]) -> Vec3:
        k, j, i = kji
        x0, y0, z0 = self.grid.origin_lps
        dz, dy, dx = self.grid.spacing_kji
        return (float(x0 + i * dx), float(y0 + j * dy), float(z0 + k * dz))
