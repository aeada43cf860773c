"""Shard reader: crops keep image and mask aligned, intact flags, work split, shuffling, errors."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from preprocessing.shard_schema import build_metadata, encode_array, shard_schema
from training.trainer.batch import collate_batch
from training.trainer.data import (
    ShardBatches,
    ShardDataset,
    ShardReadError,
    read_shard_metadata,
    shard_paths,
)
from training.trainer.transforms import anatomy_intact, centred_starts, cut_faces, extract_crop, window_hu

ANATOMIES = ("lung", "heart", "esophagus", "aorta")
LABELS = tuple(f"label_{i}" for i in range(18))
WIDE_WINDOW = (-32768.0, 32767.0)
# DataLoader workers fork from a forkserver (a clean process that preloads torch and this module once):
# the pytest process may run threads of earlier tests (the Prefect harness) that plain fork() copies
# into the workers, which then occasionally die at exit.
WORKER_CONTEXT = multiprocessing.get_context("forkserver")
WORKER_CONTEXT.set_forkserver_preload(["torch", "pyarrow.parquet", "zstandard", "training.trainer.data", __name__])


def as_list(samples):
    return samples


def coordinate_volume(shape: tuple[int, int, int]) -> np.ndarray:
    """HU that encodes the voxel position: z * 1000 + y * 30 + x - 15000 (unique for small shapes)."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (z * 1000 + y * 30 + x - 15000).astype(np.int16)


