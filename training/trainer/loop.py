"""The training loop: fVLM (per-anatomy soft-target InfoNCE) or the global CLIP baseline.

Runs in-process on CPU (demo) or under ``torchrun`` (DDP: rank / world size / local rank from the
environment; NCCL on CUDA, gloo on CPU; :mod:`training.models.distributed`). AdamW (no weight decay on
1-D parameters: norms, biases, temperature, position embeddings, queries; :func:`training.trainer.step.param_groups`),
linear warmup + cosine (:mod:`training.trainer.schedule`), gradient clipping, bf16 autocast on CUDA when
``train.amp``; fused AdamW with ``train.fused_optimizer``, the vision tower compiled with ``train.compile``
(:func:`training.trainer.step.make_adamw`, :func:`training.trainer.step.compile_vision`). Exact resume from
``<out>/checkpoints/last.pt`` (:mod:`training.trainer.checkpoint`): model, optimizer, scheduler, EMA peer,
every rank's RNG states and the data position. A non-finite loss or gradient norm stops the run with
:class:`NonFiniteLossError` naming the step and the loss; the last good checkpoint is kept. MLflow from rank 0
only (:mod:`training.tracking.runs`).

Data comes from a :class:`training.trainer.batch.BatchSource`: ``iter_epoch(epoch)`` yields batches in
the batch contract (:class:`training.trainer.batch.Batch`) and must be deterministic given the epoch and
the RNG state at the start of the epoch; resume rebuilds the epoch's iterator and skips the batches
already consumed.

:func:`train` = set up (:func:`seed_everything`, :func:`prepare_tokenizer`, :func:`build_train_state`,
:func:`restore_train_state`, :func:`start_tracker`), :func:`run_epochs` (:func:`run_epoch` ->
:func:`optimisation_step` + :func:`record_step` per batch), then :func:`finish_run` on rank 0.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from training.models.distributed import DistEnv, all_gather_object, barrier, init_distributed
from training.trainer.batch import Batch, BatchSource
from training.trainer.checkpoint import (
    BEST_NAME,
    LAST_NAME,
    TrainProgress,
    capture_rng_state,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from training.trainer.schedule import warmup_cosine
from training.trainer.step import (
    LossModule,
    compile_vision,
    ema_update,
    image_token_count,
    make_adamw,
    param_groups,
    text_token_count,
)

if TYPE_CHECKING:
    from training.models.model import FVLM
    from training.tracking.runs import NullTracker
    from training.trainer.job import TrainJob

log = logging.getLogger(__name__)

MODEL_DIR_NAME = "model"
CHECKPOINT_DIR_NAME = "checkpoints"
TOKENIZER_DIR_NAME = "tokenizer"


class TrainingFailure(RuntimeError):
    """A run that must not produce a model: the message names the step and what to do."""


class NonFiniteLossError(TrainingFailure):
    """Training produced a NaN / inf loss or gradient norm; the message names the step and the value."""


class NoLearningSignalError(TrainingFailure):
    """``train.max_silent_steps`` steps in a row had a loss of exactly 0: no anatomy entered the loss
    (with ``train.require_abnormal`` an anatomy enters only in a batch holding an abnormal sample of it),
    so the weights only drift and a "finished" model would be noise."""


# ---------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    steps: int
    final_loss: float
    final_loss_avg: float  # mean of the last min(10, steps) step losses
    samples_per_s: float
    tokens_per_s: float  # vision patch tokens + non-padding text tokens per second
    # both: wall clock from the end of the process's first step to the end of its last step
    run_id: str | None
    model_dir: str
    model_uri: str | None = None
    model_version: str | None = None
    registered_model: str | None = None
    resumed_from_step: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def first_loss_avg(self) -> float:
        """Mean of the first min(10, steps) step losses of this run's history (NaN without losses)."""
        head = self.losses[:10]
        return sum(head) / len(head) if head else float("nan")

    def metrics_json(self) -> dict[str, Any]:
        """The numbers of ``metrics/train.json`` (DVC compares them across experiments)."""
        payload = {key: value for key, value in asdict(self).items() if key not in (*INFO_FIELDS, "losses")}
        payload["first_loss_avg"] = self.first_loss_avg  # first-10 vs final_loss_avg (last-10): did it learn?
        return payload

    def info_json(self) -> dict[str, Any]:
        """The identifiers of ``metrics/train.info.json``: where the model and its run are (never compared)."""
        return {key: getattr(self, key) for key in INFO_FIELDS}


