"""Training data reader over the Parquet shards (written by ``fvlm shard``).

:class:`ShardDataset` is a PyTorch ``IterableDataset``. Work is split by Parquet *row group* (a few
studies each) across DDP ranks x DataLoader workers: every epoch the row groups of all files are put in
one order by a ``(seed, epoch)`` generator, identical on every rank and worker, and global worker
``g = rank * num_workers + worker_id`` takes every ``world_size * num_workers``-th of them. Rows are
decoded (zstd -> int16 / uint8 arrays) inside the workers, shuffled through a buffer seeded by
``(seed, epoch, g)`` and transformed (:mod:`training.trainer.transforms`). Call :meth:`ShardDataset.set_epoch`
before each epoch (do not use ``persistent_workers``: a worker keeps the epoch it was started with).

Modes: ``"train"`` random crop + flips, one sample per study; ``"eval"`` deterministic, no flips,
no shuffle, with ``eval_mode`` ``"center"`` (crop centred on the union of the anatomies), ``"anatomy"``
(one sample per anatomy present, crop centred on that anatomy; ``sample["crop_anatomy"] = k``) or
``"full"`` (no crop: the whole stored volume, batch size 1 unless volumes share a shape).

Batches are made by :func:`training.trainer.batch.collate_batch` and follow the one batch contract
(:class:`training.trainer.batch.Batch`: volume float32 (B, 1, Z, Y, X) in [0, 1]; mask uint8
(B, Z, Y, X) with 0 background, k+1 anatomy k; anatomy_intact / anatomy_abnormal bool (B, K);
anatomy_text list[list[str]]; labels int8 (B, L), -1 unknown; report_text, study_id lists; crop_anatomy
in eval ``"anatomy"`` mode). Axis order is (z, y, x) throughout.

:class:`ShardBatches` wraps it as the trainer's ``BatchSource`` (``iter_epoch(epoch)``), with equal
batch counts on every DDP rank.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from core.layout import SHARD_PART_GLOB, shard_parts
from preprocessing.shard_schema import decode_array
from training.trainer.batch import Batch, collate_batch
from training.trainer.transforms import (
    anatomy_intact,
    centred_starts,
    cut_faces,
    extract_crop,
    label_centre,
    random_flips,
    random_starts,
    window_hu,
)

PART_GLOB = SHARD_PART_GLOB
METADATA_KEY = b"fvlm"
ROW_COLUMNS: tuple[str, ...] = (
    "study_id",
    "volume",
    "shape",
    "mask",
    "anatomy_text",
    "anatomy_abnormal",
    "labels",
    "report_text",
)


class ShardReadError(RuntimeError):
    """A shard file that cannot be read; the message starts with the file's path."""


