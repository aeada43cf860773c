"""Shard reader throughput vs raw zstd decompression of the same bytes, in the same run.

Synthetic CT-like volumes of real post-ROI size (default 130 x 400 x 400 int16 at 3 x 1 x 1 mm: body
ellipse, lungs, noise; uint8 anatomy mask) are written as shards with the production writer settings
(zstd level from params.yaml). Then, all from the page cache:

1. raw:     ``zstandard`` one-shot ``decompress()`` of the volume + mask blobs already in memory (one
            thread), and the reader's own decode routine (zstd straight into a numpy array) on them;
2. reader:  :meth:`training.trainer.data.ShardDataset.read_unit` (mmap Parquet row-group read + zstd into
            numpy), one process = one DataLoader worker's decode path; ratio reader / raw (target >= 0.8);
3. loader:  full training samples/s (decode + random crop to the paper crop 112 x 256 x 352 + window +
            flips + intact flags) through a DataLoader with 0, 1 and 2 workers;
4. (``--tensor-column``) the same volumes as an Arrow ``list<int16>`` column with Parquet zstd
            compression, read back to numpy: MB/s vs the blob layout (the encoding question of docs/shards.md).

Run: ``.venv/bin/python benchmarks/loader_throughput.py [--volumes 8] [--shape 130 400 400]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANATOMIES = ("lung", "heart", "esophagus", "aorta")


def synthetic_ct(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(z, y, x) int16 HU chest-like volume with texture + uint8 anatomy mask."""
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    cy, cx = ny / 2, nx / 2
    body = ((y - cy) / (0.45 * ny)) ** 2 + ((x - cx) / (0.48 * nx)) ** 2 <= 1.0
    lung_l = ((y - cy) / (0.3 * ny)) ** 2 + ((x - 0.3 * nx) / (0.15 * nx)) ** 2 <= 1.0
    lung_r = ((y - cy) / (0.3 * ny)) ** 2 + ((x - 0.7 * nx) / (0.15 * nx)) ** 2 <= 1.0
    heart = ((y - 0.55 * ny) / (0.12 * ny)) ** 2 + ((x - 0.5 * nx) / (0.1 * nx)) ** 2 + (
        (z - nz / 2) / (0.2 * nz)
    ) ** 2 <= 1
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[np.broadcast_to(body, shape)] = 30
    lungs = np.broadcast_to(lung_l | lung_r, shape) & (z > 5) & (z < nz - 5)
    hu[lungs] = -850
    hu[heart] = 45
    hu += rng.normal(0, 25, size=shape).astype(np.int16)  # CT noise: what makes CT compress ~2-3x
    mask = np.zeros(shape, dtype=np.uint8)
    mask[lungs] = 1
    mask[heart] = 2
    mask[10:-10, int(0.7 * ny) : int(0.7 * ny) + 12, int(0.5 * nx) - 6 : int(0.5 * nx) + 6] = 3
    mask[5:-5, int(0.62 * ny) : int(0.62 * ny) + 20, int(0.56 * nx) : int(0.56 * nx) + 20] = 4
    return hu, mask


def write_shards(
    root: Path, volumes: int, shape: tuple[int, int, int], level: int, rows_per_group: int
) -> tuple[list[Path], list[tuple[bytes, bytes]], float]:
    import pyarrow as pa

    from preprocessing.shard_schema import build_metadata, encode_array, shard_schema
    from preprocessing.shards import open_writer

    rng = np.random.default_rng(0)
    metadata = build_metadata(
        anatomy_set="ctrate4",
        anatomy_names=ANATOMIES,
        label_names=[f"l{i}" for i in range(18)],
        grid={"spacing_zyx_mm": [3.0, 1.0, 1.0]},
        zstd_level=level,
    )
    schema = shard_schema(4, 18, metadata)
    blobs, rows = [], []
    encode_seconds = 0.0
    for index in range(volumes):
        hu, mask = synthetic_ct(shape, rng)
        start = time.perf_counter()
        pair = (encode_array(hu, level), encode_array(mask, level))
        encode_seconds += time.perf_counter() - start
        blobs.append(pair)
        rows.append(
            {
                "study_id": f"st_{index:04d}",
                "patient_id": f"pa_{index:04d}",
                "split": "train",
                "volume": pair[0],
                "shape": list(shape),
                "spacing_mm": [3.0, 1.0, 1.0],
                "affine": np.eye(4).reshape(16).tolist(),
                "mask": pair[1],
                "anatomy_text": ["a", "b", "c", "d"],
                "anatomy_abnormal": [False] * 4,
                "labels": [0] * 18,
                "report_text": "report",
                "prep_version": "bench",
                "source_hash": "x",
            }
        )
    path = root / "train" / "part-00000.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = open_writer(path, schema)
    for start in range(0, len(rows), rows_per_group):
        chunk = rows[start : start + rows_per_group]
        writer.write_table(pa.Table.from_pylist(chunk, schema=schema), row_group_size=len(chunk))
    writer.close()
    return [path], blobs, encode_seconds


def raw_decode_seconds(blobs: list[tuple[bytes, bytes]]) -> tuple[float, int]:
    import zstandard

    decoded = 0
    start = time.perf_counter()
    for volume_blob, mask_blob in blobs:
        decompressor = zstandard.ZstdDecompressor()
        decoded += len(decompressor.decompress(volume_blob)) + len(decompressor.decompress(mask_blob))
    return time.perf_counter() - start, decoded


