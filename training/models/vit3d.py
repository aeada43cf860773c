"""A plain 3D Vision Transformer over (z, y, x) CT crops.

* conv patch embedding (kernel = stride = ``patch_zyx``), no class token: every token is one patch,
  token order is C-order over the patch grid (gz, gy, gx) -- the same order as ``mask_to_patch_grid``;
* learned position embeddings for the configured grid, trilinearly interpolated when the input grid
  differs (e.g. a different crop at inference);
* pre-norm blocks; attention through ``torch.nn.functional.scaled_dot_product_attention`` (flash /
  memory-efficient kernels under bf16 autocast on GPU) or, with ``attention="math"``, an explicit
  softmax(QK^T)V in the input dtype (the faithful reference used by the benchmark);
* optional activation checkpointing per block;
* returns the final LayerNorm output and the hidden states after the blocks listed in ``pool_layers``
  (1-based: ``4`` = output of the 4th block), each with its own LayerNorm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from training.models.pooling import token_grid

AttentionKind = Literal["sdpa", "math"]


class PatchEmbed3D(nn.Module):
    def __init__(self, patch_zyx: Sequence[int], embed_dim: int, in_channels: int = 1) -> None:
        super().__init__()
        pz, py, px = (int(p) for p in patch_zyx)
        self.patch_zyx = (pz, py, px)
        self.proj = nn.Conv3d(in_channels, embed_dim, kernel_size=self.patch_zyx, stride=self.patch_zyx)

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, Z, Y, X) -> tokens (B, N, D), patch grid (gz, gy, gx)."""
        spatial = tuple(volume.shape[2:])
        bad = [
            axis
            for axis, (size, patch) in zip("zyx", zip(spatial, self.patch_zyx, strict=False), strict=False)
            if size % patch
        ]
        if bad:
            raise ValueError(
                f"volume shape (z,y,x)={spatial} is not divisible by patch_zyx={self.patch_zyx} on axis {','.join(bad)}"
            )
        embedded = self.proj(volume)
        grid = tuple(embedded.shape[2:])
        return embedded.flatten(2).transpose(1, 2), grid


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, attention: AttentionKind = "sdpa") -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.attention = attention
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape
        qkv = self.qkv(tokens).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)  # (B, h, N, dh)
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(query, key, value)
        else:
            weights = torch.softmax(query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1]), dim=-1)
            out = weights @ value
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, attention: AttentionKind = "sdpa") -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class ViT3D(nn.Module):
    def __init__(
        self,
        crop_zyx: Sequence[int],
        patch_zyx: Sequence[int],
        embed_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        pool_layers: Sequence[int] = (),
        grad_checkpointing: bool = False,
        attention: AttentionKind = "sdpa",
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        self.crop_zyx = tuple(int(c) for c in crop_zyx)
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.grid_zyx = token_grid(self.crop_zyx, self.patch_zyx)
        self.pool_layers = tuple(int(layer) for layer in pool_layers)
        out_of_range = [layer for layer in self.pool_layers if not 1 <= layer <= depth]
        if out_of_range:
            raise ValueError(f"pool_layers {list(self.pool_layers)} must lie in 1..depth={depth} (1-based block index)")
        self.grad_checkpointing = grad_checkpointing
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed3D(self.patch_zyx, embed_dim, in_channels)
        n_tokens = math.prod(self.grid_zyx)
        self.pos_embed = nn.Parameter(torch.zeros(1, n_tokens, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_ratio, attention) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.level_norms = nn.ModuleList(nn.LayerNorm(embed_dim) for _ in self.pool_layers)
        self.apply(_init_weights)

    def set_attention(self, attention: AttentionKind) -> None:
        for block in self.blocks:
            block.attn.attention = attention  # type: ignore[union-attr]

    def position_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """(1, N, D) position embeddings for ``grid``, trilinearly resized from the trained grid."""
        if grid == self.grid_zyx:
            return self.pos_embed
        table = self.pos_embed.transpose(1, 2).reshape(1, self.embed_dim, *self.grid_zyx)
        resized = F.interpolate(table, size=grid, mode="trilinear", align_corners=False)
        return resized.flatten(2).transpose(1, 2)

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int, int]]:
        """(B, 1, Z, Y, X) -> (final normed tokens (B, N, D), [normed hidden per pool layer], grid)."""
        tokens, grid = self.patch_embed(volume)
        tokens = tokens + self.position_embedding(grid).to(tokens.dtype)
        levels: list[torch.Tensor] = []
        wanted = {layer: index for index, layer in enumerate(self.pool_layers)}
        for number, block in enumerate(self.blocks, start=1):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if number in wanted:
                levels.append(self.level_norms[wanted[number]](tokens))
        return self.norm(tokens), levels, grid


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
