"""A small 3D CNN image encoder with the ViT's interface: the same patch-token grid, the same outputs.

``ConvEncoder3D(crop_zyx, patch_zyx, embed_dim, ...)`` maps (B, 1, Z, Y, X) to tokens (B, N, D) on the
grid ``crop // patch`` -- exactly the grid of :class:`training.models.vit3d.ViT3D` and of
``training.models.pooling.mask_to_patch_grid`` with the same ``patch_zyx`` -- so the anatomy pooling and the
losses work unchanged. Token order is C-order over (gz, gy, gx), as in the ViT.

Architecture: one stage per factor 2 of downsampling (``patch_zyx`` entries must be powers of two);
stage ``i`` = strided 3x3x3 conv (stride 2 on the axes still to be reduced, else 1) + BatchNorm + GELU,
followed by a residual 3x3x3 conv block from the second stage on (the first stage, at the highest
resolution, stays one conv: it dominates the cost). Widths double per stage up to ``embed_dim``
(``channels`` overrides them). The last stage's output is projected to ``embed_dim`` and LayerNorm'd
(``final``); ``levels`` are the earlier stages' outputs, average-pooled to the token grid, projected and
LayerNorm'd, for the stages listed in ``pool_layers`` (1-based stage numbers; an index past the number of
stages is ignored), mirroring the ViT's multi-level features.

Peak channels (``peak_channels`` > 0, ``model.vision.conv_peak_channels``): the last ``peak_channels`` of
every token are not the stages' features but a per-voxel map -- a ``peak_kernel``^3 conv + BatchNorm + ReLU +
1x1 conv on the input max-pooled by the first stage's stride -- max-pooled over the token's patch (no
LayerNorm: its magnitude is the evidence). The same peak channels are appended to every level, so fVLM's
level mean keeps them.

Under DistributedDataParallel convert the BatchNorms with ``nn.SyncBatchNorm.convert_sync_batchnorm`` if the
per-GPU batch is small; evaluation uses the running statistics (``model.eval()``).

Why a CNN, why BatchNorm and why peak channels (the probe results): docs/model.md, "Conv image tower".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from training.models.pooling import token_grid


def stage_strides(patch_zyx: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per-stage strides whose product per axis is ``patch_zyx`` (each entry a power of two)."""
    exponents = []
    for axis, patch in zip("zyx", patch_zyx, strict=False):
        patch = int(patch)
        if patch < 1 or patch & (patch - 1):
            raise ValueError(f"conv encoder: patch_zyx must be powers of two, got {patch} on axis {axis}")
        exponents.append(int(math.log2(patch)))
    n_stages = max(max(exponents), 1)
    return [tuple(2 if stage < e else 1 for e in exponents) for stage in range(n_stages)]  # type: ignore[misc]


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: Sequence[int]) -> None:
        super().__init__(
            nn.Conv3d(
                cin, cout, kernel_size=3, stride=(int(stride[0]), int(stride[1]), int(stride[2])), padding=1, bias=False
            ),
            nn.BatchNorm3d(cout),
            nn.GELU(),
        )


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.norm = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + self.norm(self.conv(x)))


