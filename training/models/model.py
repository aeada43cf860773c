"""fVLM: a 3D ViT image tower with anatomy-query pooling, a BERT text tower and a learnable temperature.

API (used by the training loop, evaluation and prediction):

* ``build_model(model_cfg, anatomy_names, crop_zyx, tokenizer_dir=None) -> FVLM``
* ``FVLM.encode_image(volume (B,1,Z,Y,X), mask (B,Z,Y,X))`` -> ``{"anatomy": (B,K,D), "global_": (B,D),
  "anatomy_present": (B,K) bool}``; embeddings L2-normalised, absent anatomies all-zero;
* ``FVLM.encode_text(texts) -> (N, D)`` L2-normalised (tokenised internally, on the model's device);
* ``FVLM.forward(volume, mask, anatomy_text=None, report_text=None)`` -> the image dict plus
  ``text_anatomy`` (B,K,D; zeros for empty texts) and ``text_global`` (B,D): call the model itself (not
  ``.module.encode_*``) under DistributedDataParallel so gradient hooks fire;
* ``FVLM.logit_scale`` = 1 / temperature, clamped so temperature stays in [0.001, 0.5];
* ``FVLM.save_pretrained(dir)`` / ``FVLM.from_pretrained(dir)``.

Image tokens used for anatomy pooling = mean of the LayerNorm'd hidden states after the blocks in
``vision.pool_layers`` and of the final LayerNorm output (multi-level features averaged, so the width
stays ``vision.embed_dim``). The global (CLIP baseline) image embedding = mean over the final tokens ->
linear projection. Axis order is (z, y, x) throughout.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from training.models.conv3d import ConvEncoder3D
from training.models.pooling import AnatomyPooling, mask_to_patch_grid
from training.models.text import TextTower
from training.models.vit3d import AttentionKind, ViT3D

if TYPE_CHECKING:
    from core.config import ModelConfig

LOGGER = logging.getLogger(__name__)

CONFIG_FILE = "fvlm_config.json"
WEIGHTS_FILE = "model.pt"
TOKENIZER_DIR = "tokenizer"
TEXT_ENCODER_DIR = "text_encoder"
FORMAT_VERSION = 1
MIN_TEMPERATURE = 0.001
MAX_TEMPERATURE = 0.5


def vision_encoder(vision: Any, crop_zyx: Sequence[int], attention: AttentionKind = "sdpa") -> nn.Module:
    """The image encoder of ``model.vision``: the paper's 3D ViT (kind vit) or the small 3D CNN (kind conv)."""
    if getattr(vision, "kind", "vit") == "conv":  # small 3D CNN, same token grid (training/models/conv3d.py)
        return ConvEncoder3D(
            crop_zyx,
            vision.patch_zyx,
            vision.embed_dim,
            getattr(vision, "conv_channels", None),
            vision.pool_layers,
            peak_channels=int(getattr(vision, "conv_peak_channels", 0) or 0),
            peak_kernel=int(getattr(vision, "conv_peak_kernel", 3) or 3),
        )
    return ViT3D(
        crop_zyx=crop_zyx,
        patch_zyx=vision.patch_zyx,
        embed_dim=vision.embed_dim,
        depth=vision.depth,
        heads=vision.heads,
        mlp_ratio=getattr(vision, "mlp_ratio", 4.0),
        pool_layers=vision.pool_layers,
        grad_checkpointing=getattr(vision, "grad_checkpointing", False),
        attention=attention,
    )