def raw_readinto_seconds(blobs: list[tuple[bytes, bytes]], shape: tuple[int, int, int]) -> tuple[float, int]:
    """The reader's own decode routine on in-memory bytes (zstd straight into a numpy array)."""
    from preprocessing.shard_schema import decode_array

    decoded = 0
    start = time.perf_counter()
    for volume_blob, mask_blob in blobs:
        decoded += decode_array(volume_blob, shape, "int16").nbytes + decode_array(mask_blob, shape, "uint8").nbytes
    return time.perf_counter() - start, decoded


def reader_decode_seconds(dataset: object) -> tuple[float, int]:
    decoded = 0
    start = time.perf_counter()
    handles: dict = {}
    for unit in dataset.units:  # type: ignore[attr-defined]
        for row in dataset.read_unit(unit, handles):  # type: ignore[attr-defined]
            decoded += row["hu_volume"].nbytes + row["anatomy_mask"].nbytes
    return time.perf_counter() - start, decoded


def decode_comparison(
    files: list[Path], blobs: list[tuple[bytes, bytes]], shape: tuple[int, int, int], rounds: int
) -> tuple[float, float, float]:
    """Interleaved rounds (this machine is shared: noise is large); MB/s from the median round of each.

    Returns (raw ``decompress()`` MB/s, raw decode-into-array MB/s, reader MB/s).
    """
    import statistics

    from training.trainer.data import ShardDataset

    dataset = ShardDataset(files, crop_zyx=(112, 256, 352), mode="eval")
    raw_times, into_times, reader_times, decoded = [], [], [], 0
    for _ in range(rounds):
        seconds, decoded = raw_decode_seconds(blobs)
        raw_times.append(seconds)
        seconds, _ = raw_readinto_seconds(blobs, shape)
        into_times.append(seconds)
        seconds, reader_decoded = reader_decode_seconds(dataset)
        assert reader_decoded == decoded
        reader_times.append(seconds)
    return tuple(
        decoded / 1e6 / statistics.median(times)  # type: ignore[return-value]
        for times in (raw_times, into_times, reader_times)
    )


def loader_volumes_s(files: list[Path], workers: int, epochs: int) -> float:
    import torch

    from training.trainer.batch import collate_batch
    from training.trainer.data import ShardDataset

    dataset = ShardDataset(files, crop_zyx=(112, 256, 352), hu_window=(-1150, 350), shuffle_buffer=2)
    count = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_batch)
        for batch in loader:
            count += batch["volume"].shape[0]
    return count / (time.perf_counter() - start)


def tensor_column_mb_s(
    root: Path, blobs: list[tuple[bytes, bytes]], shape: tuple[int, int, int], level: int, repeats: int
) -> tuple[float, int]:
    """Same volumes as list<int16> with Parquet zstd (no blob layer): read + to numpy."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    path = root / "tensor.parquet"
    volumes = [np.frombuffer(zstandard.ZstdDecompressor().decompress(v), dtype=np.int16) for v, _ in blobs]
    table = pa.table({"volume": pa.array(volumes, type=pa.large_list(pa.int16()))})
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=level,
        row_group_size=2,
        use_dictionary=False,
        write_statistics=False,
    )
    import statistics

    times, decoded = [], 0
    for _ in range(repeats):
        decoded = 0
        start = time.perf_counter()
        handle = pq.ParquetFile(path, memory_map=True)
        for group in range(handle.num_row_groups):
            column = handle.read_row_group(group).column("volume")
            for i in range(len(column)):
                array = column[i].values.to_numpy(zero_copy_only=False).reshape(shape)
                decoded += array.nbytes
        times.append(time.perf_counter() - start)
    return decoded / 1e6 / statistics.median(times), path.stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=(130, 400, 400), metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (median taken)")
    parser.add_argument("--tensor-column", action="store_true", help="also measure an Arrow list<int16> column")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    from core.config import load_config

    config = load_config(REPO / "params.yaml")
    level = config.shard.zstd_level
    shape = tuple(args.shape)
    results: dict[str, float | int | str] = {
        "shape_zyx": "x".join(map(str, shape)),
        "volumes": args.volumes,
        "zstd_level": level,
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files, blobs, encode_seconds = write_shards(root, args.volumes, shape, level, config.shard.rows_per_group)
        raw_bytes = args.volumes * (int(np.prod(shape)) * 3)
        stored = sum(len(v) + len(m) for v, m in blobs)
        results["compression_ratio"] = round(raw_bytes / stored, 2)
        results["encode_mb_s"] = round(raw_bytes / 1e6 / encode_seconds, 1)
        raw, raw_into, reader = decode_comparison(files, blobs, shape, args.repeats)
        results["raw_zstd_decode_mb_s"] = round(raw, 1)
        results["raw_zstd_decode_into_array_mb_s"] = round(raw_into, 1)
        results["reader_decode_mb_s_per_worker"] = round(reader, 1)
        results["reader_vs_raw"] = round(reader / raw, 3)
        results["reader_vs_raw_into_array"] = round(reader / raw_into, 3)
        for workers in (0, 1, 2):
            results[f"train_volumes_s_workers{workers}"] = round(loader_volumes_s(files, workers, 2), 2)
        if args.tensor_column:
            tensor_mb_s, tensor_size = tensor_column_mb_s(root, blobs, shape, level, args.repeats)
            results["tensor_column_read_mb_s"] = round(tensor_mb_s, 1)
            results["tensor_column_file_mb"] = round(tensor_size / 1e6, 1)
            results["blob_file_mb"] = round(files[0].stat().st_size / 1e6, 1)
            results["blob_reader_vs_tensor_column"] = round(reader / tensor_mb_s, 2)
    for key, value in results.items():
        print(f"{key:36s} {value}")
    print(f"ratio reader/raw = {results['reader_vs_raw']} (target >= 0.8)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
