"""fVLM losses: per-anatomy soft-target InfoNCE (+ disease-aware co-teaching) and a global CLIP loss.

Notation for one anatomy k over the (gathered) batch of B samples:

* ``valid[i]``: anatomy k of sample i is intact, present in the mask and has a non-empty text;
* ``S = logit_scale * img @ txt.T`` (B x B), rows = images, columns = texts;
* base positives ``P[i, j] = valid[i] & valid[j] & (i == j | (normal_positives & normal[i] & normal[j])
  | text[i] == text[j])``, targets ``T = P / P.sum(1)`` (row-normalised; P is symmetric);
* co-teaching: ``Q = softmax(coteach_logits[k])`` over valid columns (peer model, no gradient); for an
  abnormal row i: ``T'[i] = (1 - alpha) T[i] + alpha Q[i]``; normal rows unchanged. The text->image
  direction uses the transposed peer logits the same way;
* ``loss_k = 0.5 * (mean_{valid i} CE(T'[i], softmax(S[i])) + mean_{valid j} CE(T'_t2i[j], softmax(S.T[j])))``,
  ``loss = sum_k loss_k`` (an anatomy without valid rows contributes 0).

Everything is batched over anatomies (K x B x B); there is no Python loop over samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from training.models.distributed import gather_features, text_keys

_MASKED_LOGIT = -1.0e9


def soft_targets(
    valid: torch.Tensor,
    abnormal: torch.Tensor,
    keys: torch.Tensor,
    normal_positives: bool = True,
) -> torch.Tensor:
    """Row-normalised positive matrix per anatomy: (B, K) inputs -> (K, B, B) float32.

    ``keys`` (B, K) int64 identifies texts (equal key = identical text). Rows of invalid samples are 0.
    """
    valid_kb = valid.t().bool()  # (K, B)
    normal_kb = (~abnormal.bool()).t()
    keys_kb = keys.t()
    batch = valid.shape[0]
    eye = torch.eye(batch, dtype=torch.bool, device=valid.device).unsqueeze(0)
    positive = eye | (keys_kb.unsqueeze(2) == keys_kb.unsqueeze(1))
    if normal_positives:
        positive = positive | (normal_kb.unsqueeze(2) & normal_kb.unsqueeze(1))
    positive = positive & valid_kb.unsqueeze(2) & valid_kb.unsqueeze(1)
    positive = positive.float()
    return positive / positive.sum(dim=2, keepdim=True).clamp_min(1.0)


def coteach_targets(
    targets: torch.Tensor,
    peer_logits: torch.Tensor,
    valid: torch.Tensor,
    abnormal: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """Blend the peer's softmaxed similarity rows into the targets of abnormal rows.

    targets, peer_logits: (K, B, B) (rows = queries); valid, abnormal: (B, K). Returns (K, B, B) whose
    valid rows are distributions; normal and invalid rows are returned unchanged.
    """
    if alpha == 0.0:
        return targets
    valid_kb = valid.t().bool()
    column_ok = valid_kb.unsqueeze(1)  # (K, 1, B)
    peer = peer_logits.detach().float().masked_fill(~column_ok, _MASKED_LOGIT)
    peer_distribution = torch.softmax(peer, dim=2) * column_ok
    blend_rows = (abnormal.t().bool() & valid_kb).unsqueeze(2)  # (K, B, 1)
    blended = (1.0 - alpha) * targets + alpha * peer_distribution
    return torch.where(blend_rows, blended, targets)


def _soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, valid_kb: torch.Tensor) -> torch.Tensor:
    """Mean over valid rows of CE(targets, softmax(logits)), per anatomy: (K, B, B) -> (K,)."""
    masked = logits.masked_fill(~valid_kb.unsqueeze(1), _MASKED_LOGIT)
    log_prob = torch.log_softmax(masked, dim=2)
    per_row = -(targets * log_prob).sum(dim=2)  # invalid rows: targets 0 -> 0
    per_row = per_row * valid_kb
    return per_row.sum(dim=1) / valid_kb.sum(dim=1).clamp_min(1)


def fvlm_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    valid: torch.Tensor,
    abnormal: torch.Tensor,
    texts: Sequence[Sequence[str]],
    logit_scale: torch.Tensor,
    normal_positives: bool = True,
    coteach_logits: torch.Tensor | None = None,
    alpha: float = 0.0,
    gather: bool = False,
    anatomy_names: Sequence[str] | None = None,
    require_abnormal: bool = False,
    logit_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-anatomy soft-target InfoNCE summed over anatomies (see module docstring).

    ``logit_bias`` given: the sigmoid (SigLIP) form instead of the softmax, with the same positives
    (:func:`sigmoid_pair_loss`; co-teaching targets do not apply to it).

    image_emb, text_emb: (B, K, D) L2-normalised; valid, abnormal: (B, K) bool; texts: B lists of K
    strings (empty text -> that cell is invalid); coteach_logits: (K, B_global, B_global) peer logits
    (image rows x text columns) on the *gathered* batch, or None; gather: concatenate features of all
    DDP ranks first (the local slice keeps its gradient). ``require_abnormal`` (the public fVLM code's
    rule): anatomy k enters the loss only when some valid sample of the gathered batch is abnormal for it
    and its positives are not every valid pair; an all-normal batch has uniform targets, and fitting them
    only pulls every embedding of the anatomy together. Returns (total, {anatomy name: loss_k}).
    """
    if image_emb.shape != text_emb.shape or image_emb.dim() != 3:
        raise ValueError(
            f"image_emb {tuple(image_emb.shape)} and text_emb {tuple(text_emb.shape)} must both be (B, K, D)"
        )
    batch, n_anatomies, _ = image_emb.shape
    if tuple(valid.shape) != (batch, n_anatomies) or tuple(abnormal.shape) != (batch, n_anatomies):
        raise ValueError(
            f"valid {tuple(valid.shape)} / abnormal {tuple(abnormal.shape)} must be (B, K)=({batch}, {n_anatomies})"
        )
    if len(texts) != batch or any(len(row) != n_anatomies for row in texts):
        raise ValueError(f"texts must be {batch} lists of {n_anatomies} strings")
    keys = text_keys(texts, device=image_emb.device)
    valid = valid.to(image_emb.device).bool() & (keys != 0)
    abnormal = abnormal.to(image_emb.device).bool()
    if gather:
        image_emb = gather_features(image_emb)
        text_emb = gather_features(text_emb)
        valid = gather_features(valid)
        abnormal = gather_features(abnormal)
        keys = gather_features(keys)
    global_batch = image_emb.shape[0]

    logits = logit_scale.float() * torch.einsum("ikd,jkd->kij", image_emb.float(), text_emb.float())
    targets = soft_targets(valid, abnormal, keys, normal_positives)
    entering = anatomies_entering(valid, abnormal, targets) if require_abnormal else None
    targets_t2i = targets  # positives are symmetric
    if coteach_logits is not None and alpha > 0.0:
        expected = (n_anatomies, global_batch, global_batch)
        if tuple(coteach_logits.shape) != expected:
            raise ValueError(
                f"coteach_logits must be (K, B, B)={expected} on the gathered batch, got {tuple(coteach_logits.shape)}"
            )
        peer = coteach_logits.to(logits.device)
        targets = coteach_targets(targets, peer, valid, abnormal, alpha)
        targets_t2i = coteach_targets(targets_t2i, peer.transpose(1, 2), valid, abnormal, alpha)

    valid_kb = valid.t()
    if logit_bias is not None:
        per_anatomy = sigmoid_pair_loss(logits + logit_bias.float(), targets > 0, valid_kb)
    else:
        image_to_text = _soft_cross_entropy(logits, targets, valid_kb)
        text_to_image = _soft_cross_entropy(logits.transpose(1, 2), targets_t2i, valid_kb)
        per_anatomy = 0.5 * (image_to_text + text_to_image)  # (K,), 0 where no valid row
    if entering is not None:
        per_anatomy = per_anatomy * entering
    names = list(anatomy_names) if anatomy_names is not None else [f"anatomy_{k}" for k in range(n_anatomies)]
    if len(names) != n_anatomies:
        raise ValueError(f"anatomy_names has {len(names)} names for K={n_anatomies}")
    return per_anatomy.sum(), {name: per_anatomy[k] for k, name in enumerate(names)}