def boxes_mask(shape: tuple[int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:6, 3:9, 2:7] = 1
    mask[5:8, 10:14, 9:15] = 2
    mask[1:9, 1:3, 12:14] = 3
    mask[8:10, 6:8, 3:5] = 4
    return mask


def make_row(study_id: str, volume: np.ndarray, mask: np.ndarray, patient: str = "pa_0") -> dict:
    index = int(study_id.split("_")[-1]) if study_id.split("_")[-1].isdigit() else 0
    return {
        "study_id": study_id,
        "patient_id": patient,
        "split": "train",
        "volume": encode_array(volume, 3),
        "shape": list(volume.shape),
        "spacing_mm": [3.0, 1.0, 1.0],
        "affine": np.eye(4).reshape(16).tolist(),
        "mask": encode_array(mask, 3),
        "anatomy_text": [f"{a} text {study_id}" for a in ANATOMIES],
        "anatomy_abnormal": [bool((index + k) % 2) for k in range(4)],
        "labels": [(index + j) % 3 - 1 for j in range(18)],
        "report_text": f"report {study_id}",
        "prep_version": "test",
        "source_hash": "x",
    }


def write_shard(path: Path, rows: list[dict], rows_per_group: int = 2) -> Path:
    metadata = build_metadata(
        anatomy_set="ctrate4",
        anatomy_names=ANATOMIES,
        label_names=LABELS,
        grid={"spacing_zyx_mm": [3.0, 1.0, 1.0]},
        zstd_level=3,
    )
    schema = shard_schema(len(ANATOMIES), len(LABELS), metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=rows_per_group)
    return path


def small_shards(
    root: Path, n_rows: int = 14, rows_per_group: int = 2, files: int = 3, shape: tuple[int, int, int] = (10, 16, 16)
) -> list[Path]:
    rows = [make_row(f"st_{i:03d}", coordinate_volume(shape), boxes_mask(shape)) for i in range(n_rows)]
    per_file = -(-n_rows // files)
    return [
        write_shard(root / "train" / f"part-{f:05d}.parquet", rows[f * per_file : (f + 1) * per_file], rows_per_group)
        for f in range(files)
        if rows[f * per_file : (f + 1) * per_file]
    ]


def source_positions(volume_crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert the coordinate encoding of a windowed crop: (valid voxel flags, (z, y, x) source indices)."""
    low, high = WIDE_WINDOW
    hu = np.rint(volume_crop * (high - low) + low).astype(np.int64) + 15000
    valid = volume_crop > 0
    return valid, np.stack([hu // 1000, (hu % 1000) // 30, (hu % 1000) % 30])


def test_transforms_window_and_padding() -> None:
    hu = np.full((4, 4, 4), -2000, dtype=np.int16)
    hu[1, 1, 1] = 350
    hu[2, 2, 2] = -400
    windowed = window_hu(hu, (-1150, 350))
    assert windowed.dtype == np.float32 and windowed.min() == 0.0 and windowed.max() == 1.0
    assert windowed[2, 2, 2] == pytest.approx(0.5)
    mask = np.ones((4, 4, 4), dtype=np.uint8)
    volume_crop, mask_crop, box = extract_crop(
        hu, mask, centred_starts(hu.shape, (8, 6, 4), (1.5, 1.5, 1.5)), (8, 6, 4), (-1150, 350)
    )
    assert volume_crop.shape == (8, 6, 4) and box == ((2, 6), (1, 5), (0, 4))
    assert mask_crop.sum() == 64 and volume_crop[:2].max() == 0.0 and mask_crop[:2].max() == 0


def test_intact_flags_touching_face_and_absent() -> None:
    mask = np.zeros((10, 10, 10), dtype=np.uint8)
    mask[3:6, 3:6, 3:6] = 1  # interior
    mask[0:4, 2:4, 2:4] = 2  # touches the z = 0 face
    mask[4:6, 4:6, 7:10] = 4  # touches the x = last face
    full = ((0, 10), (0, 10), (0, 10))
    assert anatomy_intact(mask, full, 4).tolist() == [True, False, False, False]
    # padded crop: faces of the valid region count, not of the padding
    padded = np.zeros((14, 10, 10), dtype=np.uint8)
    padded[2:12] = mask
    assert anatomy_intact(padded, ((2, 12), (0, 10), (0, 10)), 4).tolist() == [True, False, False, False]
    # a crop cutting anatomy 1 -> not intact
    assert anatomy_intact(mask[4:], ((0, 6), (0, 10), (0, 10)), 4)[0] == np.False_
    # only faces the crop cut count: the edge of the scan (z = 0 for anatomy 2, x = last for anatomy 4)
    # does not make an anatomy incomplete, a crop face inside the volume does
    assert anatomy_intact(mask, full, 4, (False,) * 6).tolist() == [True, True, False, True]
    assert anatomy_intact(mask, full, 4, (True,) + (False,) * 5).tolist() == [True, False, False, True]
    assert (
        anatomy_intact(mask[4:], ((0, 6), (0, 10), (0, 10)), 4, cut_faces((10, 10, 10), (4, 0, 0), (6, 10, 10)))[0]
        == np.False_
    )
    assert cut_faces((10, 10, 10), (4, -2, 0), (6, 14, 8)) == (True, False, False, False, False, True)


def test_train_crops_keep_mask_and_image_aligned(tmp_path: Path) -> None:
    shape = (10, 16, 16)
    source_mask = boxes_mask(shape)
    files = small_shards(tmp_path, n_rows=6, shape=shape)
    crops = [(6, 8, 8), (12, 20, 10)]  # smaller and partly larger than the volume (padding)
    for crop in crops:
        dataset = ShardDataset(files, crop_zyx=crop, hu_window=WIDE_WINDOW, flip_prob=0.5, seed=3)
        flipped_some = False
        for epoch in range(3):
            dataset.set_epoch(epoch)
            for sample in dataset:
                volume, mask = sample["volume"][0], sample["mask"]
                assert volume.shape == crop and mask.shape == crop
                valid, (zs, ys, xs) = source_positions(volume)
                assert np.array_equal(mask[valid], source_mask[zs[valid], ys[valid], xs[valid]])
                assert not mask[~valid].any()
                if valid.any():
                    flipped_some |= bool(np.any(np.diff(zs[:, 0, 0][valid[:, 0, 0]]) < 0))
                # intact flags agree with a direct computation on the source positions of the crop: the
                # anatomy lies on no face of the valid region where the crop cut the volume (a face on
                # the volume's own first / last slice is the edge of the scan, not a cut)
                source = (zs, ys, xs)
                for k in range(1, 5):
                    region = valid
                    present = bool((mask == k).any())
                    touches = False
                    for axis in range(3):
                        covered = np.flatnonzero(region.any(axis=tuple(a for a in range(3) if a != axis)))
                        if covered.size:
                            for edge in (covered[0], covered[-1]):
                                on_edge = np.take(mask, edge, axis=axis) == k
                                src = int(np.take(source[axis], edge, axis=axis)[np.take(valid, edge, axis=axis)][0])
                                low, high = int(source[axis][valid].min()), int(source[axis][valid].max())
                                cut = (src == low and src > 0) or (src == high and src < shape[axis] - 1)
                                touches |= bool(on_edge.any()) and cut
                    assert sample["anatomy_intact"][k - 1] == (present and not touches)
        assert flipped_some, "flip_prob 0.5 over many samples should flip z at least once"


def test_eval_modes_are_deterministic(tmp_path: Path) -> None:
    shape = (10, 16, 16)
    source_mask = boxes_mask(shape)
    files = small_shards(tmp_path, n_rows=3, shape=shape)
    centre = ShardDataset(files, crop_zyx=(8, 12, 12), hu_window=WIDE_WINDOW, mode="eval", eval_mode="center")
    first, second = list(centre), list(centre)
    assert [s["study_id"] for s in first] == ["st_000", "st_001", "st_002"]
    assert all(np.array_equal(a["volume"], b["volume"]) for a, b in zip(first, second, strict=False))
    valid, (zs, ys, xs) = source_positions(first[0]["volume"][0])
    assert np.all(np.diff(zs[:, 0, 0]) == 1)  # no flips in eval
    assert np.array_equal(first[0]["mask"][valid], source_mask[zs[valid], ys[valid], xs[valid]])

    anatomy = list(ShardDataset(files, crop_zyx=(6, 8, 8), hu_window=WIDE_WINDOW, mode="eval", eval_mode="anatomy"))
    assert [s["crop_anatomy"] for s in anatomy[:4]] == [0, 1, 2, 3]
    for sample in anatomy:
        k = sample["crop_anatomy"] + 1
        valid, (zs, ys, xs) = source_positions(sample["volume"][0])
        coords = np.argwhere(source_mask == k)
        centre_src = (coords.min(0) + coords.max(0)) / 2.0
        first_voxel = np.array([zs[valid].min(), ys[valid].min(), xs[valid].min()])
        # centred on that anatomy (start = round(centre) - crop // 2), shifted only where the volume ends
        wanted = np.floor(centre_src + 0.5).astype(int) - np.array([6, 8, 8]) // 2
        assert np.array_equal(first_voxel, np.clip(wanted, 0, np.array(shape) - (6, 8, 8)))
        if k == 2:
            assert sample["anatomy_intact"][1]  # fits inside its centred crop
        if k == 4:
            # lies on the scan's last slice: the crop shows all of it (the scan edge is not a cut)
            assert sample["anatomy_intact"][3]
    batch = collate_batch(anatomy[:4])
    assert batch["crop_anatomy"].tolist() == [0, 1, 2, 3]

    full = list(ShardDataset(files, crop_zyx=(8, 8, 8), mode="eval", eval_mode="full"))
    assert full[0]["volume"].shape == (1, *shape) and full[0]["mask"].shape == shape


def collect_ids(files: list[Path], epoch: int, world_size: int, num_workers: int, **kwargs) -> list[list[str]]:
    per_rank = []
    for rank in range(world_size):
        dataset = ShardDataset(files, crop_zyx=(4, 4, 4), rank=rank, world_size=world_size, seed=7, **kwargs)
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=as_list,
            multiprocessing_context=WORKER_CONTEXT,
        )
        per_rank.append([sample["study_id"] for sample in loader])
    return per_rank


def test_every_row_exactly_once_per_epoch_across_ranks_and_workers(tmp_path: Path) -> None:
    files = small_shards(tmp_path, n_rows=23, rows_per_group=2, files=3, shape=(5, 6, 6))
    expected = Counter(f"st_{i:03d}" for i in range(23))
    orders = []
    for epoch in (0, 1):
        per_rank = collect_ids(files, epoch, world_size=2, num_workers=2, shuffle_buffer=5)
        assert Counter(sum(per_rank, [])) == expected
        assert set(per_rank[0]).isdisjoint(per_rank[1])
        orders.append(sum(per_rank, []))
    assert orders[0] != orders[1], "a new epoch reshuffles"
    assert sum(collect_ids(files, 0, world_size=2, num_workers=2, shuffle_buffer=5), []) == orders[0]
    # eval: no shuffling, still exactly once
    assert Counter(sum(collect_ids(files, 0, world_size=3, num_workers=1, mode="eval"), [])) == expected


def test_shard_batches_equal_counts_on_every_rank(tmp_path: Path) -> None:
    files = small_shards(tmp_path, n_rows=11, rows_per_group=1, files=1, shape=(5, 6, 6))
    counts = []
    for rank in range(2):
        dataset = ShardDataset(files, crop_zyx=(4, 4, 4), rank=rank, world_size=2)
        source = ShardBatches(dataset, batch_size=2, num_workers=0)
        assert source.batches_per_rank(0) == [3, 2]
        batches = list(source.iter_epoch(0))
        counts.append(len(batches))
        assert len(source) == 2
    assert counts == [2, 2]
    texts = ShardBatches(ShardDataset(files, crop_zyx=(4, 4, 4)), 2).texts()
    assert "report st_000" in texts and "lung text st_000" in texts


def test_batch_contract_from_real_writer(tmp_path: Path, make_cohort) -> None:
    from core.config import GridConfig, ShardConfig, SplitConfig
    from preprocessing.shards import ShardJob, run_shard

    cohort = make_cohort(tmp_path / "in", 6)
    run_shard(
        ShardJob(
            cohort.converted,
            cohort.segmented,
            cohort.reports,
            tmp_path / "shards",
            anatomy_set="ctrate4",
            grid=GridConfig(spacing_zyx_mm=(8.0, 4.0, 4.0), roi_margin_slices=1, roi_margin_voxels=4),
            split=SplitConfig(train=1.0, val=0.0, test=0.0),
            shard=ShardConfig(rows_per_group=2),
        )
    )
    metadata = read_shard_metadata(tmp_path / "shards")
    assert metadata["anatomy_names"] == list(ANATOMIES) and len(metadata["label_names"]) == 18
    dataset = ShardDataset.from_dir(tmp_path / "shards", "train", crop_zyx=(32, 64, 96))
    assert dataset.anatomy_names == ANATOMIES and dataset.num_rows == 6
    (batch, *_) = list(
        ShardBatches(dataset, batch_size=3, num_workers=2, multiprocessing_context=WORKER_CONTEXT).iter_epoch(0)
    )
    assert batch["volume"].dtype == torch.float32 and batch["volume"].shape == (3, 1, 32, 64, 96)
    assert 0.0 <= float(batch["volume"].min()) and float(batch["volume"].max()) <= 1.0
    assert batch["mask"].shape == (3, 32, 64, 96) and int(batch["mask"].max()) <= 4
    assert batch["anatomy_intact"].dtype == torch.bool and batch["anatomy_intact"].shape == (3, 4)
    assert batch["anatomy_intact"].all()  # small ROI volumes inside a big crop: every anatomy whole
    assert batch["anatomy_abnormal"].dtype == torch.bool and batch["anatomy_abnormal"].shape == (3, 4)
    assert batch["labels"].dtype == torch.int8 and batch["labels"].shape == (3, 18)
    assert len(batch["anatomy_text"]) == 3 and all(len(t) == 4 for t in batch["anatomy_text"])
    assert all(isinstance(s, str) for s in batch["report_text"] + batch["study_id"])


def test_corrupt_shard_file_error_names_the_file(tmp_path: Path) -> None:
    files = small_shards(tmp_path, n_rows=4, files=1)
    broken = tmp_path / "train" / "part-00001.parquet"
    broken.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(ShardReadError, match="part-00001.parquet"):
        ShardDataset(shard_paths(tmp_path, "train"), crop_zyx=(4, 4, 4))
    # a damaged blob inside a valid file: reported with the file and row group, also from a worker
    row = make_row("st_bad", coordinate_volume((10, 16, 16)), boxes_mask((10, 16, 16)))
    row["volume"] = row["volume"][: len(row["volume"]) // 2]
    damaged = write_shard(tmp_path / "other" / "part-00000.parquet", [row])
    dataset = ShardDataset([files[0], damaged], crop_zyx=(4, 4, 4), mode="eval")
    with pytest.raises(ShardReadError, match=r"other/part-00000.parquet: row group 0"):
        list(dataset)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=1, collate_fn=as_list, multiprocessing_context=WORKER_CONTEXT
    )
    with pytest.raises(Exception, match="part-00000.parquet"):
        list(loader)


def test_shards_readable_with_plain_pyarrow(tmp_path: Path) -> None:
    files = small_shards(tmp_path, n_rows=4, files=1)
    table = pq.read_table(files[0])
    assert table.num_rows == 4 and table.schema.metadata[b"fvlm"]
    assert read_shard_metadata(files[0])["anatomy_names"] == list(ANATOMIES)
    with pytest.raises(FileNotFoundError):
        read_shard_metadata(tmp_path / "empty")
