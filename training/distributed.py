"""Gather helpers for contrastive losses under DDP (torch.distributed).

``gather_features`` follows open_clip's ``gather_features(local_loss=False)``: every rank receives the
whole global batch in rank order; the slice that came from this rank is the *original* tensor (it keeps
its autograd graph), the other ranks' slices are detached copies, and every rank computes the same
global loss.

Gradient scale. Plain open_clip (``gather_with_grad=False``) gives each rank only the part of
d(loss)/d(theta) that flows through its own samples; DDP then *averages* over ranks, so tower weights
get 1/world_size of the single-process gradient while parameters used after the gather (the logit
scale) get all of it. Here the local slice's gradient is multiplied by ``world_size`` in backward
(``scale_grad=True``, the default). Because every rank computes the identical loss, this equals what
open_clip's ``gather_with_grad=True`` delivers (the sum over ranks of the gradient w.r.t. this slice)
without its backward all-reduce, and DDP's averaged gradients are then exactly the single-process
gradients on the concatenated batch, for every parameter (tests/training/test_ddp.py).

All ranks must pass tensors of the same shape (use ``drop_last=True`` in the sampler).
Without an initialised process group every helper is the identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def is_distributed() -> bool:
    """True when a torch.distributed process group is initialised with more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if is_distributed() else 0


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, factor: float) -> torch.Tensor:  # type: ignore[override]
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def gather_features(local: torch.Tensor, scale_grad: bool = True) -> torch.Tensor:
    """Concatenate ``local`` (leading batch dim) over ranks in rank order; the local slice keeps its grad.

    ``scale_grad``: multiply the local slice's gradient by the world size (see the module docstring);
    ``False`` gives open_clip's ``gather_with_grad=False`` gradients exactly.
    """
    if not is_distributed():
        return local
    import torch.distributed as dist

    original_dtype = local.dtype
    send = local.detach()
    if original_dtype == torch.bool:  # gloo has no bool all_gather
        send = send.to(torch.uint8)
    send = send.contiguous()
    received = [torch.empty_like(send) for _ in range(dist.get_world_size())]
    dist.all_gather(received, send)
    if original_dtype == torch.bool:
        received = [part.to(torch.bool) for part in received]
    if scale_grad and local.requires_grad:
        local = _ScaleGrad.apply(local, float(dist.get_world_size()))
    received[dist.get_rank()] = local
    return torch.cat(received, dim=0)


def text_keys(texts: Sequence[Sequence[str]], device: torch.device | str = "cpu") -> torch.Tensor:
    """Stable int64 key per (sample, anatomy) text so text identity can be compared across ranks.

    Whitespace at both ends is ignored; an empty text gets key 0 (callers treat it as "no text").
    """
    keys = [[_text_key(text) for text in row] for row in texts]
    if not keys:
        return torch.zeros((0, 0), dtype=torch.int64, device=device)
    return torch.tensor(keys, dtype=torch.int64, device=device)


def _text_key(text: str) -> int:
    stripped = text.strip()
    if not stripped:
        return 0
    digest = hashlib.blake2b(stripped.encode("utf-8"), digest_size=8).digest()
    key = int.from_bytes(digest, "little", signed=True)
    return key if key != 0 else 1