# identifiers, not metrics (core/metrics_files.py): metrics/train.info.json
INFO_FIELDS = ("run_id", "model_dir", "model_uri", "model_version", "registered_model")


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


# ---------------------------------------------------------------------------------- set-up
@dataclass
class TrainState:
    """The trainable objects of a run (``loss_module`` is the DDP-wrapped :class:`LossModule` under DDP)."""

    model: FVLM
    peer: nn.Module | None
    loss_module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR


def seed_everything(seed: int) -> None:
    """Seed torch, python ``random`` and numpy's global generator (in this order)."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (2**32))


def prepare_tokenizer(
    job: TrainJob, out_dir: Path, corpus: Iterable[str | tuple[str, str]] | None, env: DistEnv
) -> str | None:
    """Demo text tower (``text.name_or_path`` null): build the WordPiece tokenizer from the training texts.

    Built once per output dir (rank 0), reused on resume. Returns the tokenizer dir (None: pretrained).
    """
    if job.model.text.name_or_path is not None:
        return None
    tokenizer_dir = out_dir / TOKENIZER_DIR_NAME
    if env.is_main and not (tokenizer_dir / "tokenizer_config.json").is_file():
        from training.models.text import build_tokenizer

        # (patient_id, text) pairs (ShardBatches.patient_texts) or bare texts: the vocabulary counts patients
        texts = [t for t in (corpus or []) if (t[1] if isinstance(t, tuple) else t or "").strip()]
        if not texts:
            log.warning("no training texts for the tokenizer: character-level fallback vocabulary")
        build_tokenizer(texts, job.model.text.vocab_size, tokenizer_dir, min_patients=job.model.text.vocab_min_patients)
    barrier(env)
    return str(tokenizer_dir)


def add_recipe_heads(model: nn.Module, job: TrainJob, label_names: Sequence[str]) -> None:
    """The heads ``train.label_loss_weight`` / ``train.contrastive: sigmoid`` need (none by default).
    Label anatomies come from the anatomy set (a label without one is read off the global embedding)."""
    train_cfg = job.train
    label_anatomy: list[int] | None = None
    if train_cfg.label_loss_weight > 0.0:
        from core.anatomy_sets import load_anatomy_set

        anatomy_set = load_anatomy_set(job.anatomy_set)
        names = list(label_names) or list(anatomy_set.labels)
        anatomy_of = anatomy_set.label_anatomy
        label_anatomy = [anatomy_set.index(str(anatomy_of[n])) if anatomy_of.get(n) else -1 for n in names]
    if label_anatomy is not None or train_cfg.contrastive == "sigmoid":
        model.add_heads(label_anatomy=label_anatomy, sigmoid_bias=train_cfg.contrastive == "sigmoid")  # type: ignore[operator]


def build_train_state(
    job: TrainJob,
    env: DistEnv,
    anatomy_names: Sequence[str],
    tokenizer_dir: str | None,
    total_steps: int,
    label_names: Sequence[str] = (),
) -> TrainState:
    """Model (on the device), EMA peer (co-teaching), loss module (DDP-wrapped when distributed), AdamW
    and the warmup-cosine schedule."""
    from training.models.model import build_model

    train_cfg = job.train
    model = build_model(job.model, anatomy_names, job.grid.crop_zyx, tokenizer_dir=tokenizer_dir)
    add_recipe_heads(model, job, label_names)
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
    optimizer = make_adamw(param_groups(model, train_cfg.weight_decay), train_cfg.lr, fused=train_cfg.fused_optimizer)
    if train_cfg.compile:  # after the EMA peer's deepcopy: the peer (no_grad forward) stays eager
        compile_vision(model)
    scheduler = warmup_cosine(optimizer, train_cfg.warmup_steps, total_steps)
    return TrainState(model, peer, loss_module, optimizer, scheduler)


def load_resume_payload(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The ``last.pt`` checkpoint to resume from (None, with a warning, when there is none)."""
    last = latest_checkpoint(checkpoint_dir)
    if last is None:
        log.warning("--resume: no checkpoint in %s, starting from step 0", checkpoint_dir)
        return None
    return load_checkpoint(last, map_location="cpu")


