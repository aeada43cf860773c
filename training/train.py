"""The training loop: fVLM (per-anatomy soft-target InfoNCE) or the global CLIP baseline.

Runs in-process on CPU (demo) or under ``torchrun`` (DDP: rank / world size / local rank from the
environment; NCCL on CUDA, gloo on CPU). AdamW (no weight decay on 1-D parameters: norms, biases,
temperature, position embeddings, queries), linear warmup + cosine (training.schedule), gradient
clipping, bf16 autocast on CUDA when ``train.amp``. Exact resume from ``<out>/checkpoints/last.pt``
(training.checkpoint): model, optimizer, scheduler, EMA peer, every rank's RNG states and the data
position. A non-finite loss or gradient norm stops the run with :class:`NonFiniteLossError` naming the
step and the loss; the last good checkpoint is kept. MLflow from rank 0 only (training.tracking).

Data comes from a :class:`BatchSource`: ``iter_epoch(epoch)`` yields batches in the training batch
contract (see docs/training.md) and must be deterministic given the epoch and the RNG state at the
start of the epoch; resume rebuilds the epoch's iterator and skips the batches already consumed.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from training.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    TrainProgress,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training.schedule import warmup_cosine

log = logging.getLogger(__name__)

MODEL_DIR_NAME = "model"
CHECKPOINT_DIR_NAME = "checkpoints"
TOKENIZER_DIR_NAME = "tokenizer"


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN / inf loss or gradient norm; the message names the step and the value."""


class BatchSource(Protocol):
    def iter_epoch(self, epoch: int) -> Iterator[dict[str, Any]]: ...


# ---------------------------------------------------------------------------------- in-memory data
def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack per-sample dicts (volume (1,Z,Y,X), mask (Z,Y,X), ...) into one contract batch."""
    return {
        "volume": torch.stack([torch.as_tensor(s["volume"], dtype=torch.float32) for s in samples]),
        "mask": torch.stack([torch.as_tensor(s["mask"]) for s in samples]),
        "anatomy_intact": torch.stack([torch.as_tensor(s["anatomy_intact"], dtype=torch.bool) for s in samples]),
        "anatomy_abnormal": torch.stack([torch.as_tensor(s["anatomy_abnormal"], dtype=torch.bool) for s in samples]),
        "anatomy_text": [list(s["anatomy_text"]) for s in samples],
        "labels": torch.stack([torch.as_tensor(s["labels"], dtype=torch.int8) for s in samples]),
        "report_text": [str(s["report_text"]) for s in samples],
        "study_id": [str(s["study_id"]) for s in samples],
    }


class InMemoryBatches:
    """A list of samples served as contract batches; shuffled per epoch with a (seed, epoch) generator.

    Under DDP each rank takes every ``world_size``-th sample of the epoch's permutation.
    """

    def __init__(
        self,
        samples: Sequence[dict[str, Any]],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not samples:
            raise ValueError("InMemoryBatches needs at least one sample")
        self.samples = list(samples)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        per_rank = len(self.samples) // self.world_size
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def iter_epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(self.samples), generator=generator).tolist()
        else:
            order = list(range(len(self.samples)))
        usable = (len(order) // self.world_size) * self.world_size
        mine = order[self.rank : usable : self.world_size]
        for start in range(0, len(mine), self.batch_size):
            chunk = mine[start : start + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                return
            yield collate_samples([self.samples[i] for i in chunk])

    def texts(self) -> list[str]:
        """Report + anatomy texts (tokenizer corpus)."""
        out: list[str] = []
        for sample in self.samples:
            out.append(str(sample["report_text"]))
            out.extend(text for text in sample["anatomy_text"] if text)
        return out


# ---------------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(use_gpu: bool) -> DistEnv:
    """Rank / world from torchrun's environment; initialise the process group when world > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = use_gpu and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if world_size > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistEnv(rank, world_size, local_rank, device)


def _barrier(env: DistEnv) -> None:
    if env.distributed:
        import torch.distributed as dist

        dist.barrier()


def _all_gather_object(env: DistEnv, value: Any) -> list[Any]:
    if not env.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, value)
    return gathered