class FVLM(nn.Module):
    def __init__(
        self,
        model_cfg: ModelConfig,
        anatomy_names: Sequence[str],
        crop_zyx: Sequence[int],
        text_tower: TextTower,
        attention: AttentionKind = "sdpa",
    ) -> None:
        super().__init__()
        vision = model_cfg.vision
        self.anatomy_names = tuple(anatomy_names)
        self.crop_zyx = tuple(int(c) for c in crop_zyx)
        self.model_cfg_dict = _config_to_dict(model_cfg)
        self.text_pretrained = model_cfg.text.name_or_path is not None
        self.vision: ViT3D | ConvEncoder3D
        self.vision = vision_encoder(vision, self.crop_zyx, attention)  # type: ignore[assignment]
        self.pooling = AnatomyPooling(len(self.anatomy_names), vision.embed_dim, model_cfg.embed_dim, vision.heads)
        self.global_proj = nn.Linear(vision.embed_dim, model_cfg.embed_dim)
        self.text = text_tower
        initial = math.log(1.0 / float(model_cfg.temperature_init))
        self.log_logit_scale = nn.Parameter(torch.tensor(initial, dtype=torch.float32))
        self.pool_loop = False  # True: naive per-sample pooling loop (benchmark's faithful reference)
        self.heads: dict[str, Any] = {}  # training heads beyond the published recipe (add_heads)

    def add_heads(self, label_anatomy: Sequence[int] | None = None, sigmoid_bias: bool = False) -> None:
        """Training heads of the recipes beyond fVLM (``training.models.auxiliary``), saved with the model:
        ``label_anatomy`` (anatomy index per label, -1 = global embedding): a zero-initialised logistic head
        per label; ``sigmoid_bias``: SigLIP's learnable logit bias (init -10, as SigLIP). Created only when
        asked, from constants (no random draw), so the default model and its initialisation are unchanged."""
        if label_anatomy is not None:
            anatomy = [int(k) for k in label_anatomy]
            self.label_weight = nn.Parameter(torch.zeros(len(anatomy), self.global_proj.out_features))
            self.label_bias = nn.Parameter(torch.zeros(len(anatomy)))
            self.heads["label_anatomy"] = anatomy
        if sigmoid_bias:
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
            self.heads["sigmoid_bias"] = True
        self.to(self.device)

    # ----------------------------------------------------------------- towers
    @property
    def logit_scale(self) -> torch.Tensor:
        low, high = math.log(1.0 / MAX_TEMPERATURE), math.log(1.0 / MIN_TEMPERATURE)
        return self.log_logit_scale.clamp(low, high).exp()

    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    def image_tokens(self, volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int, int]]:
        """(pooling tokens = mean of multi-level features, final tokens, patch grid)."""
        final, levels, grid = self.vision(volume)
        pooled_tokens = torch.stack([*levels, final], dim=0).mean(dim=0) if levels else final
        return pooled_tokens, final, grid

    def encode_image(self, volume: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        if volume.dim() != 5 or volume.shape[1] != 1:
            raise ValueError(f"volume must be (B, 1, Z, Y, X), got {tuple(volume.shape)}")
        if mask.dim() != 4 or tuple(mask.shape) != (volume.shape[0], *volume.shape[2:]):
            raise ValueError(
                f"mask must be (B, Z, Y, X) matching volume {tuple(volume.shape)}, got {tuple(mask.shape)}"
            )
        tokens, final, _ = self.image_tokens(volume)
        membership = mask_to_patch_grid(mask.to(tokens.device), len(self.anatomy_names), self.vision.patch_zyx)
        pool = self.pooling.forward_loop if self.pool_loop else self.pooling
        anatomy, present = pool(tokens, membership)
        global_embedding = F.normalize(self.global_proj(final.mean(dim=1)).float(), dim=-1)
        return {"anatomy": anatomy, "global_": global_embedding, "anatomy_present": present}

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        if len(texts) == 0:
            return torch.zeros((0, self.global_proj.out_features), device=self.device)
        return self.text(list(texts))

    def encode_anatomy_text(self, anatomy_text: Sequence[Sequence[str]]) -> torch.Tensor:
        """B lists of K texts -> (B, K, D); each distinct non-empty text is encoded once, "" -> zeros."""
        batch, n_anatomies = len(anatomy_text), len(self.anatomy_names)
        if any(len(row) != n_anatomies for row in anatomy_text):
            raise ValueError(f"anatomy_text must be {batch} lists of {n_anatomies} strings")
        flat = [text.strip() for row in anatomy_text for text in row]
        unique = sorted({text for text in flat if text})
        out_dim = self.global_proj.out_features
        if not unique:
            return torch.zeros((batch, n_anatomies, out_dim), device=self.device)
        encoded = self.encode_text(unique)
        index = {text: position for position, text in enumerate(unique)}
        padded = torch.cat([encoded, encoded.new_zeros((1, out_dim))], dim=0)
        positions = torch.tensor([index.get(text, len(unique)) for text in flat], device=encoded.device)
        return padded[positions].view(batch, n_anatomies, out_dim)

    def forward(
        self,
        volume: torch.Tensor,
        mask: torch.Tensor,
        anatomy_text: Sequence[Sequence[str]] | None = None,
        report_text: Sequence[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        out = self.encode_image(volume, mask)
        if anatomy_text is not None:
            out["text_anatomy"] = self.encode_anatomy_text(anatomy_text)
        if report_text is not None:
            out["text_global"] = self.encode_text(report_text)
        out["logit_scale"] = self.logit_scale
        return out

    def set_attention(self, attention: AttentionKind) -> None:
        self.vision.set_attention(attention)

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write config JSON, weights (model.pt) and tokenizer files (and the HF text encoder if pretrained)."""
        from core.io import atomic_path

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.text.tokenizer.save_pretrained(str(out / TOKENIZER_DIR))
        state = self.state_dict()
        if self.text_pretrained:
            self.text.encoder.save_pretrained(str(out / TEXT_ENCODER_DIR))  # type: ignore[operator]
            state = {key: value for key, value in state.items() if not key.startswith("text.encoder.")}
        with atomic_path(out / WEIGHTS_FILE) as tmp:
            torch.save(state, tmp)
        config = {
            "format_version": FORMAT_VERSION,
            "model": self.model_cfg_dict,
            "anatomy_names": list(self.anatomy_names),
            "crop_zyx": list(self.crop_zyx),
            "text_vocab_size": int(_vocab_size(self.text.tokenizer)),
        }
        if self.heads:  # absent for the published recipe: its saved config is unchanged
            config["heads"] = self.heads
        with atomic_path(out / CONFIG_FILE) as tmp:
            Path(tmp).write_text(json.dumps(config, indent=2))
        return out

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> FVLM:
        folder = Path(directory)
        config_file = folder / CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: no fVLM config (not a save_pretrained directory)")
        saved = json.loads(config_file.read_text())
        model_cfg = _config_from_dict(saved["model"])
        text_source = folder / TEXT_ENCODER_DIR if model_cfg.text.name_or_path is not None else None
        model = build_model(
            model_cfg,
            saved["anatomy_names"],
            saved["crop_zyx"],
            tokenizer_dir=str(folder / TOKENIZER_DIR),
            text_encoder_path=text_source,
        )
        if saved.get("heads"):
            model.add_heads(**saved["heads"])
        state = torch.load(folder / WEIGHTS_FILE, map_location=map_location, weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if not (text_source is not None and key.startswith("text.encoder."))]
        if missing or unexpected:
            raise ValueError(
                f"{folder / WEIGHTS_FILE}: state dict does not match the "
                f"config (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        return model.to(map_location)


def build_model(
    model_cfg: ModelConfig,
    anatomy_names: Sequence[str],
    crop_zyx: Sequence[int],
    tokenizer_dir: str | None = None,
    text_encoder_path: str | os.PathLike[str] | None = None,
    attention: AttentionKind = "sdpa",
) -> FVLM:
    """Build an fVLM from ``core.config.ModelConfig`` (or any object with the same attributes).

    Text tower: ``model_cfg.text.name_or_path`` set -> pretrained encoder from that hub id / local path
    (``text_encoder_path`` overrides it, e.g. a saved model) and its tokenizer (or ``tokenizer_dir``);
    unset -> scratch BERT whose vocabulary comes from the WordPiece tokenizer in ``tokenizer_dir`` (built
    by ``training.models.text.build_tokenizer`` from the training reports). Without ``tokenizer_dir`` a
    character-level fallback tokenizer is built (works, but train one on your reports).
    """
    from training.models import text as text_module

    text_cfg = model_cfg.text
    if text_cfg.name_or_path is not None:
        encoder_source = text_encoder_path or text_cfg.name_or_path
        tokenizer = text_module.load_tokenizer(tokenizer_dir or text_cfg.name_or_path)
        encoder = text_module.load_pretrained_encoder(encoder_source)
    else:
        if tokenizer_dir is not None:
            tokenizer = text_module.load_tokenizer(tokenizer_dir)
        else:
            LOGGER.warning("no tokenizer_dir given: using a character-level fallback WordPiece tokenizer")
            with tempfile.TemporaryDirectory() as scratch:
                tokenizer = text_module.build_tokenizer([], text_cfg.vocab_size, scratch)
        encoder = text_module.scratch_bert(
            _vocab_size(tokenizer),
            text_cfg.hidden,
            text_cfg.layers,
            text_cfg.heads,
            text_cfg.max_length,
            pad_token_id=int(tokenizer.pad_token_id or 0),
        )
    pooling = getattr(text_cfg, "pooling", "auto")
    if pooling == "auto":  # a random-init BERT's [CLS] state barely depends on the text: mean-pool instead
        pooling = "cls" if text_cfg.name_or_path is not None else "mean"
    tower = text_module.TextTower(encoder, tokenizer, model_cfg.embed_dim, text_cfg.max_length, pooling=pooling)
    return FVLM(model_cfg, anatomy_names, crop_zyx, tower, attention=attention)


def _vocab_size(tokenizer: Any) -> int:
    return len(tokenizer)


def _config_to_dict(model_cfg: ModelConfig) -> dict[str, Any]:
    if hasattr(model_cfg, "model_dump"):
        return model_cfg.model_dump(mode="json")
    return json.loads(json.dumps(model_cfg, default=lambda value: vars(value)))


def _config_from_dict(raw: dict[str, Any]) -> Any:
    try:
        from core.config import ModelConfig
    except ImportError:  # slim environment without pydantic: attribute access is all build_model needs
        return json.loads(json.dumps(raw), object_hook=lambda fields: SimpleNamespace(**fields))
    return ModelConfig.model_validate(raw)
