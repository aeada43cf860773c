"""The one DDP helper module: process-group setup for the trainer and feature gathers for the losses.

Process group (used by :mod:`training.trainer`): :func:`init_distributed` reads rank / world size /
local rank from torchrun's environment, picks the device and initialises the process group (NCCL on
CUDA, gloo on CPU) when the world is larger than one; :func:`barrier` and :func:`all_gather_object`
are no-ops in a single process.

Feature gathers (used by :mod:`training.models.losses`). ``gather_features`` follows open_clip's
``gather_features(local_loss=False)``: every rank receives the whole global batch in rank order; the
slice that came from this rank is the *original* tensor (it keeps its autograd graph), the other ranks'
slices are detached copies, and every rank computes the same global loss.

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
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


# ------------------------------------------------------------------------------ process group
@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run: rank, world size, local rank and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(use_gpu: bool) -> DistEnv:
    """Rank / world from torchrun's environment; initialise the process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    this_rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = use_gpu and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        this_rank, world = dist.get_rank(), dist.get_world_size()
    return DistEnv(this_rank, world, local_rank, device)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in a single process)."""
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


def all_gather_object(env: DistEnv, value: Any) -> list[Any]:
    """``value`` of every rank, in rank order (``[value]`` in a single process)."""
    if not env.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, value)
    return gathered


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


# ------------------------------------------------------------------------------ feature gathers
class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor``."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
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
