"""Anatomy-guided token pooling.

``mask_to_patch_grid`` max-pools each anatomy's voxel mask to the ViT patch grid: a patch token belongs
to anatomy k when any voxel of the patch has mask value k + 1 (a token may belong to several anatomies).
``AnatomyPooling`` gives each anatomy one learned query that attends (multi-head, SDPA with a boolean
attention mask = key padding) over that anatomy's tokens only; the pooled vector goes through a
per-anatomy projection to the joint space and is L2-normalised. It is batched over samples x
anatomies; an anatomy with no token in a sample is reported absent and its embedding is all zeros
(never NaN). ``forward_loop`` is the naive per-sample / per-anatomy reference (tests, benchmark).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def token_grid(crop_zyx: Sequence[int], patch_zyx: Sequence[int]) -> tuple[int, ...]:
    """Tokens per axis of an encoder with ``patch_zyx`` patches on a ``crop_zyx`` input (each must divide)."""
    bad = [axis for axis, c, p in zip("zyx", crop_zyx, patch_zyx, strict=False) if c % p]
    if bad:
        raise ValueError(
            f"crop_zyx {tuple(crop_zyx)} is not divisible by patch_zyx {tuple(patch_zyx)} on axis {','.join(bad)}"
        )
    return tuple(c // p for c, p in zip(crop_zyx, patch_zyx, strict=False))


def mask_to_patch_grid(mask: torch.Tensor, n_anatomies: int, patch_zyx: Sequence[int]) -> torch.Tensor:
    """(B, Z, Y, X) label mask (0 background, k+1 anatomy k) -> (B, K, N) bool token membership."""
    batch, z, y, x = mask.shape
    pz, py, px = (int(p) for p in patch_zyx)
    if z % pz or y % py or x % px:
        raise ValueError(f"mask shape (z,y,x)={(z, y, x)} is not divisible by patch_zyx={(pz, py, px)}")
    patches = mask.reshape(batch, z // pz, pz, y // py, py, x // px, px)
    members = [
        (patches == anatomy + 1).any(dim=6).any(dim=4).any(dim=2).reshape(batch, -1) for anatomy in range(n_anatomies)
    ]
    return torch.stack(members, dim=1)


class AnatomyPooling(nn.Module):
    def __init__(self, n_anatomies: int, token_dim: int, out_dim: int, heads: int) -> None:
        super().__init__()
        if token_dim % heads:
            raise ValueError(f"token dim {token_dim} is not divisible by heads {heads}")
        self.n_anatomies = n_anatomies
        self.heads = heads
        self.queries = nn.Parameter(torch.randn(n_anatomies, token_dim) * 0.02)
        self.q_proj = nn.Linear(token_dim, token_dim)
        self.k_proj = nn.Linear(token_dim, token_dim)
        self.v_proj = nn.Linear(token_dim, token_dim)
        self.out_proj = nn.Linear(token_dim, token_dim)
        self.norm = nn.LayerNorm(token_dim)
        # per-anatomy projection to the joint embedding space: (K, D_token, D_out) + (K, D_out)
        self.proj_weight = nn.Parameter(torch.randn(n_anatomies, token_dim, out_dim) / math.sqrt(token_dim))
        self.proj_bias = nn.Parameter(torch.zeros(n_anatomies, out_dim))

    def forward(self, tokens: torch.Tensor, membership: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, N, D), membership (B, K, N) bool -> (embeddings (B, K, E) L2-normed, present (B, K))."""
        batch, length, dim = tokens.shape
        head_dim = dim // self.heads
        present = membership.any(dim=2)
        # absent anatomies attend to every token (keeps softmax finite), and are zeroed afterwards
        attend = membership | ~present.unsqueeze(2)
        query = self.q_proj(self.queries).view(1, self.n_anatomies, self.heads, head_dim).transpose(1, 2)
        key = self.k_proj(tokens).view(batch, length, self.heads, head_dim).transpose(1, 2)
        value = self.v_proj(tokens).view(batch, length, self.heads, head_dim).transpose(1, 2)
        query = query.expand(batch, -1, -1, -1).to(key.dtype)
        pooled = F.scaled_dot_product_attention(query, key, value, attn_mask=attend.unsqueeze(1))
        pooled = self.out_proj(pooled.transpose(1, 2).reshape(batch, self.n_anatomies, dim))
        pooled = self.norm(pooled)
        projected = torch.einsum("bkd,kde->bke", pooled, self.proj_weight.to(pooled.dtype)) + self.proj_bias.to(
            pooled.dtype
        )
        embeddings = F.normalize(projected.float(), dim=-1) * present.unsqueeze(2)
        return embeddings, present

    def forward_loop(self, tokens: torch.Tensor, membership: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Naive reference: a Python loop over samples and anatomies, explicit softmax attention."""
        batch, _, dim = tokens.shape
        head_dim = dim // self.heads
        out_dim = self.proj_weight.shape[2]
        embeddings = tokens.new_zeros((batch, self.n_anatomies, out_dim), dtype=torch.float32)
        present = membership.any(dim=2)
        queries = self.q_proj(self.queries)
        rows = []
        for sample in range(batch):
            row = []
            for anatomy in range(self.n_anatomies):
                if not bool(present[sample, anatomy]):
                    row.append(embeddings[sample, anatomy])
                    continue
                selected = tokens[sample][membership[sample, anatomy]]  # (n, D)
                key = self.k_proj(selected).view(-1, self.heads, head_dim).transpose(0, 1)
                value = self.v_proj(selected).view(-1, self.heads, head_dim).transpose(0, 1)
                query = queries[anatomy].view(self.heads, 1, head_dim)
                weights = torch.softmax(query @ key.transpose(1, 2) / math.sqrt(head_dim), dim=-1)
                pooled = self.out_proj((weights @ value).reshape(dim))
                pooled = self.norm(pooled)
                projected = pooled @ self.proj_weight[anatomy] + self.proj_bias[anatomy]
                row.append(F.normalize(projected.float(), dim=-1))
            rows.append(torch.stack(row))
        return torch.stack(rows), present
