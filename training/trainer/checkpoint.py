"""Training checkpoints: one file per checkpoint, written atomically, ``last.pt`` and ``best.pt`` kept.

A checkpoint holds everything exact resume needs: model / EMA-peer / optimizer / scheduler state, the
RNG states of every rank (torch CPU + CUDA, numpy, python ``random``) at the checkpointed step and at
the start of its epoch (so the data iterator is rebuilt identically), the data position (epoch, batches
consumed in that epoch), the global step and the best loss so far, plus the MLflow run id so a resumed
run keeps logging into the same run.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.io import atomic_path

CHECKPOINT_FORMAT = 1
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (names the file and the reason)."""


@dataclass
class TrainProgress:
    """Where a run stands: global optimizer step and the position in the data stream."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_loss: float = float("inf")
    run_id: str | None = None
    loss_history: list[float] = field(default_factory=list)


def capture_rng_state() -> dict[str, Any]:
    """All RNG states that influence training on this process."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``path`` atomically (a killed writer never leaves a partial checkpoint)."""
    final = Path(path)
    with atomic_path(final) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)
    return final


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    source = Path(path)
    if not source.is_file():
        raise CheckpointError(f"{source}: no such checkpoint")
    try:
        payload = torch.load(source, map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{source}: cannot read checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: not an fvlm checkpoint of format {CHECKPOINT_FORMAT}")
    return payload


def latest_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    candidate = Path(checkpoint_dir) / LAST_NAME
    return candidate if candidate.is_file() else None