def anatomies_entering(valid: torch.Tensor, abnormal: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(K,) float mask of the anatomies with a contrast to learn: some valid sample is abnormal, and not
    every valid pair is a positive (``targets``: the (K, B, B) base targets of :func:`soft_targets`)."""
    valid_kb = valid.t().bool()
    has_abnormal = (valid_kb & abnormal.t().bool()).any(dim=1)
    pair_valid = valid_kb.unsqueeze(2) & valid_kb.unsqueeze(1)
    all_positive = ((targets > 0) | ~pair_valid).all(dim=2).all(dim=1)
    return (has_abnormal & ~all_positive).to(targets.dtype)


def peer_logits(
    peer_image_emb: torch.Tensor, peer_text_emb: torch.Tensor, logit_scale: torch.Tensor, gather: bool = False
) -> torch.Tensor:
    """Co-teaching peer logits (K, B, B) from a peer model's (B, K, D) embeddings (no gradient)."""
    with torch.no_grad():
        if gather:
            peer_image_emb = gather_features(peer_image_emb)
            peer_text_emb = gather_features(peer_text_emb)
        return logit_scale.detach().float() * torch.einsum(
            "ikd,jkd->kij", peer_image_emb.float(), peer_text_emb.float()
        )


def sigmoid_pair_loss(logits: torch.Tensor, positive: torch.Tensor, valid_kb: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss per anatomy: (K, B, B) biased logits, (K, B, B) bool positives,
    (K, B) valid -> (K,). Every valid (image, text) pair is one binary problem, label +1 for a positive
    and -1 otherwise; the sum over pairs is divided by the number of valid rows (SigLIP divides by the
    batch), so an anatomy without valid rows contributes 0."""
    pair_valid = valid_kb.unsqueeze(2) & valid_kb.unsqueeze(1)
    sign = positive.float() * 2.0 - 1.0
    per_pair = -F.logsigmoid(sign * logits) * pair_valid
    return per_pair.sum(dim=(1, 2)) / valid_kb.sum(dim=1).clamp_min(1)


def clip_loss(
    image_global: torch.Tensor,
    text_global: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = False,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE with identity targets (whole volume vs whole report), CLIP-style; with
    ``logit_bias`` the sigmoid (SigLIP) form with the same identity positives."""
    if image_global.shape != text_global.shape or image_global.dim() != 2:
        raise ValueError(
            f"image_global {tuple(image_global.shape)} and text_global {tuple(text_global.shape)} must both be (B, D)"
        )
    if gather:
        image_global = gather_features(image_global)
        text_global = gather_features(text_global)
    logits = logit_scale.float() * image_global.float() @ text_global.float().t()
    if logit_bias is not None:
        eye = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
        every = torch.ones(1, logits.shape[0], dtype=torch.bool, device=logits.device)
        return sigmoid_pair_loss((logits + logit_bias.float()).unsqueeze(0), eye.unsqueeze(0), every)[0]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def fvlm_loss_reference(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    valid: torch.Tensor,
    abnormal: torch.Tensor,
    texts: Sequence[Sequence[str]],
    logit_scale: torch.Tensor,
    normal_positives: bool = True,
) -> torch.Tensor:
    """Faithful eager reference of :func:`fvlm_loss` (no co-teaching, no gather): Python loops over
    anatomies and patients, one soft-target row at a time, as the public fVLM code reads. Used by the
    tests and as the slow side of ``benchmarks/train_step.py``."""
    batch, n_anatomies, _ = image_emb.shape
    total = image_emb.new_zeros((), dtype=torch.float32)
    for anatomy in range(n_anatomies):
        rows = [i for i in range(batch) if bool(valid[i, anatomy]) and texts[i][anatomy].strip()]
        if not rows:
            continue
        image = image_emb[rows, anatomy].float()
        text = text_emb[rows, anatomy].float()
        logits = logit_scale.float() * image @ text.t()
        image_to_text, text_to_image = [], []
        for a, i in enumerate(rows):
            target = torch.zeros(len(rows), device=image.device)
            for b, j in enumerate(rows):
                same_text = texts[i][anatomy].strip() == texts[j][anatomy].strip()
                both_normal = not bool(abnormal[i, anatomy]) and not bool(abnormal[j, anatomy])
                target[b] = float(i == j or same_text or (normal_positives and both_normal))
            target = target / target.sum()
            image_to_text.append(-(target * torch.log_softmax(logits[a], dim=0)).sum())
            text_to_image.append(-(target * torch.log_softmax(logits[:, a], dim=0)).sum())
        total = total + 0.5 * (torch.stack(image_to_text).mean() + torch.stack(text_to_image).mean())
    return total