def restore_train_state(
    state: TrainState, payload: dict[str, Any], env: DistEnv
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load model / optimizer / scheduler / peer states; returns this rank's (epoch-start, step) RNG states."""
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    if state.peer is not None and payload.get("peer") is not None:
        state.peer.load_state_dict(payload["peer"])
    rank_states = payload["rng"]
    if len(rank_states) != env.world_size:
        log.warning(
            "checkpoint has RNG states of %d ranks, running %d: RNG not restored exactly",
            len(rank_states),
            env.world_size,
        )
    mine = rank_states[env.rank % len(rank_states)]
    return mine["epoch_start"], mine["step"]


def start_tracker(
    job: TrainJob,
    env: DistEnv,
    out: Path,
    progress: TrainProgress,
    total_steps: int,
) -> NullTracker:
    """The run's tracker (MLflow on rank 0; a resumed run reopens its run), params and provenance tags."""
    from training.tracking.runs import make_tracker, provenance_tags, run_name_for

    tracker = make_tracker(
        job.tracking,
        job.root,
        is_main_process=env.is_main,
        run_id=progress.run_id,
        run_name=run_name_for("train", f"{total_steps}-steps"),
        owner=str(out.resolve()),
    )
    progress.run_id = tracker.run_id
    tracker.log_params(job.params)
    tracker.set_tags(
        {
            **provenance_tags(job.root, job.shards_dir),
            "loss": job.train.loss,
            "total_steps": total_steps,
            "world_size": env.world_size,
            "device": env.device.type,
        }
    )
    return tracker


# ---------------------------------------------------------------------------------- the loop
@dataclass
class _StepStats:
    loss: float
    per_anatomy: dict[str, torch.Tensor]
    grad_norm: float
    lr: float
    elapsed: float  # seconds of the step's compute (forward, backward, update)
    batch_size: int  # global (all ranks)
    tokens: int  # global (all ranks)


@dataclass
class _Run:
    """Everything the loop reads and updates."""

    job: TrainJob
    env: DistEnv
    state: TrainState
    progress: TrainProgress
    tracker: NullTracker
    checkpoint_dir: Path
    total_steps: int
    stop_after: int | None
    resumed_from: int
    autocast_enabled: bool
    throughput: _Throughput = field(default_factory=_Throughput)
    compute_only: _Throughput = field(default_factory=_Throughput)  # fallback for a process that ran one step
    last_tick: float | None = None
    window_losses: list[float] = field(default_factory=list)
    silent_steps: int = 0  # steps in a row with a loss of exactly 0 (check_learning_signal)
    bar: Any = None  # core.progress.Progress of the steps (rank 0 shows it)

    def stopping(self) -> bool:
        """``stop_after`` steps done in this process (a simulated kill)."""
        return self.stop_after is not None and self.progress.step - self.resumed_from >= self.stop_after

    def summary_throughput(self) -> _Throughput:
        return self.throughput if self.throughput.seconds > 0 else self.compute_only


def run_epochs(
    run: _Run, source: BatchSource, epoch_rng: dict[str, Any] | None, step_rng: dict[str, Any] | None
) -> bool:
    """Train up to ``total_steps`` (True) or until ``stop_after`` ends this process early (False)."""
    progress = run.progress
    while progress.step < run.total_steps:
        ended = run_epoch(run, source, epoch_rng, step_rng)
        epoch_rng = step_rng = None
        if not ended:
            progress.epoch += 1
            progress.batch_in_epoch = 0
            continue
        if run.stopping() and progress.step < run.total_steps:
            return False
        break
    return True


def run_epoch(
    run: _Run, source: BatchSource, epoch_rng: dict[str, Any] | None, step_rng: dict[str, Any] | None
) -> bool:
    """Train on (the rest of) epoch ``progress.epoch``; True when the run stops inside it.

    Resume: ``epoch_rng`` is restored before the epoch's iterator is built (it sees the RNG it saw
    originally), the consumed batches are skipped, then ``step_rng`` is restored.
    """
    progress = run.progress
    if epoch_rng is not None:
        restore_rng_state(epoch_rng)
    epoch_start_rng = capture_rng_state()
    if hasattr(source, "set_epoch"):
        source.set_epoch(progress.epoch)
    iterator = iter(source.iter_epoch(progress.epoch))
    for _ in range(progress.batch_in_epoch):
        if next(iterator, None) is None:
            raise RuntimeError(f"resume: epoch {progress.epoch} has fewer than {progress.batch_in_epoch} batches")
    if step_rng is not None:
        restore_rng_state(step_rng)
    consumed_any = progress.batch_in_epoch > 0
    for batch in iterator:
        consumed_any = True
        stats = optimisation_step(run, batch)
        stopping = run.stopping()
        record_step(run, stats, epoch_start_rng, stopping)
        if progress.step >= run.total_steps or stopping:
            return True
    if not consumed_any:
        raise RuntimeError(f"the training data yielded no batch in epoch {progress.epoch}")
    return False


def check_learning_signal(run: _Run, loss_value: float, step_number: int) -> None:
    """Count steps in a row whose loss is exactly 0 (nothing entered it); stop at ``train.max_silent_steps``,
    or at the last step of a run that never had a signal."""
    run.silent_steps = run.silent_steps + 1 if loss_value == 0.0 else 0
    limit = run.job.train.max_silent_steps
    never = run.silent_steps == step_number - run.resumed_from and step_number == run.total_steps
    if run.silent_steps and (run.silent_steps >= limit or never):
        why = (
            "with an abnormal sample of it; train.require_abnormal"
            if run.job.train.require_abnormal
            else "and a text that differs from another sample's"
        )
        raise NoLearningSignalError(
            f"steps {step_number - run.silent_steps + 1}-{step_number}: the loss was exactly 0 at every step: no "
            f"anatomy entered it (no batch held a valid anatomy -- mask present, text non-empty -- {why}). Check "
            "that the shards carry masks and abnormal findings (metrics/shard.json), or raise train.batch_size; "
            f"train.max_silent_steps ({limit}) sets this limit. No model is saved or registered."
        )


def optimisation_step(run: _Run, batch: Batch) -> _StepStats:
    """Forward + loss, NaN guard, backward, clipping, AdamW + schedule step, EMA peer; advances progress."""
    state, env, progress, train_cfg = run.state, run.env, run.progress, run.job.train
    started = time.perf_counter()
    state.loss_module.train()
    with torch.autocast(device_type=env.device.type, dtype=torch.bfloat16, enabled=run.autocast_enabled):
        loss, per_anatomy = state.loss_module(batch, state.peer)
    loss_value = float(loss.detach())
    step_number = progress.step + 1
    check_learning_signal(run, loss_value, step_number)
    if not math.isfinite(loss_value):
        parts = {k: float(v.detach()) for k, v in per_anatomy.items()}
        raise NonFiniteLossError(
            f"step {step_number}: loss is {loss_value} (per anatomy: {parts}); stopping. "
            f"Last good checkpoint: {latest_checkpoint(run.checkpoint_dir) or 'none'}"
        )
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), train_cfg.grad_clip))
    if not math.isfinite(grad_norm):
        raise NonFiniteLossError(
            f"step {step_number}: gradient norm is {grad_norm} (loss {loss_value}); stopping. "
            f"Last good checkpoint: {latest_checkpoint(run.checkpoint_dir) or 'none'}"
        )
    lr = state.optimizer.param_groups[0]["lr"]
    state.optimizer.step()
    state.scheduler.step()
    if state.peer is not None:
        ema_update(state.peer, state.model, train_cfg.coteaching_ema)
    if env.device.type == "cuda":
        torch.cuda.synchronize(env.device)
    elapsed = time.perf_counter() - started
    batch_size = int(batch["volume"].shape[0]) * env.world_size
    tokens = (
        image_token_count(state.model, batch) + text_token_count(state.model, batch, train_cfg.loss)
    ) * env.world_size
    progress.step = step_number
    progress.batch_in_epoch += 1
    progress.loss_history.append(loss_value)
    run.window_losses.append(loss_value)
    return _StepStats(loss_value, per_anatomy, grad_norm, lr, elapsed, batch_size, tokens)


