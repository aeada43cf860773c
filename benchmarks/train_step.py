"""fVLM training-step benchmark: fast path vs a faithful fp32 eager configuration of the same model.

    .venv/bin/python benchmarks/train_step.py            # paper profile on CUDA, tiny profile on CPU
    .venv/bin/python benchmarks/train_step.py --tiny     # force the tiny (demo) profile

Both configurations run the same model (same weights), the same batch and the same optimiser step:

* fast:     bf16 autocast (CUDA only), SDPA attention (flash / memory-efficient kernels), anatomy pooling
            batched over samples x anatomies, loss batched over anatomies (training.models.losses.fvlm_loss);
* faithful: fp32, explicit softmax(QK^T)V attention, a per-patient Python loop for the pooling and a
            per-anatomy / per-patient loop for the loss (training.models.losses.fvlm_loss_reference).

Reported: samples/s, FLOPs per step (torch.utils.flop_counter.FlopCounterMode, forward + backward),
MFU against the H100 SXM dense bf16 peak (989 TFLOP/s; --peak-tflops to change, n/a on CPU), peak
memory, and the ratio fast / faithful. The paper profile's text tower (CXR-BERT) is replaced by a
randomly initialised BERT-base of the same shape (12 x 768, vocab 30522) so nothing is downloaded;
``--text-path`` points at a local CXR-BERT copy instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from core.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H100_BF16_DENSE_TFLOPS = 989.0
ANATOMIES = ("lung", "heart", "esophagus", "aorta")
SENTENCES = (
    ("The lungs are clear.", "A 6 mm nodule in the right upper lobe.", "Ground-glass opacity in the left lower lobe."),
    ("Heart size is normal.", "Cardiomegaly.", "Pericardial effusion is present."),
    ("The esophagus is unremarkable.", "Small hiatal hernia.", "Esophageal wall thickening."),
    (
        "The aorta is of normal calibre.",
        "Atherosclerotic calcification of the aortic wall.",
        "Ectatic ascending aorta.",
    ),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="demo profile sizes (automatic without CUDA)")
    parser.add_argument("--paper", action="store_true", help="paper profile even without CUDA (slow on CPU)")
    parser.add_argument("--batch", type=int, default=None, help="samples per step (default: train.batch_size)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help=f"accelerator peak (default {H100_BF16_DENSE_TFLOPS} on CUDA)"
    )
    parser.add_argument("--text-path", default=None, help="local pretrained text encoder (e.g. CXR-BERT copy)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--skip-faithful", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return parser.parse_args(argv)


def make_config(tiny: bool, text_path: str | None, grad_checkpointing: bool) -> tuple[Any, Any]:
    from core.config import load_config

    config = load_config(REPO / "params.yaml", profile="demo" if tiny else "paper")
    text = config.model.text
    if tiny:
        text_update = {}
    elif text_path:
        text_update = {"name_or_path": text_path}
    else:  # BERT-base shape, random weights: the FLOPs and memory of CXR-BERT without a download
        text_update = {
            "name_or_path": None,
            "vocab_size": 30522,
            "hidden": 768,
            "layers": 12,
            "heads": 12,
            "max_length": text.max_length,
        }
    vision = config.model.vision.model_copy(update={"grad_checkpointing": grad_checkpointing})
    model_cfg = config.model.model_copy(update={"text": text.model_copy(update=text_update), "vision": vision})
    return config, model_cfg


def make_batch(batch: int, crop_zyx: tuple[int, int, int], seed: int = 0) -> dict[str, Any]:
    """Random volume; each anatomy a box at a random place; texts drawn from a small pool."""
    generator = torch.Generator().manual_seed(seed)
    z, y, x = crop_zyx
    volume = torch.rand(batch, 1, z, y, x, generator=generator)
    mask = torch.zeros(batch, z, y, x, dtype=torch.uint8)
    anatomy_text, abnormal = [], torch.zeros(batch, len(ANATOMIES), dtype=torch.bool)
    for sample in range(batch):
        row = []
        for k in range(len(ANATOMIES)):
            size = [max(2, int(extent * 0.4)) for extent in (z, y, x)]
            start = [
                int(torch.randint(0, extent - s + 1, (1,), generator=generator))
                for extent, s in zip((z, y, x), size, strict=False)
            ]
            mask[
                sample, start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]
            ] = k + 1
            choice = int(torch.randint(0, 3, (1,), generator=generator))
            abnormal[sample, k] = choice > 0
            row.append(SENTENCES[k][choice])
        anatomy_text.append(row)
    reports = [" ".join(row) for row in anatomy_text]
    return {
        "volume": volume,
        "mask": mask,
        "anatomy_text": anatomy_text,
        "anatomy_abnormal": abnormal,
        "report_text": reports,
    }


def build(model_cfg: ModelConfig, crop_zyx: tuple[int, int, int], tokenizer_dir: str) -> torch.nn.Module:
    from training.models.model import build_model

    torch.manual_seed(0)
    return build_model(
        model_cfg, ANATOMIES, crop_zyx, tokenizer_dir=tokenizer_dir if model_cfg.text.name_or_path is None else None
    )


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], fast: bool, device: torch.device
) -> float:
    from training.models.losses import fvlm_loss, fvlm_loss_reference

    volume = batch["volume"].to(device, non_blocking=True)
    mask = batch["mask"].to(device, non_blocking=True)
    use_bf16 = fast and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
        out = model(volume, mask, batch["anatomy_text"])
        valid = out["anatomy_present"]
        abnormal = batch["anatomy_abnormal"].to(device)
        if fast:
            loss, _ = fvlm_loss(
                out["anatomy"],
                out["text_anatomy"],
                valid,
                abnormal,
                batch["anatomy_text"],
                out["logit_scale"],
                True,
                None,
                0.0,
                False,
            )
        else:
            loss = fvlm_loss_reference(
                out["anatomy"], out["text_anatomy"], valid, abnormal, batch["anatomy_text"], out["logit_scale"], True
            )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def configure(model: torch.nn.Module, fast: bool) -> None:
    model.set_attention("sdpa" if fast else "math")
    model.pool_loop = not fast


def count_flops(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> float:
    """FLOPs of one forward + backward (matmuls, convolutions, attention) of the model.

    Counted with the explicit attention matmuls: FlopCounterMode has no formula for every fused SDPA
    kernel (on CPU the attention FLOPs of the fused path are missed); the arithmetic is the same.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from training.models.losses import fvlm_loss

    configure(model, fast=True)
    model.set_attention("math")
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(batch["volume"].to(device), batch["mask"].to(device), batch["anatomy_text"])
        loss, _ = fvlm_loss(
            out["anatomy"],
            out["text_anatomy"],
            out["anatomy_present"],
            batch["anatomy_abnormal"].to(device),
            batch["anatomy_text"],
            out["logit_scale"],
            True,
            None,
            0.0,
            False,
        )
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(
    model: torch.nn.Module, batch: dict[str, Any], fast: bool, device: torch.device, steps: int, warmup: int
) -> dict[str, float]:
    configure(model, fast)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        train_step(model, optimizer, batch, fast, device)
    durations = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        loss = train_step(model, optimizer, batch, fast, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        durations.append(time.perf_counter() - start)
    step_s = statistics.median(durations)
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "step_s": step_s,
        "samples_per_s": batch["volume"].shape[0] / step_s,
        "peak_mem_gib": peak_gib,
        "loss": loss,
    }


