"""DDP: losses on features gathered over 2 CPU processes (gloo) give the single-process gradients."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

WORLD = 2
BATCH = 6  # global batch; each rank holds BATCH // WORLD samples
ANATOMIES = 3
DIM_IN, DIM_OUT = 10, 8


class Towers(nn.Module):
    """Stand-in image/text towers: linear maps to L2-normalised (B, K, D) embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Linear(DIM_IN, DIM_OUT)
        self.text = nn.Linear(DIM_IN, DIM_OUT)
        self.log_logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, image_in: torch.Tensor, text_in: torch.Tensor):
        scale = self.log_logit_scale.exp()
        return F.normalize(self.image(image_in), dim=-1), F.normalize(self.text(text_in), dim=-1), scale


def _inputs():
    generator = torch.Generator().manual_seed(0)
    image_in = torch.randn(BATCH, ANATOMIES, DIM_IN, generator=generator)
    text_in = torch.randn(BATCH, ANATOMIES, DIM_IN, generator=generator)
    valid = torch.rand(BATCH, ANATOMIES, generator=generator) > 0.2
    abnormal = torch.rand(BATCH, ANATOMIES, generator=generator) > 0.5
    texts = [[f"finding {(sample * 7 + anatomy) % 4}" for anatomy in range(ANATOMIES)] for sample in range(BATCH)]
    peer = torch.randn(ANATOMIES, BATCH, BATCH, generator=generator)
    return image_in, text_in, valid, abnormal, texts, peer


def _loss(model: nn.Module, rows: slice, gather: bool) -> torch.Tensor:
    from training.models.losses import clip_loss, fvlm_loss

    image_in, text_in, valid, abnormal, texts, peer = _inputs()
    image, text, scale = model(image_in[rows], text_in[rows])
    fine, _ = fvlm_loss(
        image,
        text,
        valid[rows],
        abnormal[rows],
        texts[rows],
        scale,
        normal_positives=True,
        coteach_logits=peer,
        alpha=0.5,
        gather=gather,
    )
    return fine + clip_loss(image[:, 0], text[:, 0], scale, gather=gather)


def _worker(rank: int, init_file: str, out_dir: str, tokenizer_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        _toy_ranks(rank, out_dir)
        _fvlm_ranks(rank, out_dir, tokenizer_dir)
    finally:
        dist.destroy_process_group()


def _toy_ranks(rank: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.manual_seed(0)
    model = Towers()
    per_rank = BATCH // WORLD
    loss = _loss(model, slice(rank * per_rank, (rank + 1) * per_rank), gather=True)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    for grad in grads.values():
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        grad /= WORLD
    # the same through DistributedDataParallel (which averages gradients over ranks)
    torch.manual_seed(0)
    ddp = nn.parallel.DistributedDataParallel(Towers())
    rows = slice(rank * per_rank, (rank + 1) * per_rank)
    ddp_loss = _loss(ddp, rows, gather=True)
    ddp_loss.backward()
    ddp_grads = {name: p.grad.detach().clone() for name, p in ddp.module.named_parameters()}
    torch.save({"loss": loss.detach(), "mean_grads": grads, "ddp_grads": ddp_grads}, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> Path:
    """Spawn 2 gloo ranks once; each writes its gradients for both checks below."""
    import torch.multiprocessing as mp

    from training.models.text import build_tokenizer

    out = tmp_path_factory.mktemp("ddp")
    build_tokenizer(
        ["lungs clear", "heart normal nodule enlarged opacity", "normal study cardiomegaly"], 128, out / "tokenizer"
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_worker, args=(str(out / "init"), str(out), str(out / "tokenizer")), nprocs=WORLD, join=True)
    return out


def test_gathered_loss_gradients_match_single_process(ddp_results):
    tmp_path = ddp_results
    torch.manual_seed(0)
    reference = Towers()
    reference_loss = _loss(reference, slice(0, BATCH), gather=False)
    reference_loss.backward()
    for rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(result["loss"], reference_loss.detach())
        for name, param in reference.named_parameters():
            torch.testing.assert_close(result["mean_grads"][name], param.grad, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(result["ddp_grads"][name], param.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 3, 8), (4,)])
def test_gather_is_identity_without_process_group(shape):
    from training.models.distributed import gather_features, is_distributed

    assert not is_distributed()
    tensor = torch.randn(*shape)
    assert gather_features(tensor) is tensor


def _tiny_fvlm(tokenizer_dir: str):
    from core.config import ModelConfig
    from training.models.model import build_model

    cfg = ModelConfig.model_validate(
        {
            "vision": {"patch_zyx": [4, 8, 8], "embed_dim": 16, "depth": 2, "heads": 2, "pool_layers": [1]},
            "text": {"name_or_path": None, "hidden": 16, "layers": 1, "heads": 2, "max_length": 16},
            "embed_dim": 8,
        }
    )
    torch.manual_seed(0)
    # eval(): no dropout in the text tower, so ranks and the reference see the same function
    return build_model(cfg, ["lung", "heart"], (8, 16, 16), tokenizer_dir=tokenizer_dir).eval()


def _fvlm_batch():
    generator = torch.Generator().manual_seed(1)
    volume = torch.rand(4, 1, 8, 16, 16, generator=generator)
    mask = torch.randint(0, 3, (4, 8, 16, 16), generator=generator).to(torch.uint8)
    texts = [
        ["lungs clear", "heart normal"],
        ["nodule", "heart normal"],
        ["lungs clear", "enlarged heart"],
        ["opacity", ""],
    ]
    abnormal = torch.tensor([[False, False], [True, False], [False, True], [True, False]])
    reports = ["normal study", "lung nodule", "cardiomegaly", "opacity"]
    return volume, mask, texts, abnormal, reports


def _fvlm_step_loss(model, rows: slice, gather: bool) -> torch.Tensor:
    from training.models.losses import clip_loss, fvlm_loss

    volume, mask, texts, abnormal, reports = _fvlm_batch()
    out = model(volume[rows], mask[rows], texts[rows], reports[rows])
    fine, _ = fvlm_loss(
        out["anatomy"],
        out["text_anatomy"],
        out["anatomy_present"],
        abnormal[rows],
        texts[rows],
        out["logit_scale"],
        True,
        None,
        0.0,
        gather,
    )
    return fine + clip_loss(out["global_"], out["text_global"], out["logit_scale"], gather)


def _fvlm_ranks(rank: int, out_dir: str, tokenizer_dir: str) -> None:
    ddp = nn.parallel.DistributedDataParallel(_tiny_fvlm(tokenizer_dir), find_unused_parameters=True)
    _fvlm_step_loss(ddp, slice(rank * 2, rank * 2 + 2), gather=True).backward()
    grads = {name: p.grad.detach().clone() for name, p in ddp.module.named_parameters() if p.grad is not None}
    torch.save(grads, Path(out_dir) / f"fvlm{rank}.pt")


def test_fvlm_under_ddp_matches_single_process(ddp_results):
    tmp_path = ddp_results
    reference = _tiny_fvlm(str(tmp_path / "tokenizer"))
    _fvlm_step_loss(reference, slice(0, 4), gather=False).backward()
    for rank in range(WORLD):
        grads = torch.load(tmp_path / f"fvlm{rank}.pt", weights_only=True)
        for name, param in reference.named_parameters():
            if param.grad is None:
                continue
            torch.testing.assert_close(
                grads[name], param.grad, rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}"
            )
