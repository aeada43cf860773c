"""Supervised probe: can an image encoder learn the labels at all? (no text, no contrastive loss)

The probe trains ``encoder -> [mean | max over patch tokens] -> linear -> 18 logits`` with BCE on the
study labels, then reports the per-label ROC AUC on held-out studies. Inputs go through the training
loader's own transform functions (``training.trainer.transforms``: random crop + HU window + random flips for
training, the anatomy-centred crop for evaluation) on the arrays the shard stage stores (the model grid
of ``segmentation.model_grid.prepare_model_grid``), so what the probe sees is what fVLM sees.

If the probe cannot reach a useful AUC on a label, contrastive training will not either: it is the
learnability check of ``experiments/learnability.py`` (docs/learnability.md), and its ViT-vs-CNN
comparison chose the demo image encoder.

API::

    encoder = vision_encoder(model_cfg.vision, crop_zyx)  # training.models.model: ViT3D or ConvEncoder3D
    result = fit_probe(encoder, train_studies, test_studies, crop_zyx=..., hu_window=..., steps=...)
    result.test_auc        # {label: AUC} (NaN where the test split holds one class only)

A study is a :class:`ProbeStudy` (``hu_zyx`` int16, ``anatomy_zyx`` uint8, ``labels`` float (L,)).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.metrics import roc_auc
from training.trainer.transforms import centred_starts, extract_crop, label_centre, random_flips, random_starts


@dataclass
class ProbeStudy:
    hu_zyx: np.ndarray  # int16 HU on the model grid (what the shards store)
    anatomy_zyx: np.ndarray  # uint8 anatomy index + 1 (0 background)
    labels: np.ndarray  # float32 (L,) 0/1


@dataclass
class ProbeResult:
    label_names: list[str]
    test_auc: dict[str, float]
    train_auc: dict[str, float]
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    test_scores: np.ndarray | None = None  # (N_test, L) sigmoid scores (confidence intervals)

    @property
    def test_mean_auc(self) -> float:
        return _nanmean(self.test_auc.values())

    @property
    def train_mean_auc(self) -> float:
        return _nanmean(self.train_auc.values())


def label_anatomies(anatomy_set_name: str, label_names: Sequence[str]) -> list[int | None]:
    """Anatomy index of each label in an anatomy set (None: the label has no anatomy there)."""
    from core.anatomy_sets import load_anatomy_set

    anatomy_set = load_anatomy_set(anatomy_set_name)
    anatomy_of = anatomy_set.label_anatomy
    return [None if not anatomy_of.get(name) else anatomy_set.index(str(anatomy_of[name])) for name in label_names]


def _nanmean(values: Any) -> float:
    finite = [float(v) for v in values if not math.isnan(float(v))]
    return float(np.mean(finite)) if finite else float("nan")


class ProbeModel(nn.Module):
    """encoder tokens -> concat(mean, max) over tokens -> linear logits.

    With ``label_anatomy`` (anatomy index per label, None for a label without anatomy) the mean / max of
    label l are taken over the tokens of its anatomy (the crop's mask max-pooled to the token grid, as
    fVLM pools an anatomy's tokens), each anatomy with its own linear head: the image side of fVLM with
    a supervised head instead of the text tower. Labels without anatomy (and anatomies absent from the
    crop) use every token.
    """

    def __init__(self, encoder: nn.Module, n_labels: int, label_anatomy: Sequence[int | None] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        dim = int(getattr(encoder, "embed_dim"))  # noqa: B009 (nn.Module attribute typing)
        self.label_anatomy = None if label_anatomy is None else [(-1 if k is None else int(k)) for k in label_anatomy]
        self.n_anatomies = 0 if self.label_anatomy is None else max(self.label_anatomy) + 1
        self.head = nn.Linear(2 * dim, n_labels)  # every token (no anatomy / global)
        self.anatomy_heads = nn.ModuleList(nn.Linear(2 * dim, n_labels) for _ in range(self.n_anatomies))

    def forward(self, volume: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        final, _, _ = self.encoder(volume)
        logits = self.head(torch.cat([final.mean(dim=1), final.amax(dim=1)], dim=-1))
        if self.label_anatomy is None or mask is None or not self.n_anatomies:  # no label has an anatomy
            return logits
        from training.models.pooling import mask_to_patch_grid

        patch = getattr(self.encoder, "patch_zyx")  # noqa: B009
        membership = mask_to_patch_grid(mask, self.n_anatomies, patch)  # (B, K, N)
        global_peak = final.amax(dim=1)
        per_anatomy = []  # (logits of every label from anatomy k's head, anatomy k present) once per anatomy
        for anatomy, head in enumerate(self.anatomy_heads):
            member = membership[:, anatomy].unsqueeze(2)  # (B, N, 1)
            present = member.any(dim=1)  # (B, 1)
            mean = (final * member).sum(dim=1) / member.sum(dim=1).clamp(min=1)
            peak = final.masked_fill(~member, float("-inf")).amax(dim=1)
            per_anatomy.append((head(torch.cat([mean, torch.where(present, peak, global_peak)], dim=-1)), present))
        columns = []
        for label, anatomy in enumerate(self.label_anatomy):
            if anatomy < 0:
                columns.append(logits[:, label])
                continue
            own, present = per_anatomy[anatomy]
            columns.append(torch.where(present.squeeze(1), own[:, label], logits[:, label]))
        return torch.stack(columns, dim=1)


def crop_study(
    study: ProbeStudy,
    crop_zyx: Sequence[int],
    hu_window: Sequence[float],
    rng: np.random.Generator | None = None,
    flip_prob: float = 0.0,
) -> np.ndarray:
    """The loader's crop: random (+ flips) when ``rng`` is given, else centred on the anatomies' union."""
    return crop_study_with_mask(study, crop_zyx, hu_window, rng, flip_prob)[0]


def crop_study_with_mask(
    study: ProbeStudy,
    crop_zyx: Sequence[int],
    hu_window: Sequence[float],
    rng: np.random.Generator | None = None,
    flip_prob: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`crop_study` and the anatomy mask cropped (and flipped) with it."""
    if rng is not None:
        starts = random_starts(study.hu_zyx.shape, crop_zyx, rng)
    else:
        centre = label_centre(study.anatomy_zyx) or tuple((n - 1) / 2.0 for n in study.hu_zyx.shape)
        starts = centred_starts(study.hu_zyx.shape, crop_zyx, centre)
    volume, mask, _ = extract_crop(study.hu_zyx, study.anatomy_zyx, starts, crop_zyx, hu_window)
    if rng is not None and flip_prob > 0:
        volume, mask = random_flips(volume, mask, rng, flip_prob)
    return volume, mask


def _batch(
    studies: Sequence[ProbeStudy],
    crop_zyx: Sequence[int],
    hu_window: Sequence[float],
    rng: np.random.Generator | None = None,
    flip_prob: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    crops = [crop_study_with_mask(s, crop_zyx, hu_window, rng, flip_prob) for s in studies]
    volume = torch.from_numpy(np.stack([c[0] for c in crops]))[:, None]
    mask = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
    return volume, mask


@torch.no_grad()
def predict_probe(
    model: ProbeModel,
    studies: Sequence[ProbeStudy],
    crop_zyx: Sequence[int],
    hu_window: Sequence[float],
    batch_size: int = 8,
) -> np.ndarray:
    model.eval()
    scores = []
    for start in range(0, len(studies), batch_size):
        chunk = studies[start : start + batch_size]
        volume, mask = _batch(chunk, crop_zyx, hu_window)
        scores.append(torch.sigmoid(model(volume, mask)).numpy())
    return np.concatenate(scores) if scores else np.zeros((0, 0), dtype=np.float32)


def per_label_auc(labels: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> dict[str, float]:
    out = {}
    for index, name in enumerate(names):
        column = labels[:, index]
        out[name] = float(roc_auc(column, scores[:, index])) if 0 < column.sum() < len(column) else float("nan")
    return out


def fit_probe(
    encoder: nn.Module,
    train: Sequence[ProbeStudy],
    test: Sequence[ProbeStudy],
    *,
    label_names: Sequence[str],
    crop_zyx: Sequence[int],
    hu_window: Sequence[float],
    steps: int = 300,
    batch_size: int = 8,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    flip_prob: float = 0.2,
    seed: int = 0,
    log_every: int = 0,
    label_anatomy: Sequence[int | None] | None = None,
) -> ProbeResult:
    """Train the probe for ``steps`` AdamW steps (cosine decay) and report train / test AUC per label.

    ``label_anatomy``: pool each label over its anatomy's tokens (:class:`ProbeModel`); None: every token.
    """
    if not train:
        raise ValueError("fit_probe: no training studies")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ProbeModel(encoder, len(label_names), label_anatomy)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    targets = torch.from_numpy(np.stack([s.labels for s in train]).astype(np.float32))
    losses: list[float] = []
    started = time.perf_counter()
    order = rng.permutation(len(train))
    cursor = 0
    for step in range(steps):
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(len(train)), 0
        index = order[cursor : cursor + batch_size]
        cursor += batch_size
        volume, mask = _batch([train[i] for i in index], crop_zyx, hu_window, rng, flip_prob)
        model.train()
        logits = model(volume, mask)
        loss = F.binary_cross_entropy_with_logits(logits, targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if log_every and (step + 1) % log_every == 0:
            print(
                f"  probe step {step + 1}/{steps}: loss {np.mean(losses[-log_every:]):.4f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    train_scores = predict_probe(model, train, crop_zyx, hu_window)
    test_scores = predict_probe(model, test, crop_zyx, hu_window) if test else np.zeros((0, len(label_names)))
    train_labels = targets.numpy()
    test_labels = np.stack([s.labels for s in test]) if test else np.zeros((0, len(label_names)))
    return ProbeResult(
        label_names=list(label_names),
        test_auc=per_label_auc(test_labels, test_scores, label_names),
        train_auc=per_label_auc(train_labels, train_scores, label_names),
        losses=losses,
        seconds=time.perf_counter() - started,
        steps=steps,
        test_scores=test_scores,
    )
