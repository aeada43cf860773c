"""Conv image encoder: the ViT's token grid and outputs, so anatomy pooling and the losses work unchanged."""

from __future__ import annotations

import pytest
import torch

from core.config import ModelConfig
from training.models.conv3d import ConvEncoder3D, stage_strides
from training.models.losses import fvlm_loss
from training.models.model import build_model
from training.models.pooling import mask_to_patch_grid
from training.models.vit3d import ViT3D

CROP, PATCH = (16, 32, 32), (4, 8, 8)


def test_stage_strides_multiply_to_the_patch() -> None:
    strides = stage_strides((8, 16, 16))
    assert len(strides) == 4 and strides[-1] == (1, 2, 2)
    for axis, patch in enumerate((8, 16, 16)):
        product = 1
        for stride in strides:
            product *= stride[axis]
        assert product == patch
    with pytest.raises(ValueError, match="powers of two"):
        stage_strides((6, 16, 16))


def test_token_grid_matches_the_vit_and_the_mask_grid() -> None:
    torch.manual_seed(0)
    conv = ConvEncoder3D(CROP, PATCH, 32, pool_layers=[1, 2, 5])
    vit = ViT3D(CROP, PATCH, 32, depth=1, heads=2)
    volume = torch.rand(2, 1, *CROP)
    final, levels, grid = conv(volume)
    vit_final, _, vit_grid = vit(volume)
    assert grid == vit_grid == (4, 4, 4) and final.shape == vit_final.shape == (2, 64, 32)
    assert len(levels) == 2 and all(level.shape == final.shape for level in levels)  # stage 5 does not exist
    mask = torch.zeros(2, *CROP, dtype=torch.uint8)
    mask[:, :4, :8, :8] = 1  # anatomy 0 = the first token only
    membership = mask_to_patch_grid(mask, 2, PATCH)
    assert membership.shape == (2, 2, final.shape[1]) and membership[:, 0].sum(dim=1).tolist() == [1, 1]
    assert bool(membership[0, 0, 0])  # C-order (gz, gy, gx): token 0 = patch (0, 0, 0)


def test_fvlm_with_conv_encoder_trains_end_to_end(tmp_path) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate(
        {
            "vision": {
                "kind": "conv",
                "patch_zyx": list(PATCH),
                "embed_dim": 32,
                "depth": 1,
                "heads": 2,
                "pool_layers": [2],
                "conv_peak_channels": 4,
            },
            "text": {"name_or_path": None, "vocab_size": 128, "hidden": 16, "layers": 1, "heads": 2, "max_length": 16},
            "embed_dim": 16,
        }
    )
    model = build_model(cfg, ("lung", "heart"), CROP)
    assert isinstance(model.vision, ConvEncoder3D)
    volume = torch.rand(3, 1, *CROP)
    mask = torch.zeros(3, *CROP, dtype=torch.uint8)
    mask[:, :8] = 1
    mask[:, 8:, :16] = 2
    texts = [["clear lung", "normal heart"], ["a nodule in the lung", "normal heart"], ["clear lung", "enlarged heart"]]
    out = model(volume, mask, anatomy_text=texts)
    assert out["anatomy"].shape == (3, 2, 16) and bool(out["anatomy_present"].all())
    abnormal = torch.tensor([[False, False], [True, False], [False, True]])
    loss, _ = fvlm_loss(
        out["anatomy"], out["text_anatomy"], out["anatomy_present"], abnormal, texts, out["logit_scale"]
    )
    loss.backward()
    first = model.vision.stages[0][0][0].weight
    assert first.grad is not None and float(first.grad.abs().sum()) > 0
    peak = model.vision.peak[0].weight  # the peak branch is trained by the contrastive loss too
    assert peak.grad is not None and float(peak.grad.abs().sum()) > 0
    saved = model.save_pretrained(tmp_path / "m")
    again = type(model).from_pretrained(saved)
    assert isinstance(again.vision, ConvEncoder3D) and again.vision.peak_channels == 4
    model.eval(), again.eval()
    with torch.no_grad():
        assert torch.allclose(model.encode_image(volume, mask)["anatomy"], again.encode_image(volume, mask)["anatomy"])


def test_peak_channels_are_the_patch_max_of_a_per_voxel_map() -> None:
    torch.manual_seed(0)
    conv = ConvEncoder3D(CROP, PATCH, 32, pool_layers=[1, 2], peak_channels=4, peak_kernel=1).eval()
    assert conv.widths[-1] == 28  # the stages fill the other embed_dim - peak_channels channels
    volume = torch.zeros(1, 1, *CROP)
    with torch.no_grad():
        final, levels, grid = conv(volume)
        assert final.shape == (1, 64, 32) and all(level.shape == final.shape for level in levels)
        assert all(torch.equal(level[..., 28:], final[..., 28:]) for level in levels)  # fVLM's level mean keeps them
        background = final[0, :, 28:].clone()
        assert torch.allclose(background, background[0].expand_as(background))  # uniform input: the same everywhere
        spot = volume.clone()
        spot[0, 0, 5, 9, 30] = 1.0  # one bright voxel in patch (1, 1, 3) -> token 1*16 + 1*4 + 3 = 23
        bright, _, _ = conv(spot)
    changed = (bright[0, :, 28:] != background).any(dim=1).nonzero().flatten().tolist()
    assert changed in ([], [23])  # only the spot's token can change (1x1 kernel) ...
    per_voxel = conv.peak(torch.nn.functional.max_pool3d(spot, 2))[0, :, 2, 4, 15]  # map on the 2x max-pooled input
    assert torch.allclose(bright[0, 23, 28:], torch.maximum(per_voxel, background[23]))  # ... and it holds the max


def test_a_faint_single_voxel_is_learned_through_the_peak_channels_at_the_probe_lr() -> None:
    """The sparse-evidence case the peak branch exists for: 'is there one voxel brighter than the rest?'.

    The voxel is only ~0.1 above the brightest background (as metal is above bone on the demo window) and
    the lr is the probe's: the BatchNorm in the peak map is what makes this learnable in 150 steps
    (without it the same run stays at chance: the weights that must amplify 0.1 grow by ~lr a step).
    """
    torch.manual_seed(0)
    conv = ConvEncoder3D(CROP, PATCH, 16, peak_channels=4, peak_kernel=1)
    head = torch.nn.Linear(16, 1)
    optimizer = torch.optim.AdamW([*conv.parameters(), *head.parameters()], lr=2e-3)
    generator = torch.Generator().manual_seed(1)

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        volume = torch.rand(n, 1, *CROP, generator=generator) * 0.6
        target = (torch.arange(n) % 2).float()
        for i in range(0, n, 2):
            z, y, x = (int(torch.randint(0, s, (1,), generator=generator)) for s in CROP)
            volume[i + 1, 0, z, y, x] = 0.7
        return volume, target

    for _ in range(150):
        volume, target = batch(8)
        logits = head(conv(volume)[0].amax(dim=1)).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    conv.eval()
    volume, target = batch(32)
    with torch.no_grad():
        scores = head(conv(volume)[0].amax(dim=1)).squeeze(1)
    assert bool((scores[target == 1].min() > scores[target == 0].max()).item())


def test_peak_channels_must_leave_room_for_the_stages() -> None:
    with pytest.raises(ValueError, match="conv_peak_channels"):
        ConvEncoder3D(CROP, PATCH, 16, peak_channels=16)
    with pytest.raises(ValueError, match="conv_peak_kernel"):
        ConvEncoder3D(CROP, PATCH, 16, peak_channels=4, peak_kernel=2)
