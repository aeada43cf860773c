"""One optimisation step's parts: the model + loss module DDP wraps, AdamW parameter groups, the EMA peer
update and the token counts behind the throughput figures (shared by the loop and the benchmarks)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from core.config import TrainConfig
    from training.models.model import FVLM


class LossModule(nn.Module):
    """model + loss in one ``forward`` so DistributedDataParallel's hooks see every parameter use."""

    def __init__(self, model: FVLM, train_cfg: TrainConfig, gather: bool) -> None:
        super().__init__()
        self.model = model
        self.loss_kind = train_cfg.loss
        self.normal_positives = train_cfg.normal_positives
        self.require_abnormal = train_cfg.require_abnormal
        self.alpha = float(train_cfg.coteaching_alpha)
        self.gather = gather
        self.label_weight = float(getattr(train_cfg, "label_loss_weight", 0.0))
        self.cross_weight = float(getattr(train_cfg, "cross_anatomy_weight", 0.0))
        if self.label_weight > 0.0 and "label_anatomy" not in model.heads:
            raise ValueError("train.label_loss_weight > 0 needs the model's label heads (FVLM.add_heads)")

    def forward(
        self, batch: Mapping[str, Any], peer: nn.Module | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from training.models.losses import clip_loss, fvlm_loss, peer_logits

        device = self.model.device
        volume = batch["volume"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        bias = getattr(self.model, "logit_bias", None)  # present with train.contrastive: sigmoid
        if self.loss_kind == "clip":
            out = self.model(volume, mask, report_text=batch["report_text"])
            loss = clip_loss(out["global_"], out["text_global"], out["logit_scale"], self.gather, bias)
            return self._with_label_loss(loss, {}, out, batch)
        out = self.model(volume, mask, anatomy_text=batch["anatomy_text"])
        valid = batch["anatomy_intact"].to(device).bool() & out["anatomy_present"]
        coteach = None
        if peer is not None and self.alpha > 0.0:
            with torch.no_grad():
                peer_out = peer(volume, mask, anatomy_text=batch["anatomy_text"])
            coteach = peer_logits(peer_out["anatomy"], peer_out["text_anatomy"], out["logit_scale"], gather=self.gather)
        loss, parts = fvlm_loss(
            out["anatomy"],
            out["text_anatomy"],
            valid,
            batch["anatomy_abnormal"].to(device),
            batch["anatomy_text"],
            out["logit_scale"],
            normal_positives=self.normal_positives,
            coteach_logits=coteach,
            alpha=self.alpha,
            gather=self.gather,
            anatomy_names=self.model.anatomy_names,
            require_abnormal=self.require_abnormal,
            logit_bias=bias,
        )
        if self.cross_weight > 0.0:
            from training.models.auxiliary import cross_anatomy_loss
            from training.models.distributed import text_keys

            keys = text_keys(batch["anatomy_text"], device=device)
            abnormal = batch["anatomy_abnormal"].to(device)
            cross = cross_anatomy_loss(
                out["anatomy"], out["text_anatomy"], valid, abnormal, keys, out["logit_scale"], self.normal_positives
            )
            parts = {**parts, "cross_anatomy": cross.detach()}
            loss = loss + self.cross_weight * cross
        return self._with_label_loss(loss, parts, out, batch)

    def _with_label_loss(
        self, loss: torch.Tensor, parts: dict[str, torch.Tensor], out: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Add ``train.label_loss_weight`` x the parsed-label BCE (training.models.auxiliary.label_loss)."""
        if self.label_weight <= 0.0:
            return loss, parts
        from training.models.auxiliary import label_logits, label_loss

        label_anatomy = self.model.heads["label_anatomy"]
        logits = label_logits(
            out["anatomy"], out["global_"], self.model.label_weight, self.model.label_bias, label_anatomy
        )
        supervised = label_loss(logits, batch["labels"], out["anatomy_present"], label_anatomy)
        return loss + self.label_weight * supervised, {**parts, "labels": supervised.detach()}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: [weight-decayed (>= 2-D) parameters, 1-D parameters without decay], in
    ``named_parameters`` order (norms, biases, temperature, position embeddings, queries get no decay)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_adamw_problem(device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
    """Why ``AdamW(fused=True)`` cannot step parameters of ``dtype`` on ``device`` (None: it can). torch checks
    the device only at the first ``step()``, so one step on a scratch one-element tensor is the probe."""
    probe = torch.zeros(1, device=device, dtype=dtype, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:
        torch.optim.AdamW([probe], lr=1e-3, fused=True).step()
    except (RuntimeError, ValueError) as error:  # what torch raises for an unsupported device / dtype
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def make_adamw(groups: Iterable[Any], lr: float, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over ``groups`` (parameters or parameter-group dicts); ``fused=True`` (``train.fused_optimizer``):
    one fused kernel for the whole update. Where the parameters' device / dtype has no such kernel, the plain
    AdamW, and one log line saying so."""
    groups = list(groups)
    if not fused:
        return torch.optim.AdamW(groups, lr=lr)
    params = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    kinds = {(p.device, p.dtype) for p in params}
    problems = {f"{d.type}/{t}": why for d, t in kinds if (why := fused_adamw_problem(d, t)) is not None}
    if problems:
        where, why = next(iter(problems.items()))
        log.warning("train.fused_optimizer: no fused AdamW for %s (%s); using the plain AdamW", where, why)
        return torch.optim.AdamW(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr, fused=True)


def compile_vision(model: nn.Module) -> nn.Module:
    """``train.compile``: torch.compile the vision tower's forward in place (state-dict keys unchanged, so
    checkpoints and saved models are those of the eager model). Only the vision tower: its input is always
    the crop (one graph, no recompiles), and it holds nearly all FLOPs; the text tower sees a new shape with
    every batch's texts and tokenises strings (graph breaks). ``nn.Module.compile()`` captured no frame here
    (torch 2.13), hence the bound ``forward``."""
    vision = getattr(model, "vision", None)
    if not isinstance(vision, nn.Module):
        raise ValueError("train.compile: the model has no vision tower to compile")
    vision.forward = torch.compile(vision.forward)
    return model


def ema_update(peer: nn.Module, model: nn.Module, decay: float) -> None:
    """peer <- decay * peer + (1 - decay) * model (parameters); buffers copied."""
    with torch.no_grad():
        for peer_param, param in zip(peer.parameters(), model.parameters(), strict=False):
            peer_param.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
        for peer_buffer, buffer in zip(peer.buffers(), model.buffers(), strict=False):
            peer_buffer.copy_(buffer)


def text_token_count(model: nn.Module, batch: Mapping[str, Any], loss_kind: str) -> int:
    """Non-padding text tokens the step encodes (distinct anatomy texts, or the reports for clip)."""
    tokenizer = getattr(getattr(model, "text", None), "tokenizer", None)
    if loss_kind == "clip":
        texts = list(batch["report_text"])
    else:
        texts = sorted({t.strip() for row in batch["anatomy_text"] for t in row if t.strip()})
    if not texts:
        return 0
    if tokenizer is None:
        return sum(len(t.split()) for t in texts)
    max_length = getattr(model.text, "max_length", 512)
    encoded = tokenizer(texts, truncation=True, max_length=max_length)
    return int(sum(len(ids) for ids in encoded["input_ids"]))


def image_token_count(model: nn.Module, batch: Mapping[str, Any]) -> int:
    """Vision patch tokens of the batch (B x Z/pz x Y/py x X/px; 0 for a model without a patch size)."""
    patch = getattr(getattr(model, "vision", None), "patch_zyx", None)
    shape = batch["volume"].shape[2:]
    if patch is None:
        return 0
    return int(batch["volume"].shape[0] * math.prod(s // p for s, p in zip(shape, patch, strict=False)))
