"""The train and evaluate stages' entries: the job's shards -> the training loop / the evaluation.

``training/trainer/`` holds the shard reader and the loop, ``training/evaluation/`` the zero-shot
evaluation (it imports no trainer); the stage entries read the shards for both, so they live above them:

* :func:`run_train` (:class:`training.trainer.job.TrainJob`) -> :func:`training.trainer.loop.train`;
* :func:`run_evaluate` (:class:`training.evaluation.job.EvaluateJob`) -> the val / test loaders and the
  evaluation-data hash -> :func:`training.evaluation.evaluate.run_evaluation`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from training.evaluation.job import EvaluateJob
from training.trainer.job import TrainJob
from training.trainer.loop import TrainResult, train

log = logging.getLogger(__name__)


class TrainDataError(ValueError):
    """The train shards cannot be read, or hold fewer studies than one batch; the message names the folder."""


def run_train(job: TrainJob) -> TrainResult:
    """Read ``<job.shards_dir>/train`` (its anatomy set and names from the shard metadata), train,
    return the summary. Unreadable or too few shards raise :class:`TrainDataError`; a non-finite loss
    raises :class:`training.trainer.loop.NonFiniteLossError`."""
    from training.trainer.data import ShardBatches, ShardDataset, read_shard_metadata

    try:
        metadata = read_shard_metadata(job.shards_dir)
        dataset = ShardDataset.from_dir(
            job.shards_dir,
            "train",
            crop_zyx=job.grid.crop_zyx,
            hu_window=job.grid.hu_window,
            mode="train",
            seed=job.train.seed,
            flip_prob=job.grid.flip_prob,
            shuffle_buffer=job.shuffle_buffer,
        )
    except (FileNotFoundError, RuntimeError, ValueError) as error:
        raise TrainDataError(str(error)) from error
    anatomy_names = tuple(metadata.get("anatomy_names") or dataset.anatomy_names)
    source = ShardBatches(dataset, job.train.batch_size, num_workers=job.train.num_workers)
    if len(source) == 0:
        raise TrainDataError(
            f"{job.shards_dir}/train has {dataset.num_rows} studies, fewer than one batch of "
            f"train.batch_size={job.train.batch_size}: lower train.batch_size in params.yaml, add studies, "
            "or give training more of them (split.train)"
        )
    log.info(
        "training on %d studies (%d batches/epoch), anatomies %s",
        dataset.num_rows,
        len(source),
        ", ".join(anatomy_names),
    )
    return train(
        job,
        source,
        anatomy_names,
        corpus_texts=source.patient_texts(),  # the vocabulary counts distinct patients
        zero_shot_anatomy_set=metadata.get("anatomy_set") or job.anatomy_set,
    )


# ---------------------------------------------------------------------------------------- evaluate
class EvaluateDataError(ValueError):
    """The job's shards have no test split; the message names the folder."""


def has_val_split(job: EvaluateJob) -> bool:
    """Whether the shards hold a val split (without one, thresholds are chosen on test: optimistic)."""
    from training.trainer.data import shard_paths

    return bool(shard_paths(job.shards_dir, "val"))


def evaluation_batches(job: EvaluateJob, split: str) -> Iterable[dict[str, Any]]:
    """The evaluation loader of one split: the shard reader's deterministic eval crops
    (``evaluate.eval_mode``), ``evaluate.batch_size`` crops per batch."""
    from torch.utils.data import DataLoader

    from training.trainer.batch import collate_batch
    from training.trainer.data import ShardDataset

    dataset = ShardDataset.from_dir(
        job.shards_dir,
        split,
        crop_zyx=job.grid.crop_zyx,
        hu_window=job.grid.hu_window,
        mode="eval",
        eval_mode=job.evaluate.eval_mode,
    )
    # a plain DataLoader: ShardBatches caps batches at one sample per row, and eval_mode="anatomy"
    # yields one crop per anatomy present (several per study)
    return DataLoader(
        dataset,
        batch_size=job.evaluate.batch_size,
        collate_fn=collate_batch,
        num_workers=job.num_workers,
    )


def evaluation_data_hash(job: EvaluateJob) -> str:
    """The hash the promotion gate compares models on: the val + test shard files and the protocol
    (eval crops, HU window, threshold method, prompts file)."""
    from core.anatomy_sets import ANATOMY_SETS_FILE, PROMPT_SETS_FILE
    from core.io import sha256_file
    from training.evaluation.evaluate import data_hash
    from training.trainer.data import shard_paths

    files = shard_paths(job.shards_dir, "val") + shard_paths(job.shards_dir, "test")
    protocol = {
        "eval_mode": job.evaluate.eval_mode,
        "crop_zyx": list(job.grid.crop_zyx),
        "hu_window": list(job.grid.hu_window),
        "threshold_method": job.evaluate.threshold_method,
        "prompts": sha256_file(job.prompts_path if job.prompts_path is not None else ANATOMY_SETS_FILE),
        # the default prompts are a set of prompt_sets.yaml; the negative rule changes every score
        "prompt_sets": sha256_file(PROMPT_SETS_FILE),
        "negative_rule": job.evaluate.negative_rule,
    }
    return data_hash(files, protocol)


def run_evaluate(job: EvaluateJob) -> dict[str, Any]:
    """Evaluate ``job.model_ref`` on the job's val / test shards (test twice when there is no val
    split: thresholds then come from test); returns the report (``eval_report.json``). No test split
    raises :class:`EvaluateDataError`."""
    from training.evaluation.evaluate import run_evaluation
    from training.trainer.data import shard_paths

    if not shard_paths(job.shards_dir, "test"):
        raise EvaluateDataError(f"{job.shards_dir}/test: no shard files")
    threshold_split = "val" if has_val_split(job) else "test"
    if threshold_split == "test":
        log.warning("%s: no val split; thresholds are chosen on test (optimistic)", job.shards_dir)
    return run_evaluation(
        job,
        lambda: evaluation_batches(job, threshold_split),
        lambda: evaluation_batches(job, "test"),
        eval_data_hash=evaluation_data_hash(job),
    )
