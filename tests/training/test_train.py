"""Training loop: loss goes down, exact resume, NaN guard, checkpoints, metrics file, LR schedule."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from training.trainer.batch import InMemoryBatches
from training.trainer.checkpoint import BEST_NAME, LAST_NAME, CheckpointError, load_checkpoint
from training.trainer.job import TrainJob
from training.trainer.loop import NonFiniteLossError, train
from training.trainer.schedule import warmup_cosine_factor


@pytest.fixture(scope="module")
def samples(make_samples) -> list[dict]:
    return make_samples(16, seed=1)


def _source(samples: list[dict], **kwargs) -> InMemoryBatches:
    return InMemoryBatches(samples, batch_size=4, seed=0, **kwargs)


def test_demo_training_lowers_the_loss(tmp_path: Path, samples: list[dict], anatomies, tiny_config) -> None:
    config = tiny_config(tmp_path, train={"lr": 3e-3, "warmup_steps": 2, "checkpoint_every": 100})
    source = _source(samples)
    result = train(
        TrainJob.from_config(config, out=tmp_path / "run", steps=24, metrics=tmp_path / "metrics" / "train.json"),
        source,
        anatomies,
        corpus_texts=source.texts(),
    )
    assert result.steps == 24 and len(result.losses) == 24
    assert all(math.isfinite(v) for v in result.losses)
    first, last = np.mean(result.losses[:4]), np.mean(result.losses[-4:])
    assert last < first - 0.05, f"loss did not go down: first {first:.3f} last {last:.3f}"
    assert result.samples_per_s > 0 and result.tokens_per_s > result.samples_per_s
    # final model + zero-shot spec saved; tokenizer built from the training texts
    assert (tmp_path / "run" / "model" / "fvlm_config.json").is_file()
    spec = json.loads((tmp_path / "run" / "model" / "zero_shot.json").read_text())
    assert len(spec["labels"]) == 16 and spec["anatomy_names"] == list(anatomies)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer_config.json").is_file()
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    info = json.loads((tmp_path / "metrics" / "train.info.json").read_text())  # identifiers beside the numbers
    assert metrics["steps"] == 24 and info["run_id"] is None and "run_id" not in metrics
    assert metrics["final_loss"] == pytest.approx(result.losses[-1])
    for key in ("samples_per_s", "tokens_per_s", "final_loss_avg"):
        assert key in metrics


def test_resume_reproduces_the_uninterrupted_run_exactly(
    tmp_path: Path, samples: list[dict], anatomies, tiny_config
) -> None:
    # 16 samples / batch 4 = 4 batches per epoch; 8 steps cross an epoch boundary; kill after step 3
    config = tiny_config(tmp_path, train={"checkpoint_every": 100, "coteaching_alpha": 0.5})
    # the WordPiece trainer orders equal-frequency pieces arbitrarily: give both runs one tokenizer
    from training.models.text import build_tokenizer

    build_tokenizer(_source(samples).texts(), config.model.text.vocab_size, tmp_path / "full" / "tokenizer")
    shutil.copytree(tmp_path / "full" / "tokenizer", tmp_path / "resumed" / "tokenizer")
    reference = train(
        TrainJob.from_config(config, out=tmp_path / "full", steps=8),
        _source(samples),
        anatomies,
        corpus_texts=_source(samples).texts(),
    )
    partial = train(
        TrainJob.from_config(config, out=tmp_path / "resumed", steps=8),
        _source(samples),
        anatomies,
        corpus_texts=_source(samples).texts(),
        stop_after=3,
    )
    assert partial.steps == 3
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / LAST_NAME)["progress"]["step"] == 3
    resumed = train(
        TrainJob.from_config(config, out=tmp_path / "resumed", steps=8, resume=True),
        _source(samples),
        anatomies,
        corpus_texts=_source(samples).texts(),
    )
    assert resumed.resumed_from_step == 3
    assert resumed.losses == reference.losses  # bit-exact, steps 1..8
    from training.models.model import FVLM

    a = FVLM.from_pretrained(tmp_path / "full" / "model").state_dict()
    b = FVLM.from_pretrained(tmp_path / "resumed" / "model").state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_resume_without_checkpoint_starts_from_zero(
    tmp_path: Path, samples: list[dict], anatomies, tiny_config
) -> None:
    config = tiny_config(tmp_path)
    result = train(
        TrainJob.from_config(config, out=tmp_path / "run", steps=2, resume=True),
        _source(samples),
        anatomies,
        corpus_texts=_source(samples).texts(),
    )
    assert result.resumed_from_step == 0 and result.steps == 2


def test_non_finite_loss_stops_with_the_step_named(tmp_path: Path, samples: list[dict], anatomies, tiny_config) -> None:
    poisoned = [dict(s) for s in samples[:8]]
    for sample in poisoned[4:]:  # second batch (no shuffle) is NaN
        sample["volume"] = np.full_like(sample["volume"], np.nan)
    config = tiny_config(tmp_path, train={"checkpoint_every": 1})
    source = InMemoryBatches(poisoned, batch_size=4, shuffle=False)
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss is nan"):
        train(
            TrainJob.from_config(config, out=tmp_path / "run", steps=4), source, anatomies, corpus_texts=source.texts()
        )
    # the last good checkpoint (step 1) is intact
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / LAST_NAME)["progress"]["step"] == 1


def test_checkpoints_last_and_best_written_atomically(
    tmp_path: Path, samples: list[dict], anatomies, tiny_config
) -> None:
    config = tiny_config(tmp_path, train={"checkpoint_every": 2})
    train(
        TrainJob.from_config(config, out=tmp_path / "run", steps=4),
        _source(samples),
        anatomies,
        corpus_texts=_source(samples).texts(),
    )
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == sorted([LAST_NAME, BEST_NAME])  # no temp leftovers
    last = load_checkpoint(folder / LAST_NAME)
    assert last["progress"]["step"] == 4 and len(last["rng"]) == 1
    assert {"model", "optimizer", "scheduler", "rng"} <= set(last)
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pt"):
        load_checkpoint(folder / "broken.pt")


def test_clip_baseline_trains(tmp_path: Path, samples: list[dict], anatomies, tiny_config) -> None:
    config = tiny_config(tmp_path, train={"loss": "clip"})
    result = train(
        TrainJob.from_config(config, out=tmp_path / "run", steps=3),
        _source(samples),
        anatomies,
        corpus_texts=_source(samples).texts(),
    )
    assert all(math.isfinite(v) for v in result.losses)
    spec = json.loads((tmp_path / "run" / "model" / "zero_shot.json").read_text())
    assert spec["use_global"] is True


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine_factor(0, 4, 20) == pytest.approx(0.25)
    assert warmup_cosine_factor(3, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine_factor(4, 4, 20) == pytest.approx(1.0)
    assert warmup_cosine_factor(12, 4, 20) == pytest.approx(0.5)
    assert warmup_cosine_factor(20, 4, 20) == pytest.approx(0.0, abs=1e-12)
    values = [warmup_cosine_factor(s, 4, 20) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