class ConvEncoder3D(nn.Module):
    def __init__(
        self,
        crop_zyx: Sequence[int],
        patch_zyx: Sequence[int],
        embed_dim: int,
        channels: Sequence[int] | None = None,
        pool_layers: Sequence[int] = (),
        in_channels: int = 1,
        peak_channels: int = 0,
        peak_kernel: int = 3,
    ) -> None:
        super().__init__()
        self.crop_zyx = tuple(int(c) for c in crop_zyx)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.grid_zyx = token_grid(self.crop_zyx, self.patch_zyx)
        self.embed_dim = int(embed_dim)
        self.peak_channels = int(peak_channels)
        if not 0 <= self.peak_channels < self.embed_dim:
            raise ValueError(f"conv_peak_channels must be in [0, embed_dim={self.embed_dim}), got {peak_channels}")
        if peak_kernel < 1 or peak_kernel % 2 == 0:
            raise ValueError(f"conv_peak_kernel must be odd and >= 1, got {peak_kernel}")
        context_dim = self.embed_dim - self.peak_channels  # the stages' share of each token
        strides = stage_strides(self.patch_zyx)
        n_stages = len(strides)
        if channels is None:
            widths = [max(8, context_dim // 2 ** (n_stages - 1 - i)) for i in range(n_stages)]
        else:
            widths = [int(c) for c in channels]
            if len(widths) != n_stages:
                raise ValueError(
                    f"conv_channels needs {n_stages} widths (one per stage of patch_zyx "
                    f"{self.patch_zyx}), got {len(widths)}"
                )
        self.widths = tuple(widths)
        stages: list[nn.Module] = []
        cin = in_channels
        for index, (stride, width) in enumerate(zip(strides, widths, strict=False)):
            layers: list[nn.Module] = [_ConvNormAct(cin, width, stride)]
            if index > 0:
                layers.append(_Residual(width))
            stages.append(nn.Sequential(*layers))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.strides = tuple(strides)
        self.proj = nn.Linear(widths[-1], context_dim)
        self.norm = nn.LayerNorm(context_dim)
        self.pool_layers = tuple(int(layer) for layer in pool_layers if 1 <= int(layer) < n_stages)
        self.level_proj = nn.ModuleList(nn.Linear(widths[layer - 1], context_dim) for layer in self.pool_layers)
        self.level_norms = nn.ModuleList(nn.LayerNorm(context_dim) for _ in self.pool_layers)
        # peak branch: a per-voxel map (on the input max-pooled by the first stride), max-pooled to the
        # token grid (no LayerNorm after the max: its magnitude is the evidence), the last ``peak_channels``
        self.peak: nn.Module | None = None
        if self.peak_channels:
            self.peak = nn.Sequential(
                nn.Conv3d(in_channels, self.peak_channels, kernel_size=peak_kernel, padding=peak_kernel // 2),
                nn.BatchNorm3d(self.peak_channels),
                nn.ReLU(),
                nn.Conv3d(self.peak_channels, self.peak_channels, kernel_size=1),
            )

    def set_attention(self, attention: str) -> None:  # interface parity with ViT3D (no attention here)
        return None

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int, int]]:
        """(B, 1, Z, Y, X) -> (final tokens (B, N, D), [tokens per pool stage], grid (gz, gy, gx))."""
        spatial = tuple(volume.shape[2:])
        bad = [axis for axis, size, patch in zip("zyx", spatial, self.patch_zyx, strict=False) if size % patch]
        if bad:
            raise ValueError(
                f"volume shape (z,y,x)={spatial} is not divisible by patch_zyx={self.patch_zyx} on axis {','.join(bad)}"
            )
        grid = tuple(size // patch for size, patch in zip(spatial, self.patch_zyx, strict=False))
        features = volume
        saved: dict[int, torch.Tensor] = {}
        wanted = set(self.pool_layers)
        for number, stage in enumerate(self.stages, start=1):
            features = stage(features)
            if number in wanted:
                saved[number] = features
        levels = []
        for layer, proj, norm in zip(self.pool_layers, self.level_proj, self.level_norms, strict=False):
            pooled = F.adaptive_avg_pool3d(saved[layer], (grid[0], grid[1], grid[2]))
            levels.append(norm(proj(pooled.flatten(2).transpose(1, 2))))
        final = self.norm(self.proj(features.flatten(2).transpose(1, 2)))
        if self.peak is not None:  # the same peak channels on every level: their mean (fVLM pooling) keeps them
            first = self.strides[0]  # the map is computed on the input max-pooled by the first stage's stride
            peak_map = self.peak(F.max_pool3d(volume, first))  # (8x fewer voxels; the brightest voxel survives)
            to_grid = tuple(p // s for p, s in zip(self.patch_zyx, first, strict=False))
            peak = F.max_pool3d(peak_map, to_grid).flatten(2).transpose(1, 2)
            final = torch.cat([final, peak], dim=-1)
            levels = [torch.cat([level, peak], dim=-1) for level in levels]
        return final, levels, grid  # type: ignore[return-value]