# ---------------------------------------------------------------------------------- loss step
class LossModule(nn.Module):
    """model + loss in one ``forward`` so DistributedDataParallel's hooks see every parameter use."""

    def __init__(self, model: nn.Module, train_cfg: Any, gather: bool) -> None:
        super().__init__()
        self.model = model
        self.loss_kind = train_cfg.loss
        self.normal_positives = train_cfg.normal_positives
        self.alpha = float(train_cfg.coteaching_alpha)
        self.gather = gather

    def forward(self, batch: dict[str, Any], peer: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from training.losses import clip_loss, fvlm_loss, peer_logits

        device = self.model.device
        volume = batch["volume"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        if self.loss_kind == "clip":
            out = self.model(volume, mask, report_text=batch["report_text"])
            loss = clip_loss(out["global_"], out["text_global"], out["logit_scale"], gather=self.gather)
            return loss, {}
        out = self.model(volume, mask, anatomy_text=batch["anatomy_text"])
        valid = batch["anatomy_intact"].to(device).bool() & out["anatomy_present"]
        coteach = None
        if peer is not None and self.alpha > 0.0:
            with torch.no_grad():
                peer_out = peer(volume, mask, anatomy_text=batch["anatomy_text"])
            coteach = peer_logits(peer_out["anatomy"], peer_out["text_anatomy"], out["logit_scale"], gather=self.gather)
        return fvlm_loss(
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
        )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for _, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _text_token_count(model: nn.Module, batch: dict[str, Any], loss_kind: str) -> int:
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


def _image_token_count(model: nn.Module, batch: dict[str, Any]) -> int:
    patch = getattr(getattr(model, "vision", None), "patch_zyx", None)
    shape = batch["volume"].shape[2:]
    if patch is None:
        return 0
    return int(batch["volume"].shape[0] * math.prod(s // p for s, p in zip(shape, patch)))


# ---------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    steps: int
    final_loss: float
    final_loss_avg: float                 # mean of the last min(10, steps) step losses
    samples_per_s: float
    tokens_per_s: float                   # vision patch tokens + non-padding text tokens per second
    # both: wall clock from the end of the process's first step to the end of its last step
    run_id: str | None
    model_dir: str
    model_uri: str | None = None
    model_version: str | None = None
    registered_model: str | None = None
    resumed_from_step: int = 0
    losses: list[float] = field(default_factory=list)

    def metrics_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.pop("losses")
        return payload


@dataclass
class _Throughput:
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def add(self, samples: int, tokens: int, seconds: float) -> None:
        self.samples += samples
        self.tokens += tokens
        self.seconds += seconds

    def rates(self) -> tuple[float, float]:
        if self.seconds <= 0:
            return 0.0, 0.0
        return self.samples / self.seconds, self.tokens / self.seconds


# ---------------------------------------------------------------------------------- main entry
def prepare_tokenizer(config: Any, out_dir: Path, corpus: Iterable[str] | None, env: DistEnv) -> str | None:
    """Demo text tower (``text.name_or_path`` null): build the WordPiece tokenizer from the training texts.

    Built once per output dir (rank 0), reused on resume. Returns the tokenizer dir (None: pretrained).
    """
    if config.model.text.name_or_path is not None:
        return None
    tokenizer_dir = out_dir / TOKENIZER_DIR_NAME
    if env.is_main and not (tokenizer_dir / "tokenizer_config.json").is_file():
        from training.text import build_tokenizer

        texts = [t for t in (corpus or []) if t and t.strip()]
        if not texts:
            log.warning("no training texts for the tokenizer: character-level fallback vocabulary")
        build_tokenizer(texts, config.model.text.vocab_size, tokenizer_dir, min_reports=config.model.text.vocab_min_reports)
    _barrier(env)
    return str(tokenizer_dir)


def train(
    config: Any,
    source: BatchSource,
    anatomy_names: Sequence[str],
    out_dir: str | Path,
    *,
    steps: int | None = None,
    resume: bool = False,
    corpus_texts: Iterable[str] | None = None,
    shards_dir: str | Path | None = None,
    metrics_path: str | Path | None = None,
    stop_after: int | None = None,
    zero_shot_anatomy_set: str | None = None,
) -> TrainResult:
    """Train per ``config.train`` / ``config.model``; returns the summary (rank 0's view).

    ``steps`` overrides ``train.steps`` (total optimizer steps, also on resume). ``stop_after`` ends this
    process after that many steps *without* finishing the run (tests use it to simulate a kill; a
    checkpoint is written there). ``corpus_texts`` feed the demo tokenizer.
    """
    from training import tracking
    from training.model import build_model

    train_cfg = config.train
    total_steps = int(steps or train_cfg.steps)
    out = Path(out_dir)
    checkpoint_dir = out / CHECKPOINT_DIR_NAME
    env = init_distributed(use_gpu=train_cfg.gpus > 0)
    if train_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)

    resume_payload: dict[str, Any] | None = None
    if resume:
        last = latest_checkpoint(checkpoint_dir)
        if last is None:
            log.warning("--resume: no checkpoint in %s, starting from step 0", checkpoint_dir)
        else:
            resume_payload = load_checkpoint(last, map_location="cpu")
    progress = TrainProgress()
    if resume_payload is not None:
        progress = TrainProgress(**resume_payload["progress"])

    torch.manual_seed(train_cfg.seed + env.rank)
    import random

    import numpy as np

    random.seed(train_cfg.seed + env.rank)
    np.random.seed((train_cfg.seed + env.rank) % (2**32))

    tokenizer_dir = prepare_tokenizer(config, out, corpus_texts, env)
    model = build_model(config.model, anatomy_names, config.grid.crop_zyx, tokenizer_dir=tokenizer_dir)
    model.to(env.device)
    peer: nn.Module | None = None
    if train_cfg.loss == "fvlm" and train_cfg.coteaching_alpha > 0.0:
        peer = copy.deepcopy(model).eval()
        for parameter in peer.parameters():
            parameter.requires_grad_(False)
    loss_module: nn.Module = LossModule(model, train_cfg, gather=env.distributed)
    if env.distributed:
        from torch.nn.parallel import DistributedDataParallel

        loss_module = DistributedDataParallel(
            loss_module,
            device_ids=[env.local_rank] if env.device.type == "cuda" else None,
            find_unused_parameters=True,  # fvlm leaves the global head unused, clip the anatomy pooling
        )
    optimizer = torch.optim.AdamW(_param_groups(model, train_cfg.weight_decay), lr=train_cfg.lr)
    scheduler = warmup_cosine(optimizer, train_cfg.warmup_steps, total_steps)
    epoch_rng: dict[str, Any] | None = None
    step_rng: dict[str, Any] | None = None
    if resume_payload is not None:
        model.load_state_dict(resume_payload["model"])
        optimizer.load_state_dict(resume_payload["optimizer"])
        scheduler.load_state_dict(resume_payload["scheduler"])
        if peer is not None and resume_payload.get("peer") is not None:
            peer.load_state_dict(resume_payload["peer"])
        rank_states = resume_payload["rng"]
        if len(rank_states) != env.world_size:
            log.warning("checkpoint has RNG states of %d ranks, running %d: RNG not restored exactly",
                        len(rank_states), env.world_size)
        mine = rank_states[env.rank % len(rank_states)]
        epoch_rng, step_rng = mine["epoch_start"], mine["step"]
        log.info("resumed from %s at step %d (epoch %d, batch %d)",
                 checkpoint_dir / LAST_NAME, progress.step, progress.epoch, progress.batch_in_epoch)
    resumed_from = progress.step

    tracker = tracking.make_tracker(config.tracking, config.root, is_main_process=env.is_main,
                                    run_id=progress.run_id, run_name=out.name)
    progress.run_id = tracker.run_id
    tracker.log_params(config.flat())
    tracker.set_tags({
        **tracking.provenance_tags(config.root, shards_dir),
        "loss": train_cfg.loss,
        "total_steps": total_steps,
        "world_size": env.world_size,
        "device": env.device.type,
    })

    autocast_enabled = bool(train_cfg.amp and env.device.type == "cuda")
    throughput = _Throughput()
    compute_only = _Throughput()          # fallback for a process that ran a single step
    last_tick: float | None = None
    window_losses: list[float] = []
    status = "FAILED"
    try:
        while progress.step < total_steps:
            if epoch_rng is not None:       # resume: the epoch's iterator sees the RNG it saw originally
                restore_rng_state(epoch_rng)
            epoch_start_rng = capture_rng_state()
            if hasattr(source, "set_epoch"):
                source.set_epoch(progress.epoch)  # type: ignore[attr-defined]
            iterator = iter(source.iter_epoch(progress.epoch))
            for _ in range(progress.batch_in_epoch):
                if next(iterator, None) is None:
                    raise RuntimeError(f"resume: epoch {progress.epoch} has fewer than {progress.batch_in_epoch} batches")
            if step_rng is not None:
                restore_rng_state(step_rng)
            epoch_rng = step_rng = None
            consumed_any = progress.batch_in_epoch > 0
            for batch in iterator:
                consumed_any = True
                started = time.perf_counter()
                loss_module.train()
                with torch.autocast(device_type=env.device.type, dtype=torch.bfloat16, enabled=autocast_enabled):
                    loss, per_anatomy = loss_module(batch, peer)
                loss_value = float(loss.detach())
                step_number = progress.step + 1
                if not math.isfinite(loss_value):
                    parts = {k: float(v.detach()) for k, v in per_anatomy.items()}
                    raise NonFiniteLossError(
                        f"step {step_number}: loss is {loss_value} (per anatomy: {parts}); stopping. "
                        f"Last good checkpoint: {latest_checkpoint(checkpoint_dir) or 'none'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip))
                if not math.isfinite(grad_norm):
                    raise NonFiniteLossError(
                        f"step {step_number}: gradient norm is {grad_norm} (loss {loss_value}); stopping. "
                        f"Last good checkpoint: {latest_checkpoint(checkpoint_dir) or 'none'}"
                    )
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                scheduler.step()
                if peer is not None:
                    _ema_update(peer, model, train_cfg.coteaching_ema)
                if env.device.type == "cuda":
                    torch.cuda.synchronize(env.device)
                elapsed = time.perf_counter() - started
                batch_size = int(batch["volume"].shape[0]) * env.world_size
                tokens = (_image_token_count(model, batch) + _text_token_count(model, batch, train_cfg.loss)) * env.world_size
                progress.step = step_number
                progress.batch_in_epoch += 1
                progress.loss_history.append(loss_value)
                window_losses.append(loss_value)
                if progress.step % train_cfg.log_every == 0 or progress.step == total_steps:
                    metrics = {
                        "train/loss": loss_value,
                        "train/lr": lr,
                        "train/temperature": float(1.0 / model.logit_scale.detach()),
                        "train/grad_norm": grad_norm,
                        "train/samples_per_s": batch_size / elapsed if elapsed > 0 else 0.0,
                        "train/tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                    }
                    metrics.update({f"train/loss_{name}": float(v.detach()) for name, v in per_anatomy.items()})
                    tracker.log_metrics(metrics, step=progress.step)
                if env.is_main and (progress.step % 10 == 0 or progress.step == total_steps or progress.step == 1):
                    log.info("step %d/%d loss %.4f lr %.2e %.2f samples/s", progress.step, total_steps,
                             loss_value, lr, batch_size / elapsed if elapsed > 0 else 0.0)
                at_checkpoint = progress.step % train_cfg.checkpoint_every == 0 or progress.step == total_steps
                stopping = stop_after is not None and progress.step - resumed_from >= stop_after
                if at_checkpoint or stopping:
                    window_mean = sum(window_losses) / len(window_losses)
                    window_losses.clear()
                    _write_checkpoints(env, checkpoint_dir, model, peer, optimizer, scheduler, progress,
                                       epoch_start_rng, window_mean)
                # summary throughput = wall clock between step ends (data loading, logging and
                # checkpoints included); the first step of a process is warm-up and not counted
                compute_only.add(batch_size, tokens, elapsed)
                tick = time.perf_counter()
                if last_tick is not None:
                    throughput.add(batch_size, tokens, tick - last_tick)
                last_tick = tick
                if progress.step >= total_steps or stopping:
                    break
            else:
                if not consumed_any:
                    raise RuntimeError(f"the training data yielded no batch in epoch {progress.epoch}")
                progress.epoch += 1
                progress.batch_in_epoch = 0
                continue
            if stop_after is not None and progress.step - resumed_from >= stop_after and progress.step < total_steps:
                status = "KILLED"
                return _result(progress, throughput if throughput.seconds > 0 else compute_only, tracker.run_id,
                               out / MODEL_DIR_NAME, resumed_from)
            if progress.step >= total_steps:
                break

        # ------------------------------------------------------------------ finish (rank 0)
        result = _result(progress, throughput if throughput.seconds > 0 else compute_only, tracker.run_id,
                         out / MODEL_DIR_NAME, resumed_from)
        if env.is_main:
            _finish(config, tracker, model, out, checkpoint_dir, result, zero_shot_anatomy_set)
            tracker.log_metrics({"train/final_loss": result.final_loss,
                                 "train/samples_per_s_avg": result.samples_per_s,
                                 "train/tokens_per_s_avg": result.tokens_per_s}, step=progress.step)
            if metrics_path is not None:
                from core.io import atomic_write_text

                payload = result.metrics_json()
                try:  # a DVC-tracked file: no machine-specific absolute paths
                    payload["model_dir"] = str(Path(result.model_dir).resolve().relative_to(Path(config.root).resolve()))
                except ValueError:
                    pass
                atomic_write_text(metrics_path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
        _barrier(env)
        status = "FINISHED"
        return result
    except NonFiniteLossError as error:
        tracker.set_tags({"failure": str(error)[:500]})
        raise
    finally:
        tracker.end(status)


def _ema_update(peer: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for peer_param, param in zip(peer.parameters(), model.parameters()):
            peer_param.mul_(decay).add_(param.detach(), alpha=1.0 - decay)
        for peer_buffer, buffer in zip(peer.buffers(), model.buffers()):
            peer_buffer.copy_(buffer)


def _write_checkpoints(
    env: DistEnv,
    checkpoint_dir: Path,
    model: nn.Module,
    peer: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: TrainProgress,
    epoch_start_rng: dict[str, Any],
    window_mean_loss: float,
) -> None:
    rng_states = _all_gather_object(env, {"epoch_start": epoch_start_rng, "step": capture_rng_state()})
    if not env.is_main:
        return
    is_best = window_mean_loss < progress.best_loss
    if is_best:
        progress.best_loss = window_mean_loss
    payload = {
        "progress": asdict(progress),
        "model": model.state_dict(),
        "peer": peer.state_dict() if peer is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states,
        "window_mean_loss": window_mean_loss,
    }
    save_checkpoint(checkpoint_dir / LAST_NAME, payload)
    if is_best:
        save_checkpoint(checkpoint_dir / BEST_NAME, payload)


def _result(progress: TrainProgress, throughput: _Throughput, run_id: str | None, model_dir: Path,
            resumed_from: int) -> TrainResult:
    history = progress.loss_history
    tail = history[-10:]
    samples_per_s, tokens_per_s = throughput.rates()
    return TrainResult(
        steps=progress.step,
        final_loss=history[-1] if history else float("nan"),
        final_loss_avg=sum(tail) / len(tail) if tail else float("nan"),
        samples_per_s=samples_per_s,
        tokens_per_s=tokens_per_s,
        run_id=run_id,
        model_dir=str(model_dir),
        resumed_from_step=resumed_from,
        losses=list(history),
    )


def _finish(config: Any, tracker: Any, model: nn.Module, out: Path, checkpoint_dir: Path, result: TrainResult,
            anatomy_set_name: str | None) -> None:
    """Save the final model (+ zero-shot spec), log checkpoints and the pyfunc, register a version."""
    from training import tracking
    from training.evaluate import write_zero_shot_spec, zero_shot_spec

    model_dir = out / MODEL_DIR_NAME
    model.save_pretrained(model_dir)
    spec = zero_shot_spec(anatomy_set_name or config.segment.anatomy_set, model.anatomy_names,
                          use_global=config.train.loss == "clip")
    write_zero_shot_spec(model_dir, spec, hu_window=config.grid.hu_window,
                         spacing_zyx_mm=config.grid.spacing_zyx_mm)
    if config.tracking.log_checkpoints:
        for name in (LAST_NAME, BEST_NAME):
            if (checkpoint_dir / name).is_file():
                tracker.log_artifact(checkpoint_dir / name, "checkpoints")
    if config.tracking.register_model and isinstance(tracker, tracking.MlflowTracker):
        patch = tuple(config.model.vision.patch_zyx)
        result.model_uri = tracking.log_model(
            tracker, model_dir, crop_zyx=tuple(config.grid.crop_zyx), labels=spec.labels, example_zyx=patch,
        )
        if result.model_uri:
            result.registered_model = config.tracking.registered_model
            result.model_version = tracking.register_model(
                tracker.tracking_uri, result.model_uri, config.tracking.registered_model,
                tags={"run_id": tracker.run_id or "", "loss": config.train.loss},
            )
            tracker.set_tags({"registered_model": result.registered_model, "model_version": result.model_version})
