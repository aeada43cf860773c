"""Properties of the fVLM per-anatomy loss, co-teaching targets and the CLIP loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.models.distributed import text_keys
from training.models.losses import (
    clip_loss,
    coteach_targets,
    fvlm_loss,
    fvlm_loss_reference,
    peer_logits,
    soft_targets,
)

SCALE = torch.tensor(10.0)


def _embeddings(batch: int, anatomies: int, dim: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(batch, anatomies, dim, generator=generator), dim=-1)
    text = F.normalize(torch.randn(batch, anatomies, dim, generator=generator), dim=-1)
    return image, text


def _texts(batch: int, anatomies: int) -> list[list[str]]:
    return [[f"text {sample} {anatomy}" for anatomy in range(anatomies)] for sample in range(batch)]


def _naive_loss(image, text, valid, abnormal, texts, scale, normal_positives=True):
    """Per-anatomy loop over valid samples only, with explicit soft targets (reference)."""
    total, per = torch.tensor(0.0), []
    for anatomy in range(image.shape[1]):
        rows = [i for i in range(image.shape[0]) if valid[i, anatomy] and texts[i][anatomy].strip()]
        if not rows:
            per.append(torch.tensor(0.0))
            continue
        img, txt = image[rows, anatomy], text[rows, anatomy]
        logits = scale * img @ txt.t()
        target = torch.zeros(len(rows), len(rows))
        for a, i in enumerate(rows):
            for b, j in enumerate(rows):
                same_text = texts[i][anatomy].strip() == texts[j][anatomy].strip()
                both_normal = not abnormal[i, anatomy] and not abnormal[j, anatomy]
                target[a, b] = float(i == j or same_text or (normal_positives and both_normal))
        target = target / target.sum(1, keepdim=True)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        per.append(loss)
        total = total + loss
    return total, per


def test_soft_targets_hand_example():
    # 4 samples, 1 anatomy: 0 normal, 1 abnormal, 2 normal, 3 abnormal with the same text as 1
    valid = torch.tensor([[True], [True], [True], [True]])
    abnormal = torch.tensor([[False], [True], [False], [True]])
    keys = text_keys([["clear"], ["nodule"], ["clear lungs"], ["nodule"]])
    targets = soft_targets(valid, abnormal, keys, normal_positives=True)[0]
    expected = torch.tensor([[0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5], [0.5, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.5]])
    torch.testing.assert_close(targets, expected)
    identity_and_text = soft_targets(valid, abnormal, keys, normal_positives=False)[0]
    expected_no_normal = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, 0.5]]
    )
    torch.testing.assert_close(identity_and_text, expected_no_normal)


def test_soft_targets_invalid_rows_and_columns_are_zero():
    valid = torch.tensor([[True], [False], [True]])
    abnormal = torch.zeros(3, 1, dtype=torch.bool)
    targets = soft_targets(valid, abnormal, text_keys([["a"], ["b"], ["c"]]))[0]
    assert torch.all(targets[1] == 0) and torch.all(targets[:, 1] == 0)
    torch.testing.assert_close(targets[0], torch.tensor([0.5, 0.0, 0.5]))


def test_loss_matches_naive_per_anatomy_loop():
    batch, anatomies = 6, 3
    image, text = _embeddings(batch, anatomies)
    valid = torch.rand(batch, anatomies, generator=torch.Generator().manual_seed(1)) > 0.25
    abnormal = torch.rand(batch, anatomies, generator=torch.Generator().manual_seed(2)) > 0.5
    texts = _texts(batch, anatomies)
    texts[4][0] = texts[1][0]  # identical texts -> positives
    texts[2][2] = ""  # empty text -> invalid cell
    for normal_positives in (True, False):
        total, per = fvlm_loss(image, text, valid, abnormal, texts, SCALE, normal_positives, None, 0.0, False)
        naive_total, naive_per = _naive_loss(image, text, valid, abnormal, texts, SCALE, normal_positives)
        torch.testing.assert_close(total, naive_total)
        torch.testing.assert_close(torch.stack(list(per.values())), torch.stack(naive_per))
        reference = fvlm_loss_reference(image, text, valid, abnormal, texts, SCALE, normal_positives)
        torch.testing.assert_close(total, reference)


def test_loss_is_invariant_to_batch_permutation():
    batch, anatomies = 7, 4
    image, text = _embeddings(batch, anatomies, seed=3)
    valid = torch.rand(batch, anatomies, generator=torch.Generator().manual_seed(4)) > 0.2
    abnormal = torch.rand(batch, anatomies, generator=torch.Generator().manual_seed(5)) > 0.5
    texts = _texts(batch, anatomies)
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(6))
    permuted_texts = [texts[i] for i in order.tolist()]
    base, _ = fvlm_loss(image, text, valid, abnormal, texts, SCALE, True, None, 0.0, False)
    permuted, _ = fvlm_loss(
        image[order], text[order], valid[order], abnormal[order], permuted_texts, SCALE, True, None, 0.0, False
    )
    torch.testing.assert_close(base, permuted)


def test_invalid_rows_contribute_nothing_and_get_no_gradient():
    batch, anatomies = 5, 2
    image, text = _embeddings(batch, anatomies, seed=7)
    valid = torch.ones(batch, anatomies, dtype=torch.bool)
    valid[1, 0] = False  # cut anatomy
    valid[3, :] = False  # absent everywhere
    abnormal = torch.zeros(batch, anatomies, dtype=torch.bool)
    abnormal[0, 0] = True
    texts = _texts(batch, anatomies)
    image = image.clone().requires_grad_(True)
    base, _ = fvlm_loss(image, text, valid, abnormal, texts, SCALE, True, None, 0.0, False)
    base.backward()
    assert torch.isfinite(image.grad).all()
    assert torch.all(image.grad[1, 0] == 0) and torch.all(image.grad[3] == 0)
    scrambled = image.detach().clone()
    scrambled[1, 0] = F.normalize(torch.randn(8), dim=0)
    scrambled[3] = F.normalize(torch.randn(2, 8), dim=-1)
    changed, _ = fvlm_loss(scrambled, text, valid, abnormal, texts, SCALE, True, None, 0.0, False)
    torch.testing.assert_close(base.detach(), changed)


def test_anatomy_without_valid_rows_gives_zero_not_nan():
    image, text = _embeddings(3, 2)
    valid = torch.tensor([[True, False], [True, False], [False, False]])
    total, per = fvlm_loss(
        image,
        text,
        valid,
        torch.zeros(3, 2, dtype=torch.bool),
        _texts(3, 2),
        SCALE,
        True,
        None,
        0.0,
        False,
        anatomy_names=["lung", "heart"],
    )
    assert torch.isfinite(total)
    assert float(per["heart"]) == 0.0 and float(per["lung"]) > 0.0


def test_coteach_targets_are_distributions_and_keep_normal_rows():
    batch, anatomies = 6, 2
    valid = torch.ones(batch, anatomies, dtype=torch.bool)
    valid[5, 1] = False
    abnormal = torch.zeros(batch, anatomies, dtype=torch.bool)
    abnormal[[1, 4], 0] = True
    abnormal[2, 1] = True
    keys = text_keys(_texts(batch, anatomies))
    base = soft_targets(valid, abnormal, keys)
    peer = torch.randn(anatomies, batch, batch, generator=torch.Generator().manual_seed(8)) * 5
    blended = coteach_targets(base, peer, valid, abnormal, alpha=0.5)
    assert torch.all(blended >= 0)
    valid_rows = valid.t()
    torch.testing.assert_close(blended.sum(-1)[valid_rows], torch.ones(int(valid_rows.sum())))
    assert torch.all(blended.sum(-1)[~valid_rows] == 0)
    assert torch.all(blended[1, :, 5] == 0)  # invalid column gets no mass
    normal_rows = (~abnormal).t()
    torch.testing.assert_close(blended[normal_rows], base[normal_rows])
    assert not torch.allclose(blended[0, 1], base[0, 1])
    # alpha = 1: abnormal rows are the peer's softmax over valid columns
    full = coteach_targets(base, peer, valid, abnormal, alpha=1.0)
    torch.testing.assert_close(full[0, 1], torch.softmax(peer[0, 1], dim=0))


def test_coteaching_alpha_zero_equals_base_loss_and_alpha_changes_it():
    batch, anatomies = 6, 3
    image, text = _embeddings(batch, anatomies, seed=9)
    valid = torch.ones(batch, anatomies, dtype=torch.bool)
    abnormal = torch.rand(batch, anatomies, generator=torch.Generator().manual_seed(10)) > 0.5
    texts = _texts(batch, anatomies)
    peer_image, peer_text = _embeddings(batch, anatomies, seed=11)
    peer = peer_logits(peer_image, peer_text, SCALE)
    assert peer.shape == (anatomies, batch, batch)
    base, _ = fvlm_loss(image, text, valid, abnormal, texts, SCALE, True, None, 0.0, False)
    zero, _ = fvlm_loss(image, text, valid, abnormal, texts, SCALE, True, peer, 0.0, False)
    half, _ = fvlm_loss(image, text, valid, abnormal, texts, SCALE, True, peer, 0.5, False)
    torch.testing.assert_close(base, zero)
    assert not torch.allclose(base, half) and torch.isfinite(half)
    # all rows normal -> co-teaching changes nothing
    normal = torch.zeros_like(abnormal)
    plain, _ = fvlm_loss(image, text, valid, normal, texts, SCALE, True, None, 0.0, False)
    taught, _ = fvlm_loss(image, text, valid, normal, texts, SCALE, True, peer, 0.5, False)
    torch.testing.assert_close(plain, taught)


def test_clip_loss_equals_fvlm_loss_with_identity_targets():
    image, text = _embeddings(5, 1, seed=12)
    clip = clip_loss(image[:, 0], text[:, 0], SCALE)
    valid = torch.ones(5, 1, dtype=torch.bool)
    fine, _ = fvlm_loss(
        image, text, valid, torch.ones(5, 1, dtype=torch.bool), _texts(5, 1), SCALE, False, None, 0.0, False
    )
    torch.testing.assert_close(clip, fine)
    labels = torch.arange(5)
    logits = SCALE * image[:, 0] @ text[:, 0].t()
    torch.testing.assert_close(clip, 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)))
