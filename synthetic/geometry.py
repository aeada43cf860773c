"""Voxel grid, patient pose and implicit shapes for the synthetic CT phantom.

Frames used here (and only here; everything handed out is RAS, see :mod:`.phantom`):

* **native array order** ``(k, j, i)`` = (slice, row, column), the order the DICOM pixels are stored in:
  column ``i`` runs toward patient Left (+x in LPS), row ``j`` toward Posterior (+y), slice ``k`` toward
  Superior (+z). ``LPS = origin + (i*dx, j*dy, k*dz)``.
* **body frame** ``(u, v, w)`` in mm of a standard-size patient: ``u`` = left, ``v`` = posterior,
  ``w`` = superior, origin on the midline at the level of the sternal notch. A :class:`Pose` (per-axis
  scale, small rotation, translation, smooth random deformation) maps it into patient LPS.

Shapes are signed-distance-like functions of body coordinates (mm, negative inside).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]
DistanceFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Grid:
    """An axis-aligned CT grid (axial slices, HFS, no tilt)."""

    shape_kji: tuple[int, int, int]  # (slices, rows, columns)
    spacing_kji: tuple[float, float, float]  # (slice spacing, row spacing, column spacing) mm
    origin_lps: Vec3  # LPS of the centre of native voxel (0, 0, 0)

    def axis_lps(self, axis: int) -> np.ndarray:
        """1-D LPS coordinate (mm) of voxel centres along native axis 0 (z), 1 (y) or 2 (x)."""
        count = self.shape_kji[axis]
        origin = self.origin_lps[2 - axis]
        return (origin + np.arange(count, dtype=np.float64) * self.spacing_kji[axis]).astype(np.float32)

    def ras_affine(self) -> np.ndarray:
        """Affine of the RAS-canonical NIfTI array ``native[:, ::-1, ::-1].transpose(2, 1, 0)``."""
        nz, ny, nx = self.shape_kji
        dz, dy, dx = self.spacing_kji
        x0, y0, z0 = self.origin_lps
        affine = np.eye(4)
        affine[0, 0], affine[1, 1], affine[2, 2] = dx, dy, dz
        # RAS x = -LPS x; canonical column 0 is native column nx-1 (the patient's rightmost voxel)
        affine[0, 3] = -(x0 + dx * (nx - 1))
        affine[1, 3] = -(y0 + dy * (ny - 1))
        affine[2, 3] = z0
        return affine


def rotation_matrix(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rotation about LPS z (axial-plane roll of the patient), x (pitch) and y, composed z @ x @ y."""
    a, b, c = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Pose:
    """Body frame -> LPS: ``lps = R @ (scale * body) + translation``, plus a smooth deformation."""

    scale: Vec3
    rotation: np.ndarray  # 3x3
    translation_lps: Vec3
    deform_amplitude_mm: np.ndarray  # (3, modes)
    deform_wavevector: np.ndarray  # (3, modes, 3) rad/mm
    deform_phase: np.ndarray  # (3, modes)

    @property
    def max_deformation_mm(self) -> float:
        return float(np.abs(self.deform_amplitude_mm).sum(axis=1).max())

    def body_to_lps(self, body: np.ndarray) -> np.ndarray:
        """(n, 3) body points -> (n, 3) LPS (deformation ignored: it is at most a few mm)."""
        scaled = np.asarray(body, dtype=np.float64) * np.asarray(self.scale)
        return scaled @ self.rotation.T + np.asarray(self.translation_lps)

    def body_coordinates(self, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body coordinates (u, v, w) of every native voxel centre, float32 arrays (k, j, i).

        The smooth deformation is a sum of plane waves evaluated in LPS, where each wave separates into
        1-D factors (sin(a + b) = sin a cos b + cos a sin b): no transcendental call per voxel.
        """
        z = grid.axis_lps(0)[:, None, None] - np.float32(self.translation_lps[2])
        y = grid.axis_lps(1)[None, :, None] - np.float32(self.translation_lps[1])
        x = grid.axis_lps(2)[None, None, :] - np.float32(self.translation_lps[0])
        rot = self.rotation.astype(np.float32)
        # plane waves in body space k.b = k.(R^T p / s) = (R (k / s)).p  with p = lps - t
        coords = []
        for axis in range(3):  # body = R^T (lps - t) / scale
            value = (rot[0, axis] * x + rot[1, axis] * y) + rot[2, axis] * z
            value = value * np.float32(1.0 / self.scale[axis])
            for mode in range(self.deform_amplitude_mm.shape[1]):
                k_body = self.deform_wavevector[axis, mode] / np.asarray(self.scale)
                k_lps = (self.rotation @ k_body).astype(np.float32)
                phase_x = x * k_lps[0] + np.float32(self.deform_phase[axis, mode])
                phase_yz = y * k_lps[1] + z * k_lps[2]
                amplitude = np.float32(self.deform_amplitude_mm[axis, mode])
                value += (amplitude * np.sin(phase_x)) * np.cos(phase_yz)
                value += (amplitude * np.cos(phase_x)) * np.sin(phase_yz)
            coords.append(np.ascontiguousarray(np.broadcast_to(value, grid.shape_kji), dtype=np.float32))
        return coords[0], coords[1], coords[2]


def random_pose(rng: np.random.Generator, scale: Vec3, translation_lps: Vec3, max_rotation_deg: float = 4.0) -> Pose:
    modes = 2
    amplitude = rng.uniform(1.0, 3.0, size=(3, modes))
    wavelength = rng.uniform(150.0, 400.0, size=(3, modes))
    direction = rng.normal(size=(3, modes, 3))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    wavevector = direction * (2 * np.pi / wavelength)[..., None]
    rotation = rotation_matrix(
        rng.uniform(-max_rotation_deg, max_rotation_deg),
        rng.uniform(-max_rotation_deg / 2, max_rotation_deg / 2),
        rng.uniform(-max_rotation_deg / 3, max_rotation_deg / 3),
    )
    return Pose(scale, rotation, translation_lps, amplitude, wavevector, rng.uniform(0, 2 * np.pi, size=(3, modes)))


# ---------------------------------------------------------------------------------------------- shapes


def ellipsoid(center: Vec3, semi_axes: Vec3, axes: np.ndarray | None = None) -> DistanceFn:
    """Approximate signed distance of an (optionally rotated) ellipsoid; ``axes`` columns = local axes."""
    cu, cv, cw = center
    a, b, c = semi_axes
    smallest = float(min(semi_axes))

    def distance(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        du, dv, dw = u - np.float32(cu), v - np.float32(cv), w - np.float32(cw)
        if axes is not None:
            m = axes.astype(np.float32)
            du, dv, dw = (
                m[0, 0] * du + m[1, 0] * dv + m[2, 0] * dw,
                m[0, 1] * du + m[1, 1] * dv + m[2, 1] * dw,
                m[0, 2] * du + m[1, 2] * dv + m[2, 2] * dw,
            )
        q = (du / np.float32(a)) ** 2 + (dv / np.float32(b)) ** 2 + (dw / np.float32(c)) ** 2
        return (np.sqrt(q) - 1.0) * np.float32(smallest)

    return distance


def slice_profile(w: np.ndarray) -> np.ndarray:
    """Per-slice mean of a (k, j, i) coordinate block (kept as (k, 1, 1)); other shapes pass through.

    Cross-section sizes that vary slowly along the body axis are evaluated once per slice instead of
    once per voxel (the patient's tilt is a few degrees, so the error is well under a millimetre).
    """
    if w.ndim == 3 and w.shape[1] * w.shape[2] > 1:
        return w.mean(axis=(1, 2), keepdims=True, dtype=np.float64).astype(np.float32)
    return w


def abs_pow(x: np.ndarray, exponent: float) -> np.ndarray:
    """|x| ** exponent, with cheap paths for the exponents the phantom uses (2, 2.5)."""
    if exponent == 2.0:
        return x * x
    if exponent == 2.5:
        return x * x * np.sqrt(np.abs(x))
    return np.abs(x) ** np.float32(exponent)


def superellipse_section(
    center_uv: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | tuple[float, float],
    half_axes: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | tuple[float, float],
    exponent: float,
    w_range: tuple[float, float],
) -> DistanceFn:
    """A prism of superellipse cross-section (size and centre may vary with w), cut to ``w_range``."""

    def distance(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        profile = slice_profile(w) if (callable(center_uv) or callable(half_axes)) else w
        cu, cv = center_uv(profile) if callable(center_uv) else center_uv
        a, b = half_axes(profile) if callable(half_axes) else half_axes
        a = np.maximum(a, 1e-3)
        b = np.maximum(b, 1e-3)
        q = abs_pow((u - cu) / a, exponent) + abs_pow((v - cv) / b, exponent)
        radial = (q - 1.0) * (np.minimum(a, b) / np.float32(exponent))  # first-order distance near the border
        axial = np.maximum(np.float32(w_range[0]) - w, w - np.float32(w_range[1]))
        return np.maximum(radial, axial).astype(np.float32)

    return distance


def capsule(p0: Sequence[float], p1: Sequence[float], r0: float, r1: float | None = None) -> DistanceFn:
    """Signed distance to a segment with a radius varying linearly from ``r0`` to ``r1``."""
    a = np.asarray(p0, dtype=np.float32)
    b = np.asarray(p1, dtype=np.float32)
    r1 = r0 if r1 is None else r1
    ab = b - a
    length_sq = float(ab @ ab) or 1e-6

    def distance(u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
        du, dv, dw = u - a[0], v - a[1], w - a[2]
        t = np.clip((du * ab[0] + dv * ab[1] + dw * ab[2]) / np.float32(length_sq), 0.0, 1.0)
        eu, ev, ew = du - t * ab[0], dv - t * ab[1], dw - t * ab[2]
        return np.sqrt(eu * eu + ev * ev + ew * ew) - (np.float32(r0) + t * np.float32(r1 - r0))

    return distance


def catmull_rom(points: Sequence[Sequence[float]], samples_per_segment: int = 6) -> np.ndarray:
    """A smooth curve through ``points`` (n, 3) -> (m, 3)."""
    control = np.asarray(points, dtype=np.float64)
    padded = np.vstack([2 * control[0] - control[1], control, 2 * control[-1] - control[-2]])
    out = []
    for index in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[index - 1 : index + 3]
        for t in np.linspace(0, 1, samples_per_segment, endpoint=False):
            t2, t3 = t * t, t * t * t
            out.append(
                0.5
                * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)
            )
    out.append(control[-1])
    return np.asarray(out)
