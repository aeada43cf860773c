"""Which anatomies enter the fVLM loss (``train.require_abnormal``, the public fVLM code's rule)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.models.losses import anatomies_entering, fvlm_loss, soft_targets

SCALE = torch.tensor(14.0)


def _embeddings(batch: int, anatomies: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, anatomies, 8, generator=generator), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(batch, anatomies, 8, generator=generator), dim=-1)
    return image, text


def _texts(abnormal: torch.Tensor) -> list[list[str]]:
    return [
        [f"finding {i}" if abnormal[i, k] else "normal" for k in range(abnormal.shape[1])]
        for i in range(abnormal.shape[0])
    ]


def test_all_normal_anatomy_is_left_out_and_gets_no_gradient() -> None:
    valid = torch.ones(4, 2, dtype=torch.bool)
    abnormal = torch.zeros(4, 2, dtype=torch.bool)
    abnormal[1, 0] = True  # anatomy 0 has an abnormal sample, anatomy 1 is normal everywhere
    image, text = _embeddings(4, 2)
    total, per = fvlm_loss(
        image, text, valid, abnormal, _texts(abnormal), SCALE, require_abnormal=True, anatomy_names=["lung", "heart"]
    )
    assert per["heart"].item() == 0.0 and per["lung"].item() > 0.0
    total.backward()
    assert image.grad is not None
    assert torch.count_nonzero(image.grad[:, 1]) == 0 and torch.count_nonzero(image.grad[:, 0]) > 0


def test_without_the_rule_an_all_normal_anatomy_still_counts() -> None:
    valid = torch.ones(4, 1, dtype=torch.bool)
    abnormal = torch.zeros(4, 1, dtype=torch.bool)
    image, text = _embeddings(4, 1, seed=1)
    _, per_rule = fvlm_loss(image, text, valid, abnormal, _texts(abnormal), SCALE, require_abnormal=True)
    _, per_all = fvlm_loss(image, text, valid, abnormal, _texts(abnormal), SCALE, require_abnormal=False)
    assert per_rule["anatomy_0"].item() == 0.0 and per_all["anatomy_0"].item() > 0.0


def test_entering_needs_a_valid_abnormal_sample_and_a_contrast() -> None:
    valid = torch.tensor([[True, True, True], [True, True, False], [True, False, True]])
    abnormal = torch.tensor([[True, False, False], [False, False, True], [False, True, False]])
    keys = torch.tensor([[1, 2, 3], [4, 2, 5], [6, 7, 3]])  # anatomy 1: samples 0 and 1 share a text
    targets = soft_targets(valid, abnormal, keys, normal_positives=True)
    entering = anatomies_entering(valid, abnormal, targets)
    # anatomy 0: abnormal sample 0 -> enters; anatomy 1: its only abnormal sample (2) is not valid -> out;
    # anatomy 2: abnormal sample 1 is not valid, the others are normal -> out
    assert entering.tolist() == [1.0, 0.0, 0.0]
    # two identical abnormal texts are all positives of each other: nothing to contrast
    same = torch.tensor([[True], [True]])
    same_targets = soft_targets(same, same, torch.tensor([[9], [9]]), normal_positives=True)
    assert anatomies_entering(same, same, same_targets).tolist() == [0.0]
