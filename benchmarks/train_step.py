"""fVLM training-step benchmark: fast path vs a faithful fp32 eager configuration of the same model.

    .venv/bin/python benchmarks/train_step.py            # paper profile on CUDA, tiny profile on CPU
    .venv/bin/python benchmarks/train_step.py --tiny     # force the tiny (demo) profile
    .venv/bin/python benchmarks/train_step.py --tiny --compile --fused   # + the two fast-path options
    .venv/bin/python benchmarks/train_step.py --paper --forward-only --batch-size 1   # CPU smoke of the paper scale

Profiles come from the repository's scale files, never from a runtime merge: ``--tiny`` is params.yaml's
model when it holds the demo scale (else params.demo.yaml applied to a scratch copy, as ``fvlm config use
demo`` would), ``--paper`` is params.paper.yaml applied to a scratch copy of params.yaml (params.yaml
itself is not touched). ``--encoder conv|vit`` swaps the tiny profile's vision tower kind (default: the
one params.yaml names; the demo's is ``conv``).

Every configuration runs its own copy of the same model (same initial weights), the same batch and the same
AdamW step; the timed steps are interleaved (round robin, the order rotated each round) so that a shared,
loaded machine slows every configuration alike and the ratios hold even when the absolute times do not:

* fast:     bf16 autocast (CUDA only), SDPA attention (flash / memory-efficient kernels), anatomy pooling
            batched over samples x anatomies, loss batched over anatomies (training.models.losses.fvlm_loss);
* fast+compile (``--compile``): fast with the vision tower's forward torch.compile'd (``train.compile``;
            training.trainer.step.compile_vision); its first warm-up step, reported apart, pays the compilation;
* fast+fused (``--fused``): fast with ``AdamW(fused=True)`` (``train.fused_optimizer``);
* faithful: fp32, explicit softmax(QK^T)V attention, a per-patient Python loop for the pooling and a
            per-anatomy / per-patient loop for the loss (training.models.losses.fvlm_loss_reference).

Reported: samples/s (median step), the first step (compilation included), FLOPs per step
(torch.utils.flop_counter.FlopCounterMode, forward + backward), MFU against the H100 SXM dense bf16 peak
(989 TFLOP/s; --peak-tflops to change, n/a on CPU), peak memory (CUDA: the configuration's own tensors
plus its step's transient peak; the other configurations' resident weights are subtracted), and the ratios.
The paper profile's text tower (CXR-BERT) is replaced by a randomly initialised BERT-base of the same
shape (12 x 768, vocab 30522) so nothing is downloaded; ``--text-path`` points at a local CXR-BERT copy.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

if TYPE_CHECKING:
    from core.config import FvlmConfig, ModelConfig

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
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--tiny", action="store_true", help="demo profile sizes (automatic without CUDA)")
    scale.add_argument("--paper", action="store_true", help="paper profile (params.paper.yaml) even without CUDA")
    parser.add_argument(
        "--encoder", choices=("conv", "vit"), default=None, help="tiny profile's vision tower (default: params.yaml's)"
    )
    parser.add_argument(
        "--batch",
        "--batch-size",
        dest="batch",
        type=int,
        default=None,
        help="samples per step (default: train.batch_size)",
    )
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per configuration (>= 1 with --compile)")
    parser.add_argument("--compile", action="store_true", help="also measure fast + torch.compile'd vision tower")
    parser.add_argument("--fused", action="store_true", help="also measure fast + fused AdamW")
    parser.add_argument(
        "--forward-only", action="store_true", help="build the model and run one fast forward + loss, then stop"
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count (one extra forward + backward)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help=f"accelerator peak (default {H100_BF16_DENSE_TFLOPS} on CUDA)"
    )
    parser.add_argument("--text-path", default=None, help="local pretrained text encoder (e.g. CXR-BERT copy)")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--skip-faithful", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.encoder and args.paper:
        parser.error("--encoder applies to the tiny profile (the paper's vision tower is the ViT-B)")
    return args


def profile_config(name: str, params_path: Path | None = None) -> FvlmConfig:
    """The typed config of scale ``name``: params.yaml when it holds that scale, else params.<name>.yaml
    applied to a scratch copy of it (what `fvlm config use <name>` would write; params.yaml is untouched)."""
    import yaml

    from core.config import load_config, params_file_for, use_params_file

    params = params_path or REPO / "params.yaml"
    if (yaml.safe_load(params.read_text()) or {}).get("profile", "demo") == name:
        return load_config(params, profile=name)
    with tempfile.TemporaryDirectory() as scratch:
        copy_path = Path(scratch) / "params.yaml"
        shutil.copyfile(params, copy_path)
        use_params_file(copy_path, params_file_for(name, params), name=name)
        return load_config(copy_path, profile=name)


def make_config(
    tiny: bool, text_path: str | None, grad_checkpointing: bool, encoder: str | None = None
) -> tuple[Any, Any]:
    config = profile_config("demo" if tiny else "paper")
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
    vision_update: dict[str, Any] = {"grad_checkpointing": grad_checkpointing}
    if encoder and encoder != config.model.vision.kind:
        # same widths, depth and token grid; the conv-only per-voxel peak channels off for the ViT
        vision_update.update({"kind": encoder, "conv_peak_channels": 0 if encoder == "vit" else 8})
    vision = config.model.vision.model_copy(update=vision_update)
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


def fast_loss(
    model: torch.nn.Module, batch: dict[str, Any], device: torch.device
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The fast configuration's forward + batched fVLM loss (normal positives, no co-teaching targets);
    returns (loss, the model's outputs)."""
    from training.models.losses import fvlm_loss

    out = model(
        batch["volume"].to(device, non_blocking=True),
        batch["mask"].to(device, non_blocking=True),
        batch["anatomy_text"],
    )
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
    return loss, out