def record_step(run: _Run, stats: _StepStats, epoch_start_rng: dict[str, Any], stopping: bool) -> None:
    """Metrics (every ``log_every`` steps), the log line, checkpoints and the throughput clocks."""
    progress, train_cfg, state = run.progress, run.job.train, run.state
    per_second = stats.batch_size / stats.elapsed if stats.elapsed > 0 else 0.0
    if progress.step % train_cfg.log_every == 0 or progress.step == run.total_steps:
        metrics = {
            "train/loss": stats.loss,
            "train/lr": stats.lr,
            "train/temperature": float(1.0 / state.model.logit_scale.detach()),
            "train/grad_norm": stats.grad_norm,
            "train/samples_per_s": per_second,
            "train/tokens_per_s": stats.tokens / stats.elapsed if stats.elapsed > 0 else 0.0,
        }
        metrics.update({f"train/loss_{name}": float(v.detach()) for name, v in stats.per_anatomy.items()})
        run.tracker.log_metrics(metrics, step=progress.step)
    if run.bar is not None:
        run.bar.update(progress.step, loss=round(stats.loss, 4), lr=f"{stats.lr:.2e}")
    if run.env.is_main and (progress.step % 10 == 0 or progress.step == run.total_steps or progress.step == 1):
        log.debug(
            "step %d/%d loss %.4f lr %.2e %.2f samples/s",
            progress.step,
            run.total_steps,
            stats.loss,
            stats.lr,
            per_second,
        )
    at_checkpoint = progress.step % train_cfg.checkpoint_every == 0 or progress.step == run.total_steps
    if at_checkpoint or stopping:
        window_mean = sum(run.window_losses) / len(run.window_losses)
        run.window_losses.clear()
        _write_checkpoints(run.env, run.checkpoint_dir, state, progress, epoch_start_rng, window_mean)
    # summary throughput = wall clock between step ends (data loading, logging and
    # checkpoints included); the first step of a process is warm-up and not counted
    run.compute_only.add(stats.batch_size, stats.tokens, stats.elapsed)
    tick = time.perf_counter()
    if run.last_tick is not None:
        run.throughput.add(stats.batch_size, stats.tokens, tick - run.last_tick)
    run.last_tick = tick