def shard_paths(shards_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """Complete shard files of a split (hidden temp files of an unfinished write are never listed)."""
    return shard_parts(shards_dir, split)


def _open(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(str(path), memory_map=True)  # mmap: ~2x faster row-group reads than buffered
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError for a broken footer
        raise ShardReadError(f"{path}: not a readable Parquet shard: {error}") from None


def _file_metadata(path: Path, parquet_file: Any | None = None) -> dict[str, Any]:
    import json

    handle = parquet_file if parquet_file is not None else _open(path)
    raw = handle.schema_arrow.metadata or {}
    if METADATA_KEY not in raw:
        raise ShardReadError(f"{path}: not an fvlm shard (no 'fvlm' schema metadata)")
    return json.loads(raw[METADATA_KEY])


def read_shard_metadata(shards: str | os.PathLike[str]) -> dict[str, Any]:
    """Schema metadata (anatomy_names, label_names, grid, versions) of a shard file or a shards dir."""
    path = Path(shards)
    if path.is_file():
        return _file_metadata(path)
    files = [f for split in ("train", "val", "test") for f in shard_paths(path, split)] or sorted(path.glob(PART_GLOB))
    if not files:
        raise FileNotFoundError(f"{path}: no shard files (expected {{train,val,test}}/{PART_GLOB})")
    return _file_metadata(files[0])


@dataclass(frozen=True)
class RowGroupUnit:
    file_index: int
    row_group: int
    num_rows: int


class ShardDataset(IterableDataset):
    """Iterable over the studies of some shard files; see the module docstring."""

    def __init__(
        self,
        files: Sequence[str | os.PathLike[str]],
        *,
        crop_zyx: Sequence[int],
        hu_window: Sequence[float] = (-1150.0, 350.0),
        mode: Literal["train", "eval"] = "train",
        eval_mode: Literal["center", "anatomy", "full"] = "center",
        flip_prob: float = 0.2,
        shuffle: bool | None = None,
        shuffle_buffer: int = 16,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if eval_mode not in ("center", "anatomy", "full"):
            raise ValueError(f"eval_mode must be 'center', 'anatomy' or 'full', got {eval_mode!r}")
        self.files = [Path(f) for f in files]
        self.crop_zyx = tuple(int(c) for c in crop_zyx)
        self.hu_window = (float(hu_window[0]), float(hu_window[1]))
        self.mode = mode
        self.eval_mode = eval_mode
        self.flip_prob = float(flip_prob) if mode == "train" else 0.0
        self.shuffle = (mode == "train") if shuffle is None else bool(shuffle)
        self.shuffle_buffer = max(int(shuffle_buffer), 1)
        self.seed = int(seed)
        self._rank = rank
        self._world_size = world_size
        self.epoch = 0
        self.units: list[RowGroupUnit] = []
        self.metadata: dict[str, Any] = {}
        for file_index, path in enumerate(self.files):
            handle = _open(path)
            metadata = _file_metadata(path, handle)
            if not self.metadata:
                self.metadata = metadata
            elif metadata.get("anatomy_names") != self.metadata.get("anatomy_names") or metadata.get(
                "label_names"
            ) != self.metadata.get("label_names"):
                raise ShardReadError(f"{path}: anatomy / label names differ from {self.files[0]}")
            for group in range(handle.num_row_groups):
                rows = handle.metadata.row_group(group).num_rows
                if rows:
                    self.units.append(RowGroupUnit(file_index, group, rows))
        self.anatomy_names: tuple[str, ...] = tuple(self.metadata.get("anatomy_names", ()))
        self.label_names: tuple[str, ...] = tuple(self.metadata.get("label_names", ()))

    @classmethod
    def from_dir(cls, shards_dir: str | os.PathLike[str], split: str, **kwargs: Any) -> ShardDataset:
        files = shard_paths(shards_dir, split)
        if not files:
            raise FileNotFoundError(f"{Path(shards_dir) / split}: no shard files ({PART_GLOB})")
        return cls(files, **kwargs)

    # ------------------------------------------------------------------ work split
    @property
    def num_rows(self) -> int:
        return sum(unit.num_rows for unit in self.units)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rank_world(self) -> tuple[int, int]:
        if self._rank is not None and self._world_size is not None:
            return self._rank, self._world_size
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def epoch_units(self, epoch: int) -> list[RowGroupUnit]:
        """All row groups in this epoch's order (the same on every rank and worker)."""
        if not self.shuffle:
            return list(self.units)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.units))
        return [self.units[i] for i in order]

    def assigned_units(self, epoch: int, global_worker: int, total_workers: int) -> list[RowGroupUnit]:
        return self.epoch_units(epoch)[global_worker::total_workers]

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker_id, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world_size = self.rank_world()
        global_worker = rank * num_workers + worker_id
        total_workers = world_size * num_workers
        units = self.assigned_units(self.epoch, global_worker, total_workers)
        rng = np.random.default_rng([self.seed, self.epoch, global_worker, 1])
        stream = self._samples(units, rng)
        if self.shuffle:
            stream = _shuffled(
                stream, self.shuffle_buffer, np.random.default_rng([self.seed, self.epoch, global_worker, 2])
            )
        return stream

    def _samples(self, units: Sequence[RowGroupUnit], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        handles: dict[int, Any] = {}
        for unit in units:
            for row in self.read_unit(unit, handles):
                yield from self.transform(row, rng)

    def read_unit(self, unit: RowGroupUnit, handles: dict[int, Any] | None = None) -> list[dict[str, Any]]:
        """Decode the rows of one row group: arrays (z, y, x) plus the text / label fields."""
        path = self.files[unit.file_index]
        handles = {} if handles is None else handles
        try:
            if unit.file_index not in handles:
                handles[unit.file_index] = _open(path)
            table = handles[unit.file_index].read_row_group(unit.row_group, columns=list(ROW_COLUMNS))
            rows = []
            volumes, masks = table.column("volume"), table.column("mask")
            shapes = table.column("shape").to_pylist()
            study_ids = table.column("study_id").to_pylist()
            texts = table.column("anatomy_text").to_pylist()
            abnormal = table.column("anatomy_abnormal").to_pylist()
            labels = table.column("labels").to_pylist()
            reports = table.column("report_text").to_pylist()
            for i in range(table.num_rows):
                shape = shapes[i]
                rows.append(
                    {
                        "study_id": study_ids[i],
                        "hu_volume": decode_array(volumes[i].as_buffer(), shape, "int16"),
                        "anatomy_mask": decode_array(masks[i].as_buffer(), shape, "uint8"),
                        "anatomy_text": [t or "" for t in texts[i]],
                        "anatomy_abnormal": np.asarray(abnormal[i], dtype=bool),
                        "labels": np.asarray(labels[i], dtype=np.int8),
                        "report_text": reports[i] or "",
                    }
                )
        except ShardReadError:
            raise
        except Exception as error:
            raise ShardReadError(
                f"{path}: row group {unit.row_group} unreadable: {type(error).__name__}: {error}"
            ) from None
        return rows

    def transform(self, row: dict[str, Any], rng: np.random.Generator) -> Iterator[dict[str, Any]]:
        """Crop / pad, window, flip and intact flags for one decoded row (eval 'anatomy': K samples)."""
        hu_volume, anatomy_mask = row["hu_volume"], row["anatomy_mask"]
        n_anatomies = len(row["anatomy_abnormal"])
        if self.mode == "train":
            yield self._sample(row, random_starts(hu_volume.shape, self.crop_zyx, rng), rng, n_anatomies)
        elif self.eval_mode == "full":
            volume = window_hu(hu_volume, self.hu_window)
            full_box = tuple((0, n) for n in hu_volume.shape)
            intact = anatomy_intact(anatomy_mask, full_box, n_anatomies, (False,) * 6)  # type: ignore[arg-type]
            yield self._pack(row, volume, np.ascontiguousarray(anatomy_mask), intact)
        elif self.eval_mode == "center":
            centre = label_centre(anatomy_mask) or tuple((n - 1) / 2.0 for n in hu_volume.shape)
            yield self._sample(row, centred_starts(hu_volume.shape, self.crop_zyx, centre), rng, n_anatomies)
        else:  # anatomy-centred crops, one per present anatomy
            for k in range(n_anatomies):
                anatomy_centre = label_centre(anatomy_mask, k + 1)
                if anatomy_centre is None:
                    continue
                starts = centred_starts(hu_volume.shape, self.crop_zyx, anatomy_centre)
                sample = self._sample(row, starts, rng, n_anatomies)
                sample["crop_anatomy"] = k
                yield sample

    def _sample(
        self, row: dict[str, Any], starts: Sequence[int], rng: np.random.Generator, n_anatomies: int
    ) -> dict[str, Any]:
        volume, mask, valid_box = extract_crop(
            row["hu_volume"], row["anatomy_mask"], starts, self.crop_zyx, self.hu_window
        )
        intact = anatomy_intact(mask, valid_box, n_anatomies, cut_faces(row["hu_volume"].shape, starts, self.crop_zyx))
        if self.flip_prob > 0:
            volume, mask = random_flips(volume, mask, rng, self.flip_prob)
        return self._pack(row, volume, mask, intact)

    @staticmethod
    def _pack(row: dict[str, Any], volume: np.ndarray, mask: np.ndarray, intact: np.ndarray) -> dict[str, Any]:
        return {
            "volume": volume[None],
            "mask": mask,
            "anatomy_intact": intact,
            "anatomy_abnormal": row["anatomy_abnormal"],
            "anatomy_text": row["anatomy_text"],
            "labels": row["labels"],
            "report_text": row["report_text"],
            "study_id": row["study_id"],
        }


def _shuffled(stream: Iterator[dict[str, Any]], size: int, rng: np.random.Generator) -> Iterator[dict[str, Any]]:
    buffer: list[dict[str, Any]] = []
    for sample in stream:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = int(rng.integers(len(buffer)))
        yield buffer[index]
        buffer[index] = sample
    for index in rng.permutation(len(buffer)):
        yield buffer[int(index)]


class ShardBatches:
    """The trainer's ``BatchSource``: contract batches per epoch from a :class:`ShardDataset`.

    With ``equal_ranks`` (default) every DDP rank yields the same number of batches per epoch (the
    minimum over ranks, computed from the row-group sizes), so collective ops never wait on a rank
    that ran out of data.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        *,
        num_workers: int = 0,
        drop_last: bool = True,
        equal_ranks: bool = True,
        pin_memory: bool = False,
        multiprocessing_context: Any = None,
    ) -> None:
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.drop_last = drop_last
        self.equal_ranks = equal_ranks
        self.pin_memory = pin_memory
        # None: torch's default (fork on Linux). Use "forkserver" / "spawn" when the process runs threads
        # that must not be forked (e.g. a Prefect client's event-loop threads in the same process).
        self.multiprocessing_context = multiprocessing_context if self.num_workers > 0 else None

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def batches_per_rank(self, epoch: int) -> list[int]:
        """Batches each rank's DataLoader yields in ``epoch`` (train mode: one sample per row)."""
        _, world_size = self.dataset.rank_world()
        workers = max(self.num_workers, 1)
        counts = []
        for rank in range(world_size):
            total = 0
            for worker in range(workers):
                units = self.dataset.assigned_units(epoch, rank * workers + worker, world_size * workers)
                rows = sum(unit.num_rows for unit in units)
                total += rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)
            counts.append(total)
        return counts

    def __len__(self) -> int:
        counts = self.batches_per_rank(self.dataset.epoch)
        rank, _ = self.dataset.rank_world()
        return min(counts) if self.equal_ranks else counts[rank]

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        self.dataset.set_epoch(epoch)
        counts = self.batches_per_rank(epoch)
        rank, _ = self.dataset.rank_world()
        limit = min(counts) if self.equal_ranks else counts[rank]
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            drop_last=self.drop_last,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            multiprocessing_context=self.multiprocessing_context,
        )
        for index, batch in enumerate(loader):
            if index >= limit:
                break
            yield batch

    def texts(self) -> list[str]:
        """Report and anatomy texts of all rows (e.g. a tokenizer corpus); reads no volumes."""
        out: list[str] = []
        for path in self.dataset.files:
            table = _open(path).read(columns=["report_text", "anatomy_text"])
            for report, anatomy_texts in zip(
                table.column("report_text").to_pylist(), table.column("anatomy_text").to_pylist(), strict=False
            ):
                out.append(report or "")
                out.extend(text for text in anatomy_texts if text)
        return out

    def patient_texts(self) -> list[tuple[str, str]]:
        """:meth:`texts` as ``(patient_id, text)`` pairs: the tokenizer's vocabulary counts distinct patients."""
        out: list[tuple[str, str]] = []
        for path in self.dataset.files:
            table = _open(path).read(columns=["patient_id", "report_text", "anatomy_text"])
            for patient, report, anatomy_texts in zip(
                table.column("patient_id").to_pylist(),
                table.column("report_text").to_pylist(),
                table.column("anatomy_text").to_pylist(),
                strict=False,
            ):
                out.append((patient or "", report or ""))
                out.extend((patient or "", text) for text in anatomy_texts if text)
        return out
