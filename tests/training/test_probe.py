"""Supervised probe on tiny data: a label the image shows is learned, the AUC table has every label."""

from __future__ import annotations

import math

import numpy as np
import torch

from core.config import VisionConfig
from training.models.model import vision_encoder
from training.trainer.probe import ProbeStudy, crop_study, fit_probe

CROP = (8, 16, 16)


def _studies(n: int, seed: int) -> list[ProbeStudy]:
    rng = np.random.default_rng(seed)
    out = []
    for index in range(n):
        hu = rng.normal(-800, 30, (10, 18, 20)).astype(np.int16)
        anatomy = np.zeros(hu.shape, dtype=np.uint8)
        anatomy[1:9, 2:16, 2:18] = 1
        bright = index % 2
        if bright:  # a soft-tissue blob somewhere inside the anatomy
            z, y, x = rng.integers(2, 6), rng.integers(3, 11), rng.integers(3, 13)
            hu[z : z + 3, y : y + 4, x : x + 4] = 40
        noise_label = float(rng.random() < 0.5)  # not in the image at all
        out.append(ProbeStudy(hu, anatomy, np.array([bright, noise_label], dtype=np.float32)))
    return out


def test_probe_learns_a_visible_label_and_not_an_invisible_one() -> None:
    torch.set_num_threads(1)
    vision = VisionConfig(kind="conv", patch_zyx=(4, 8, 8), embed_dim=16, depth=1, heads=2, pool_layers=[])
    result = fit_probe(
        vision_encoder(vision, CROP),
        _studies(32, 0),
        _studies(16, 1),
        label_names=["blob", "coin"],
        crop_zyx=CROP,
        hu_window=(-1150, 350),
        steps=60,
        batch_size=8,
        lr=3e-3,
        seed=0,
    )
    assert set(result.test_auc) == {"blob", "coin"} and len(result.losses) == 60
    assert result.test_auc["blob"] >= 0.9, result.test_auc
    assert not math.isnan(result.test_mean_auc)


def test_crop_study_is_the_loaders_crop() -> None:
    study = _studies(1, 0)[0]
    centred = crop_study(study, CROP, (-1150, 350))
    assert centred.shape == CROP and centred.dtype == np.float32 and 0.0 <= centred.min() <= centred.max() <= 1.0
    again = crop_study(study, CROP, (-1150, 350))
    assert np.array_equal(centred, again)  # evaluation crop: deterministic
    randomised = crop_study(study, CROP, (-1150, 350), np.random.default_rng(3), flip_prob=0.5)
    assert randomised.shape == CROP


def test_vit_encoder_is_built_for_kind_vit() -> None:
    from training.models.vit3d import ViT3D

    vision = VisionConfig(patch_zyx=(4, 8, 8), embed_dim=16, depth=1, heads=2, pool_layers=[1])
    assert isinstance(vision_encoder(vision, CROP), ViT3D)


def _two_anatomy_studies(n: int, seed: int) -> list[ProbeStudy]:
    """Anatomy 1 (left half) always may hold a distractor blob; the label is a blob in anatomy 2 (right half)."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(n):
        hu = rng.normal(-800, 30, (10, 18, 20)).astype(np.int16)
        anatomy = np.zeros(hu.shape, dtype=np.uint8)
        anatomy[1:9, 2:16, 2:10] = 1
        anatomy[1:9, 2:16, 10:18] = 2
        if rng.random() < 0.5:  # distractor in anatomy 1, independent of the label
            hu[3:6, 5:9, 3:7] = 40
        positive = index % 2
        if positive:
            hu[3:6, 5:9, 12:16] = 40
        out.append(ProbeStudy(hu, anatomy, np.array([positive, positive], dtype=np.float32)))
    return out


def test_anatomy_pooled_probe_scores_each_label_on_its_anatomy() -> None:
    from training.trainer.probe import ProbeModel, label_anatomies

    torch.set_num_threads(1)
    vision = VisionConfig(kind="conv", patch_zyx=(4, 8, 8), embed_dim=16, depth=1, heads=2, pool_layers=[])
    result = fit_probe(
        vision_encoder(vision, CROP),
        _two_anatomy_studies(32, 0),
        _two_anatomy_studies(16, 1),
        label_names=["right blob", "right blob (every token)"],
        crop_zyx=CROP,
        hu_window=(-1150, 350),
        steps=60,
        batch_size=8,
        lr=3e-3,
        seed=0,
        label_anatomy=[1, None],
    )
    assert result.test_auc["right blob"] >= 0.9, result.test_auc
    assert result.test_scores is not None and result.test_scores.shape == (16, 2)

    # a label's logit comes from its anatomy's head; an anatomy absent from the crop falls back to every token
    model = ProbeModel(vision_encoder(vision, CROP), 2, [1, None]).eval()
    volume = torch.rand(2, 1, *CROP)
    mask = torch.zeros(2, *CROP, dtype=torch.long)
    mask[0, :, :, 8:] = 2
    logits = model(volume, mask)
    global_logits = model(volume)  # no mask: every token
    assert logits.shape == (2, 2)
    assert torch.allclose(logits[:, 1], global_logits[:, 1])
    assert torch.allclose(logits[1], global_logits[1])  # study 1 has no anatomy 2
    assert not torch.allclose(logits[0, 0], global_logits[0, 0])
    assert label_anatomies("ctrate4", ["Cardiomegaly", "Lymphadenopathy", "Lung nodule"]) == [1, None, 0]


def test_anatomy_pooled_probe_with_labels_without_anatomy_reads_every_token() -> None:
    from training.trainer.probe import ProbeModel, label_anatomies

    # a label subset none of whose labels has an anatomy (e.g. only "Medical material") is scored globally
    anatomy = label_anatomies("ctrate4", ["Medical material", "Lymphadenopathy"])
    assert anatomy == [None, None]
    vision = VisionConfig(kind="conv", patch_zyx=(4, 8, 8), embed_dim=16, depth=1, heads=2, pool_layers=[])
    model = ProbeModel(vision_encoder(vision, CROP), 2, anatomy).eval()
    volume = torch.rand(2, 1, *CROP)
    mask = torch.ones(2, *CROP, dtype=torch.long)
    assert torch.allclose(model(volume, mask), model(volume))