def _write_checkpoints(
    env: DistEnv,
    checkpoint_dir: Path,
    state: TrainState,
    progress: TrainProgress,
    epoch_start_rng: dict[str, Any],
    window_mean_loss: float,
) -> None:
    rng_states = all_gather_object(env, {"epoch_start": epoch_start_rng, "step": capture_rng_state()})
    if not env.is_main:
        return
    is_best = window_mean_loss < progress.best_loss
    if is_best:
        progress.best_loss = window_mean_loss
    payload = {
        "progress": asdict(progress),
        "model": state.model.state_dict(),
        "peer": state.peer.state_dict() if state.peer is not None else None,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "rng": rng_states,
        "window_mean_loss": window_mean_loss,
    }
    save_checkpoint(checkpoint_dir / LAST_NAME, payload)
    if is_best:
        save_checkpoint(checkpoint_dir / BEST_NAME, payload)


# ---------------------------------------------------------------------------------- main entry
def train(
    job: TrainJob,
    source: BatchSource,
    anatomy_names: Sequence[str],
    *,
    corpus_texts: Iterable[str | tuple[str, str]] | None = None,
    stop_after: int | None = None,
    zero_shot_anatomy_set: str | None = None,
) -> TrainResult:
    """Train per ``job.train`` / ``job.model`` on ``source`` into ``job.out_dir``; returns the summary
    (rank 0's view). The stage's entry is :func:`training.stages.run_train` (it reads the shards).

    ``job.steps``: total optimizer steps (also on resume); ``job.resume``: continue from the last
    checkpoint. ``stop_after`` ends this process after that many steps *without* finishing the run
    (tests use it to simulate a kill; a checkpoint is written there). ``corpus_texts`` feed the demo
    tokenizer.
    """
    train_cfg = job.train
    total_steps = int(job.steps)
    out = Path(job.out_dir)
    checkpoint_dir = out / CHECKPOINT_DIR_NAME
    env = init_distributed(use_gpu=train_cfg.gpus > 0)
    if train_cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    payload = load_resume_payload(checkpoint_dir) if job.resume else None
    progress = TrainProgress(**payload["progress"]) if payload is not None else TrainProgress()

    seed_everything(train_cfg.seed + env.rank)
    tokenizer_dir = prepare_tokenizer(job, out, corpus_texts, env)
    label_names = tuple(getattr(source, "label_names", ()))
    state = build_train_state(job, env, anatomy_names, tokenizer_dir, total_steps, label_names)
    epoch_rng: dict[str, Any] | None = None
    step_rng: dict[str, Any] | None = None
    if payload is not None:
        epoch_rng, step_rng = restore_train_state(state, payload, env)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d)",
            checkpoint_dir / LAST_NAME,
            progress.step,
            progress.epoch,
            progress.batch_in_epoch,
        )
    tracker = start_tracker(job, env, out, progress, total_steps)
    run = _Run(
        job,
        env,
        state,
        progress,
        tracker,
        checkpoint_dir,
        total_steps,
        stop_after,
        resumed_from=progress.step,
        autocast_enabled=bool(train_cfg.amp and env.device.type == "cuda"),
    )
    status = "FAILED"
    from core.progress import progress as progress_bar

    run.bar = progress_bar(total_steps, "train", "steps", start=progress.step, enabled=env.is_main)
    try:
        with run.bar:
            finished = run_epochs(run, source, epoch_rng, step_rng)
        result = _result(progress, run.summary_throughput(), tracker.run_id, out / MODEL_DIR_NAME, run.resumed_from)
        if not finished:
            status = "KILLED"
            return result
        if env.is_main:
            finish_run(job, tracker, state.model, out, result, zero_shot_anatomy_set)
        barrier(env)
        status = "FINISHED"
        return result
    except TrainingFailure as error:
        tracker.set_tags({"failure": str(error)[:500]})
        raise
    finally:
        tracker.end(status)