def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, Any], fast: bool, device: torch.device
) -> float:
    from training.models.losses import fvlm_loss_reference

    use_bf16 = fast and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
        if fast:
            loss, _ = fast_loss(model, batch, device)
        else:
            volume = batch["volume"].to(device, non_blocking=True)
            mask = batch["mask"].to(device, non_blocking=True)
            out = model(volume, mask, batch["anatomy_text"])
            loss = fvlm_loss_reference(
                out["anatomy"],
                out["text_anatomy"],
                out["anatomy_present"],
                batch["anatomy_abnormal"].to(device),
                batch["anatomy_text"],
                out["logit_scale"],
                True,
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

    configure(model, fast=True)
    model.set_attention("math")
    counter = FlopCounterMode(display=False)
    with counter:
        fast_loss(model, batch, device)[0].backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


class Variant(NamedTuple):
    """One measured configuration of the same model."""

    name: str
    fast: bool
    compile: bool = False
    fused: bool = False


def variants(compile_: bool, fused: bool, faithful: bool) -> list[Variant]:
    chosen = [Variant("fast", True)]
    if compile_:
        chosen.append(Variant("fast+compile", True, compile=True))
    if fused:
        chosen.append(Variant("fast+fused", True, fused=True))
    if faithful:
        chosen.append(Variant("faithful", False))
    return chosen


class Runner:
    """A configuration's own model copy, optimiser and timings (a plain class, no dataclass: tests load
    this script with importlib, outside sys.modules)."""

    def __init__(self, variant: Variant, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.variant, self.model, self.optimizer = variant, model, optimizer
        self.durations: list[float] = []
        self.cpu_seconds: list[float] = []  # process CPU time per timed step (all threads)
        self.last_cpu_s = float("nan")
        self.first_step_s = float("nan")
        self.loss = float("nan")
        self.peak_bytes = 0
        self.oom = False
        self.error: str | None = None  # a compile failure: reported, and the other configurations still run


def make_runner(base: torch.nn.Module, variant: Variant) -> Runner:
    from training.trainer.step import compile_vision, make_adamw

    model = copy.deepcopy(base)  # same initial weights for every configuration
    configure(model, variant.fast)
    optimizer = make_adamw(model.parameters(), 1e-5, fused=variant.fused)
    if variant.compile:
        compile_vision(model)
    return Runner(variant, model, optimizer)


def _own_bytes(runner: Runner) -> int:
    """Resident bytes of this configuration: weights, gradients, optimiser state."""
    total = 0
    for parameter in runner.model.parameters():
        total += parameter.numel() * parameter.element_size()
        if parameter.grad is not None:
            total += parameter.grad.numel() * parameter.grad.element_size()
    for state in runner.optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
    return total


def timed_step(runner: Runner, batch: dict[str, Any], device: torch.device) -> float:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        others = torch.cuda.memory_allocated(device) - _own_bytes(runner)
        torch.cuda.reset_peak_memory_stats(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    runner.loss = train_step(runner.model, runner.optimizer, batch, runner.variant.fast, device)
    if cuda:
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    runner.last_cpu_s = time.process_time() - cpu_start
    if cuda:
        runner.peak_bytes = max(runner.peak_bytes, torch.cuda.max_memory_allocated(device) - others)
    return elapsed


def measure_interleaved(
    runners: list[Runner], batch: dict[str, Any], device: torch.device, steps: int, warmup: int
) -> None:
    """Warm-up per configuration (the first step kept apart: compilation), then ``steps`` timed rounds,
    one step of each configuration per round, the order rotated each round."""

    def guarded(runner: Runner) -> float | None:
        if runner.oom or runner.error:
            return None
        try:
            return timed_step(runner, batch, device)
        except torch.OutOfMemoryError:
            runner.oom = True
        except Exception as error:  # noqa: BLE001 -- only the compiled configuration's failure is tolerated
            if not runner.variant.compile:
                raise
            runner.error = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:500]
            print(f"{runner.variant.name}: {runner.error}", file=sys.stderr)
        runner.model.to("cpu")  # leave the memory to the others
        runner.optimizer.state.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None

    for runner in runners:
        for index in range(warmup):
            seconds = guarded(runner)
            if index == 0 and seconds is not None:
                runner.first_step_s = seconds
    for round_index in range(steps):
        shift = round_index % len(runners)
        for runner in runners[shift:] + runners[:shift]:
            seconds = guarded(runner)
            if seconds is not None:
                runner.durations.append(seconds)
                runner.cpu_seconds.append(runner.last_cpu_s)
            if warmup == 0 and len(runner.durations) == 1:
                runner.first_step_s = runner.durations[0]


def figures_of(runner: Runner, batch_size: int, flops: float, peak: float) -> dict[str, Any]:
    ok = runner.durations and not (runner.oom or runner.error)
    step_s = statistics.median(runner.durations) if ok else float("nan")
    cpu_s = statistics.median(runner.cpu_seconds) if ok else float("nan")
    figures: dict[str, Any] = {
        "step_s": step_s,
        "samples_per_s": batch_size / step_s,
        "first_step_s": runner.first_step_s,
        "steps": len(runner.durations),
        "step_s_all": runner.durations,
        "min_step_s": min(runner.durations) if ok else float("nan"),
        # CPU seconds of the process per step: on a shared CPU, less disturbed by the other jobs than wall time
        "cpu_s": cpu_s,
        "cpu_s_all": runner.cpu_seconds,
        "peak_mem_gib": runner.peak_bytes / 2**30 if runner.peak_bytes else float("nan"),
        "loss": runner.loss,
        "tflops_per_s": flops / step_s / 1e12,
        "mfu": flops / step_s / peak if math.isfinite(peak) else float("nan"),
    }
    if runner.oom:
        figures["oom"] = 1.0
    if runner.error:
        figures["error"] = runner.error
    return figures


def forward_only(model: torch.nn.Module, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """One fast-configuration forward + loss without gradients: proves the profile builds and runs."""
    configure(model, fast=True)
    start = time.perf_counter()
    with torch.no_grad():
        loss, out = fast_loss(model, batch, device)
    return {
        "forward_s": time.perf_counter() - start,
        "loss": float(loss),
        "anatomy_embedding_shape": list(out["anatomy"].shape),
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
    config, model_cfg = make_config(tiny, args.text_path, args.grad_checkpointing, args.encoder)
    crop = tuple(config.grid.crop_zyx)
    batch_size = args.batch or config.train.batch_size
    steps = args.steps or (3 if tiny else 10)
    warmup = max(args.warmup, 1) if args.compile else args.warmup
    batch = make_batch(batch_size, crop)
    profile = "tiny (demo)" if tiny else "paper"

    from training.models.text import build_tokenizer

    built_at = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        corpus = [sentence for group in SENTENCES for sentence in group]
        build_tokenizer(corpus, model_cfg.text.vocab_size, scratch)
        model = build(model_cfg, crop, scratch).to(device)
        model.train()
        # no dropout: every configuration must compute the same function
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    build_s = time.perf_counter() - built_at
    params = sum(p.numel() for p in model.parameters())
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    header = (
        f"device: {device_name}  profile: {profile}  encoder: {model_cfg.vision.kind}  crop_zyx={crop}  "
        f"patch_zyx={tuple(model_cfg.vision.patch_zyx)}  batch={batch_size}  params={params / 1e6:.1f}M  "
        f"torch={torch.__version__}"
    )
    payload: dict[str, Any] = {
        "device": device_name,
        "profile": profile,
        "tiny": tiny,
        "encoder": model_cfg.vision.kind,
        "crop_zyx": list(crop),
        "batch": batch_size,
        "params": params,
        "build_s": build_s,
        "torch": torch.__version__,
        "argv": sys.argv[1:] if argv is None else list(argv),
    }
    if args.forward_only:
        payload["forward_only"] = forward_only(model, batch, device)
        print(header)
        print(
            f"built in {build_s:.1f} s; one fast forward + loss (no grad): "
            f"{payload['forward_only']['forward_s']:.1f} s, loss {payload['forward_only']['loss']:.4f}"
        )
        if args.json:
            Path(args.json).write_text(json.dumps(payload, indent=2))
        return 0

    flops = float("nan") if args.no_flops else count_flops(model, batch, device)
    peak = (args.peak_tflops or (H100_BF16_DENSE_TFLOPS if cuda else float("nan"))) * 1e12
    runners = [make_runner(model, variant) for variant in variants(args.compile, args.fused, not args.skip_faithful)]
    del model
    measure_interleaved(runners, batch, device, steps, warmup)
    results = {runner.variant.name: figures_of(runner, batch_size, flops, peak) for runner in runners}

    print(f"{header}  flops/step={flops / 1e9:.2f} GFLOP  steps={steps} interleaved, warmup={warmup}")
    print(
        f"{'config':<14}{'step s':>10}{'min s':>9}{'CPU s':>9}{'samples/s':>12}{'1st step s':>12}{'TFLOP/s':>10}"
        f"{'MFU':>8}{'peak GiB':>10}{'loss':>9}"
    )
    for name, figures in results.items():
        print(
            f"{name:<14}{figures['step_s']:>10.4f}{figures['min_step_s']:>9.4f}{figures['cpu_s']:>9.3f}"
            f"{figures['samples_per_s']:>12.2f}{figures['first_step_s']:>12.3f}{figures['tflops_per_s']:>10.3f}"
            f"{figures['mfu']:>8.3f}{figures['peak_mem_gib']:>10.2f}"
            f"{figures['loss']:>9.4f}"
        )
    ratios = {}
    for name, reference in (("faithful", "fast"), ("fast", "fast+compile"), ("fast", "fast+fused")):
        if name in results and reference in results:
            key = f"{reference}/{name}"
            ratios[key] = results[reference]["samples_per_s"] / results[name]["samples_per_s"]
            line = f"ratio {key} samples/s: {ratios[key]:.2f}x"
            if not cuda:  # the same ratio in CPU seconds per step (steadier than wall time on a shared CPU)
                ratios[f"{key} cpu"] = results[name]["cpu_s"] / results[reference]["cpu_s"]
                line += f"  (CPU time {ratios[f'{key} cpu']:.2f}x)"
            print(line)
    if args.json:
        payload.update(
            {"flops_per_step": flops, "steps": steps, "warmup": warmup, "results": results, "ratios": ratios}
        )
        Path(args.json).write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
