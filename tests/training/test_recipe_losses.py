"""Recipe ingredients beyond fVLM: the sigmoid (SigLIP) form, label supervision, the cross-anatomy term."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training.models.auxiliary import cross_anatomy_loss, label_logits, label_loss
from training.models.distributed import text_keys
from training.models.losses import clip_loss, fvlm_loss, sigmoid_pair_loss
from training.models.model import FVLM
from training.trainer.batch import InMemoryBatches
from training.trainer.job import TrainJob
from training.trainer.loop import train

SCALE = torch.tensor(10.0)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_sigmoid_pair_loss_hand_example() -> None:
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])  # (K=1, B=2, B=2)
    positive = torch.eye(2, dtype=torch.bool).unsqueeze(0)
    valid = torch.ones(1, 2, dtype=torch.bool)
    expected = -(F.logsigmoid(torch.tensor([2.0, 1.0, -0.5, 3.0]))).sum() / 2
    assert float(sigmoid_pair_loss(logits, positive, valid)[0]) == pytest.approx(float(expected))
    # an invalid sample takes its row and column out; no valid row -> 0
    one_valid = torch.tensor([[True, False]])
    assert float(sigmoid_pair_loss(logits, positive, one_valid)[0]) == pytest.approx(
        float(-F.logsigmoid(torch.tensor(2.0)))
    )
    assert float(sigmoid_pair_loss(logits, positive, torch.zeros(1, 2, dtype=torch.bool))[0]) == 0.0


def test_sigmoid_fvlm_loss_prefers_aligned_pairs_and_keeps_the_softmax_default() -> None:
    batch, anatomies, dim = 6, 2, 8
    image = _unit(batch, anatomies, dim)
    texts = [[f"finding {i} {k}" for k in range(anatomies)] for i in range(batch)]
    valid = torch.ones(batch, anatomies, dtype=torch.bool)
    abnormal = torch.ones(batch, anatomies, dtype=torch.bool)
    bias = torch.tensor(-2.0)
    aligned, _ = fvlm_loss(image, image, valid, abnormal, texts, SCALE, logit_bias=bias)
    shuffled, _ = fvlm_loss(image, image.roll(1, dims=0), valid, abnormal, texts, SCALE, logit_bias=bias)
    assert float(aligned) < float(shuffled)
    softmax, _ = fvlm_loss(image, image, valid, abnormal, texts, SCALE)
    assert float(softmax) != pytest.approx(float(aligned))  # the key switches the form
    # clip: sigmoid identity positives, gradients reach both towers
    image_global = _unit(batch, dim, seed=1).requires_grad_(True)
    text_global = _unit(batch, dim, seed=2).requires_grad_(True)
    loss = clip_loss(image_global, text_global, SCALE, logit_bias=bias)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and image_global.grad is not None and text_global.grad is not None


def test_label_loss_counts_only_known_labels_of_present_anatomies() -> None:
    batch, anatomies, dim = 3, 2, 4
    anatomy = _unit(batch, anatomies, dim)
    global_ = _unit(batch, dim, seed=3)
    label_anatomy = [0, 1, -1]  # the third label reads the global embedding
    weight = torch.zeros(3, dim)
    bias = torch.zeros(3)
    logits = label_logits(anatomy, global_, weight, bias, label_anatomy)
    assert logits.shape == (batch, 3) and torch.all(logits == 0)
    labels = torch.tensor([[1, 0, -1], [-1, -1, -1], [0, 1, 1]], dtype=torch.int8)
    present = torch.tensor([[True, True], [True, True], [True, False]])  # sample 2: anatomy 1 absent
    # known and present: (0,0) (0,1) (2,0) (2,2) -> zero head: BCE log 2 each
    assert float(label_loss(logits, labels, present, label_anatomy)) == pytest.approx(math.log(2.0))
    nothing = torch.full_like(labels, -1)
    assert float(label_loss(logits, nothing, present, label_anatomy)) == 0.0
    # the head reads the label's own anatomy
    weight[1] = anatomy[0, 1]
    assert float(label_logits(anatomy, global_, weight, bias, label_anatomy)[0, 1]) == pytest.approx(10.0, rel=1e-5)


def test_cross_anatomy_loss_punishes_collapsed_texts() -> None:
    batch, anatomies, dim = 4, 3, 16
    image = _unit(batch, anatomies, dim)
    texts = [[f"text {i} {k}" for k in range(anatomies)] for i in range(batch)]
    keys = text_keys(texts)
    valid = torch.ones(batch, anatomies, dtype=torch.bool)
    abnormal = torch.ones(batch, anatomies, dtype=torch.bool)
    separated = cross_anatomy_loss(image, image, valid, abnormal, keys, SCALE)
    collapsed_text = image.mean(dim=1, keepdim=True).expand_as(image)  # every anatomy's text in one spot
    collapsed = cross_anatomy_loss(image, F.normalize(collapsed_text, dim=-1), valid, abnormal, keys, SCALE)
    assert float(separated) < float(collapsed)
    # identical texts are positives across anatomies; a single valid cell has nothing to contrast
    assert float(cross_anatomy_loss(image, image, valid[:, :1] & False, abnormal[:, :1], keys[:, :1], SCALE)) == 0.0


def test_every_ingredient_trains_and_the_heads_survive_save_and_load(
    tmp_path: Path, make_samples, anatomies, tiny_config
) -> None:
    config = tiny_config(
        tmp_path,
        train={
            "contrastive": "sigmoid",
            "label_loss_weight": 0.5,
            "cross_anatomy_weight": 0.5,
            "checkpoint_every": 100,
        },
    )
    samples = make_samples(8, seed=2)
    source = InMemoryBatches(samples, batch_size=4, seed=0)
    result = train(
        TrainJob.from_config(config, out=tmp_path / "run", steps=4), source, anatomies, corpus_texts=source.texts()
    )
    assert result.steps == 4 and all(math.isfinite(v) for v in result.losses)
    model = FVLM.from_pretrained(tmp_path / "run" / "model")
    assert model.heads["sigmoid_bias"] is True and len(model.heads["label_anatomy"]) == 18
    assert float(model.logit_bias.detach()) != -10.0  # trained
    assert float(model.label_weight.detach().abs().sum()) > 0.0


def test_a_run_in_which_nothing_enters_the_loss_stops_loudly(tmp_path: Path, make_samples, anatomies, tiny_config):
    from training.trainer.loop import NoLearningSignalError

    samples = make_samples(8, seed=3)
    for sample in samples:  # all normal: with train.require_abnormal no anatomy ever enters the loss
        sample["anatomy_abnormal"] = sample["anatomy_abnormal"] * False
    source = InMemoryBatches(samples, batch_size=4, seed=0)
    config = tiny_config(tmp_path, train={"max_silent_steps": 3})
    with pytest.raises(NoLearningSignalError, match=r"steps 1-3: the loss was exactly 0.*train.max_silent_steps"):
        train(
            TrainJob.from_config(config, out=tmp_path / "a", steps=10), source, anatomies, corpus_texts=source.texts()
        )
    assert not (tmp_path / "a" / "model").exists()
    # a run shorter than the limit that never had a signal fails at its last step too
    config = tiny_config(tmp_path, train={"max_silent_steps": 50})
    with pytest.raises(NoLearningSignalError, match="steps 1-4"):
        train(TrainJob.from_config(config, out=tmp_path / "b", steps=4), source, anatomies, corpus_texts=source.texts())
