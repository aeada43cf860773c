"""Loss terms beyond the published fVLM recipe (2025-26 CT-RATE papers), each off unless its weight is set:

* :func:`label_loss` -- label-level supervision from the labels parsed out of the reports: one logistic
  head per label on the image embedding of the label's anatomy (the global embedding for a label without
  an anatomy), binary cross-entropy over the known (0 / 1) labels. The top CT-RATE results get their
  labels from an LLM; report_parsing's labeller extracts the same 18 labels.
* :func:`cross_anatomy_loss` -- one soft-target InfoNCE over every valid (sample, anatomy) cell of the
  batch at once, so that an image of anatomy k is also contrasted with the texts of the *other* anatomies:
  the per-anatomy terms never compare a heart image with a lung sentence, which lets the text tower map
  every anatomy's texts to one region (text-embedding collapse). Positives: the same anatomy's base
  positives (same study, identical text, both normal) and identical texts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from training.models.losses import soft_targets


def label_logits(
    anatomy_emb: torch.Tensor,
    global_emb: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    label_anatomy: Sequence[int],
    scale: float = 10.0,
) -> torch.Tensor:
    """(B, L) logits: ``scale * <w_l, e>`` + b_l, where e is anatomy ``label_anatomy[l]``'s L2-normalised
    embedding (B, K, D) or, for -1, the global embedding (B, D). ``scale`` keeps unit-norm features in a
    useful logit range from step 0 (the head starts at zero)."""
    index = torch.as_tensor(list(label_anatomy), dtype=torch.long, device=anatomy_emb.device)
    with_global = torch.cat([anatomy_emb, global_emb.unsqueeze(1)], dim=1)  # (B, K + 1, D)
    per_label = with_global[:, torch.where(index < 0, anatomy_emb.shape[1], index)]  # (B, L, D)
    return scale * torch.einsum("bld,ld->bl", per_label.float(), weight.float()) + bias.float()


def label_loss(
    logits: torch.Tensor, labels: torch.Tensor, present: torch.Tensor, label_anatomy: Sequence[int]
) -> torch.Tensor:
    """Mean BCE over the known labels (``labels`` (B, L) int: 1 / 0 / -1 unknown) whose anatomy is present
    in the crop (``present`` (B, K) bool; labels without an anatomy always count). 0 when none is known."""
    index = torch.as_tensor(list(label_anatomy), dtype=torch.long, device=logits.device)
    labels = labels.to(logits.device)
    present_ext = torch.cat([present.to(logits.device).bool(), present.new_ones((present.shape[0], 1)).bool()], 1)
    anatomy_ok = present_ext[:, torch.where(index < 0, present.shape[1], index)]
    known = (labels >= 0) & anatomy_ok
    if not bool(known.any()):
        return logits.sum() * 0.0  # keeps the graph (DDP: every parameter gets a gradient)
    targets = labels.clamp_min(0).float()
    per_cell = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (per_cell * known).sum() / known.sum()


def cross_anatomy_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    valid: torch.Tensor,
    abnormal: torch.Tensor,
    keys: torch.Tensor,
    logit_scale: torch.Tensor,
    normal_positives: bool = True,
) -> torch.Tensor:
    """Soft-target InfoNCE over all valid (sample, anatomy) cells: image_emb / text_emb (B, K, D),
    valid / abnormal (B, K) bool, keys (B, K) int64 text keys (0 = no text). Returns a scalar (0 without
    valid cells)."""
    batch, n_anatomies, dim = image_emb.shape
    valid = valid.bool() & (keys != 0)
    base = soft_targets(valid, abnormal, keys, normal_positives) > 0  # (K, B, B) same-anatomy positives
    cells = valid.reshape(-1)  # cell c = i * K + k
    if int(cells.sum()) < 2:
        return image_emb.sum() * 0.0
    positive = torch.zeros(batch * n_anatomies, batch * n_anatomies, dtype=torch.bool, device=image_emb.device)
    view = positive.view(batch, n_anatomies, batch, n_anatomies)
    for anatomy in range(n_anatomies):  # K is small (4-8): block-diagonal in anatomy
        view[:, anatomy, :, anatomy] = base[anatomy]
    flat_keys = keys.reshape(-1)
    positive |= (flat_keys.unsqueeze(1) == flat_keys.unsqueeze(0)) & (flat_keys != 0).unsqueeze(1)
    positive = positive[cells][:, cells].float()
    targets = positive / positive.sum(dim=1, keepdim=True).clamp_min(1.0)
    images = image_emb.reshape(-1, dim)[cells].float()
    texts = text_emb.reshape(-1, dim)[cells].float()
    logits = logit_scale.float() * images @ texts.t()
    image_to_text = -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * torch.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()  # positives symmetric
    return 0.5 * (image_to_text + text_to_image)
