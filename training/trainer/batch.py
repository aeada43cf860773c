"""The training batch contract: the one collate function and the in-memory batch source.

Every loader in the project (:class:`training.trainer.data.ShardBatches` over the Parquet shards,
:class:`InMemoryBatches` over a list of samples) yields batches made by :func:`collate_batch`, a dict
with the keys of :class:`Batch`:

==================  ===============================  ==============================================
key                 type                             meaning
==================  ===============================  ==============================================
``volume``          float32 tensor (B, 1, Z, Y, X)   CT crop windowed to [0, 1]
``mask``            uint8 tensor (B, Z, Y, X)        0 background, k + 1 anatomy k
``anatomy_intact``  bool tensor (B, K)               anatomy k present and not cut by the crop
``anatomy_abnormal`` bool tensor (B, K)              the report calls anatomy k abnormal
``anatomy_text``    list of B lists of K str         report sentences per anatomy ("" = none)
``labels``          int8 tensor (B, L)               study labels, 1 / 0 / -1 unknown
``report_text``     list of B str                    the whole report
``study_id``        list of B str                    pseudonymous study ids
``crop_anatomy``    int64 tensor (B,), optional      evaluation ``eval_mode="anatomy"``: the anatomy
                                                     each crop is centred on
==================  ===============================  ==============================================

A *sample* (what :func:`collate_batch` stacks) has the same keys without the batch dimension: volume
(1, Z, Y, X), mask (Z, Y, X), anatomy_intact / anatomy_abnormal (K,), labels (L,), numpy arrays or
tensors. Axis order is (z, y, x) throughout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, TypedDict

import numpy as np
import torch

try:  # Python 3.11+: NotRequired in typing
    from typing import NotRequired
except ImportError:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired


class Batch(TypedDict):
    """One training / evaluation batch (see the module docstring for shapes and dtypes)."""

    volume: torch.Tensor
    mask: torch.Tensor
    anatomy_intact: torch.Tensor
    anatomy_abnormal: torch.Tensor
    anatomy_text: list[list[str]]
    labels: torch.Tensor
    report_text: list[str]
    study_id: list[str]
    crop_anatomy: NotRequired[torch.Tensor]


class BatchSource(Protocol):
    """What the training loop reads: contract batches per epoch, deterministic given the epoch and the
    RNG state at the start of the epoch (exact resume rebuilds the iterator and skips what was consumed)."""

    def iter_epoch(self, epoch: int) -> Iterator[Batch]: ...


def _stack(values: Sequence[Any], dtype: torch.dtype | None = None) -> torch.Tensor:
    """Stack numpy arrays (one copy, through numpy) or tensors / array-likes into one tensor; ``dtype``
    None keeps the samples' dtype."""
    if all(isinstance(value, np.ndarray) for value in values):
        stacked = torch.from_numpy(np.stack(values))
        return stacked if dtype is None else stacked.to(dtype)
    return torch.stack([torch.as_tensor(value, dtype=dtype) for value in values])


def collate_batch(samples: Sequence[Mapping[str, Any]]) -> Batch:
    """Stack samples into the batch contract (tensors + lists of strings); the one collate function."""
    batch: Batch = {
        "volume": _stack([s["volume"] for s in samples], torch.float32),
        "mask": _stack([s["mask"] for s in samples]),
        "anatomy_intact": _stack([np.asarray(s["anatomy_intact"], dtype=bool) for s in samples], torch.bool),
        "anatomy_abnormal": _stack([np.asarray(s["anatomy_abnormal"], dtype=bool) for s in samples], torch.bool),
        "anatomy_text": [list(s["anatomy_text"]) for s in samples],
        "labels": _stack([np.asarray(s["labels"], dtype=np.int8) for s in samples], torch.int8),
        "report_text": [str(s["report_text"]) for s in samples],
        "study_id": [str(s["study_id"]) for s in samples],
    }
    if all("crop_anatomy" in s for s in samples):
        batch["crop_anatomy"] = torch.tensor([int(s["crop_anatomy"]) for s in samples], dtype=torch.int64)
    return batch


class InMemoryBatches:
    """A list of samples served as contract batches; shuffled per epoch with a (seed, epoch) generator.

    Under DDP each rank takes every ``world_size``-th sample of the epoch's permutation.
    """

    def __init__(
        self,
        samples: Sequence[Mapping[str, Any]],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not samples:
            raise ValueError("InMemoryBatches needs at least one sample")
        self.samples = list(samples)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        per_rank = len(self.samples) // self.world_size
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.samples), generator=generator).tolist()
        else:
            order = list(range(len(self.samples)))
        usable = (len(order) // self.world_size) * self.world_size
        mine = order[self.rank : usable : self.world_size]
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start : start + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                return
            yield collate_batch([self.samples[i] for i in chunk])

    def texts(self) -> list[str]:
        """Report + anatomy texts (tokenizer corpus)."""
        out: list[str] = []
        for sample in self.samples:
            out.append(str(sample["report_text"]))
            out.extend(text for text in sample["anatomy_text"] if text)
        return out