def main(argv: list[str] | None = None) -> int:
    from core.env import apply_offline_env

    apply_offline_env()
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    tiny = args.tiny or (not cuda and not args.paper)
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # the faithful side is true fp32
        torch.backends.cudnn.allow_tf32 = False
    config, model_cfg = make_config(tiny, args.text_path, args.grad_checkpointing)
    crop = tuple(config.grid.crop_zyx)
    batch_size = args.batch or config.train.batch_size
    steps = args.steps or (3 if tiny else 10)
    batch = make_batch(batch_size, crop)

    from training.models.text import build_tokenizer

    with tempfile.TemporaryDirectory() as scratch:
        corpus = [sentence for group in SENTENCES for sentence in group]
        build_tokenizer(corpus, model_cfg.text.vocab_size, scratch)
        model = build(model_cfg, crop, scratch).to(device)
        model.train()
        # no dropout: both configurations must compute the same function
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        initial = copy.deepcopy(model.state_dict())
        flops = count_flops(model, batch, device)
        peak = (args.peak_tflops or (H100_BF16_DENSE_TFLOPS if cuda else float("nan"))) * 1e12
        results: dict[str, dict[str, float]] = {}
        for name, fast in (("fast", True), ("faithful", False)):
            if name == "faithful" and args.skip_faithful:
                continue
            model.load_state_dict(initial)
            try:
                figures = measure(model, batch, fast, device, steps, args.warmup)
            except torch.OutOfMemoryError:
                figures = {
                    "step_s": float("nan"),
                    "samples_per_s": float("nan"),
                    "peak_mem_gib": float("nan"),
                    "loss": float("nan"),
                    "oom": 1.0,
                }
                torch.cuda.empty_cache()
            figures["tflops_per_s"] = flops / figures["step_s"] / 1e12
            figures["mfu"] = flops / figures["step_s"] / peak if math.isfinite(peak) else float("nan")
            results[name] = figures

    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    params = sum(p.numel() for p in model.parameters())
    print(
        f"device: {device_name}  profile: {'tiny (demo)' if tiny else 'paper'}  crop_zyx={crop}  "
        f"patch_zyx={tuple(model_cfg.vision.patch_zyx)}  batch={batch_size}  params={params / 1e6:.1f}M  "
        f"flops/step={flops / 1e9:.2f} GFLOP  torch={torch.__version__}"
    )
    print(f"{'config':<10}{'step s':>10}{'samples/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'peak GiB':>10}{'loss':>9}")
    for name, figures in results.items():
        print(
            f"{name:<10}{figures['step_s']:>10.4f}{figures['samples_per_s']:>12.2f}{figures['tflops_per_s']:>10.3f}"
            f"{figures['mfu']:>8.3f}{figures['peak_mem_gib']:>10.2f}{figures['loss']:>9.4f}"
        )
    if "faithful" in results:
        ratio = results["fast"]["samples_per_s"] / results["faithful"]["samples_per_s"]
        print(f"ratio fast/faithful samples/s: {ratio:.2f}x")
    if args.json:
        payload = {
            "device": device_name,
            "tiny": tiny,
            "batch": batch_size,
            "flops_per_step": flops,
            "results": results,
        }
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
