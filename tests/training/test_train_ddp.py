"""The training loop under DDP: 2 CPU processes (gloo), rank/world from the environment as torchrun sets."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, root: str) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from tests.training.samples import ANATOMIES, make_samples, tiny_config
    from training.trainer.batch import InMemoryBatches
    from training.trainer.job import TrainJob
    from training.trainer.loop import train

    config = tiny_config(Path(root), train={"checkpoint_every": 2})
    source = InMemoryBatches(make_samples(16, seed=3), batch_size=2, rank=rank, world_size=world_size)
    result = train(
        TrainJob.from_config(config, out=Path(root) / "run", steps=4), source, ANATOMIES, corpus_texts=source.texts()
    )
    Path(root, f"losses_{rank}.json").write_text(json.dumps(result.losses))
    import torch.distributed as dist

    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_cpu_ranks_train_in_lockstep(tmp_path: Path) -> None:
    from training.trainer.checkpoint import load_checkpoint

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    losses = [json.loads((tmp_path / f"losses_{rank}.json").read_text()) for rank in range(2)]
    assert len(losses[0]) == 4 and losses[0] == pytest.approx(losses[1])  # gathered loss: same on all ranks
    checkpoint = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert checkpoint["progress"]["step"] == 4 and len(checkpoint["rng"]) == 2
    assert (tmp_path / "run" / "model" / "fvlm_config.json").is_file()