def _result(
    progress: TrainProgress, throughput: _Throughput, run_id: str | None, model_dir: Path, resumed_from: int
) -> TrainResult:
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


# ---------------------------------------------------------------------------------- finish (rank 0)
def finish_run(
    job: TrainJob,
    tracker: NullTracker,
    model: FVLM,
    out: Path,
    result: TrainResult,
    anatomy_set_name: str | None,
) -> None:
    """Rank 0 at the end: save + log + register the model, log the summary metrics, write metrics JSON."""
    save_final_model(job, tracker, model, out, result, anatomy_set_name)
    tracker.log_metrics(
        {
            "train/final_loss": result.final_loss,
            "train/samples_per_s_avg": result.samples_per_s,
            "train/tokens_per_s_avg": result.tokens_per_s,
        },
        step=result.steps,
    )
    metrics_path = job.metrics_path
    if metrics_path is not None:
        from core.metrics_files import write_metrics

        numbers, info = result.metrics_json(), result.info_json()
        try:  # a DVC-tracked file: no machine-specific absolute paths
            info["model_dir"] = str(Path(result.model_dir).resolve().relative_to(Path(job.root).resolve()))
        except ValueError:
            pass
        write_metrics(metrics_path, numbers, info)


def save_final_model(
    job: TrainJob, tracker: NullTracker, model: FVLM, out: Path, result: TrainResult, anatomy_set_name: str | None
) -> None:
    """Save the final model (+ zero-shot spec), log checkpoints and the pyfunc, register a version."""
    from training.models.zero_shot import write_zero_shot_spec, zero_shot_spec
    from training.tracking.registry import log_model, register_model
    from training.tracking.runs import MlflowTracker

    model_dir = out / MODEL_DIR_NAME
    checkpoint_dir = out / CHECKPOINT_DIR_NAME
    model.save_pretrained(model_dir)
    spec = zero_shot_spec(anatomy_set_name or job.anatomy_set, model.anatomy_names, use_global=job.train.loss == "clip")
    write_zero_shot_spec(model_dir, spec, hu_window=job.grid.hu_window, spacing_zyx_mm=job.grid.spacing_zyx_mm)
    if job.tracking.log_checkpoints:
        for name in (LAST_NAME, BEST_NAME):
            if (checkpoint_dir / name).is_file():
                tracker.log_artifact(checkpoint_dir / name, "checkpoints")
    if job.tracking.register_model and isinstance(tracker, MlflowTracker):
        result.model_uri = log_model(
            tracker,
            model_dir,
            crop_zyx=job.grid.crop_zyx,
            labels=spec.labels,
            example_zyx=job.model.vision.patch_zyx,
        )
        if result.model_uri:
            result.registered_model = job.tracking.registered_model
            result.model_version = register_model(
                tracker.tracking_uri,
                result.model_uri,
                job.tracking.registered_model,
                tags={"run_id": tracker.run_id or "", "loss": job.train.loss},
            )
            tracker.set_tags({"registered_model": result.registered_model, "model_version": result.model_version})
