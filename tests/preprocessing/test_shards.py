"""Shard writer: schema, joins, quarantine, patient split, determinism, incremental cache, atomicity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.anatomy_sets import CTRATE_LABELS, load_anatomy_set
from core.config import GridConfig, ShardConfig, SplitConfig
from core.layout import reports_studies_path
from preprocessing.shard_schema import PREP_VERSION, decode_array, decode_metadata
from preprocessing.shards import ShardJob, run_shard, shard_files
from preprocessing.split import assign_split, patient_fraction

GRID = GridConfig(spacing_zyx_mm=(8.0, 4.0, 4.0), crop_zyx=(32, 64, 96), roi_margin_slices=1, roi_margin_voxels=4)
SPLIT = SplitConfig(train=0.5, val=0.25, test=0.25, seed=0)
SHARD = ShardConfig(rows_per_group=2)


def build(cohort, out: Path, **overrides):
    kwargs = {"anatomy_set": "ctrate4", "grid": GRID, "split": SPLIT, "shard": SHARD}
    kwargs.update(overrides)
    return run_shard(ShardJob(cohort.converted, cohort.segmented, cohort.reports, out, **kwargs))


def all_parts(out: Path) -> list[Path]:
    return [p for split in ("train", "val", "test") for p in shard_files(out, split)]


def read_rows(out: Path) -> list[dict]:
    rows = []
    for path in all_parts(out):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def test_reports_sibling_name() -> None:
    assert reports_studies_path("data/reports/reports.parquet") == Path("data/reports/reports.studies.parquet")


def test_schema_metadata_and_joined_values(tmp_path: Path, anatomies, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 8)
    out = tmp_path / "shards"
    summary = build(cohort, out)
    assert summary.written == 8 and not summary.quarantined

    parts = all_parts(out)
    assert parts, "no shard written"
    schema = pq.read_schema(parts[0])  # plain pyarrow
    assert schema.field("volume").type == pa.large_binary()
    assert schema.field("mask").type == pa.large_binary()
    assert schema.field("shape").type == pa.list_(pa.int32(), 3)
    assert schema.field("spacing_mm").type == pa.list_(pa.float32(), 3)
    assert schema.field("affine").type == pa.list_(pa.float64(), 16)
    assert schema.field("anatomy_text").type == pa.list_(pa.string(), 4)
    assert schema.field("anatomy_abnormal").type == pa.list_(pa.bool_(), 4)
    assert schema.field("labels").type == pa.list_(pa.int8(), 18)
    meta = decode_metadata(schema.metadata)
    assert meta["anatomy_names"] == list(anatomies)
    assert meta["label_names"] == list(CTRATE_LABELS)
    assert meta["grid"]["spacing_zyx_mm"] == [8.0, 4.0, 4.0]
    assert meta["prep_version"] == PREP_VERSION

    for path in parts:
        handle = pq.ParquetFile(path)
        assert all(handle.metadata.row_group(i).num_rows <= SHARD.rows_per_group for i in range(handle.num_row_groups))
        ids = handle.read(columns=["study_id"]).column("study_id").to_pylist()
        assert ids == sorted(ids)

    long_rows = pq.read_table(cohort.reports).to_pylist()
    studies = {r["study_id"]: r for r in pq.read_table(reports_studies_path(cohort.reports)).to_pylist()}
    for row in read_rows(out):
        sid = row["study_id"]
        assert row["patient_id"] == cohort.patient_of[sid]
        assert row["prep_version"] == PREP_VERSION
        expected_text = {r["anatomy"]: r["text"] for r in long_rows if r["study_id"] == sid}
        expected_abn = {r["anatomy"]: r["abnormal"] for r in long_rows if r["study_id"] == sid}
        assert row["anatomy_text"] == [expected_text[a] for a in anatomies]
        assert row["anatomy_abnormal"] == [expected_abn[a] for a in anatomies]
        assert row["labels"] == [studies[sid][label] for label in CTRATE_LABELS]
        assert row["report_text"] == studies[sid]["report_text"]
        volume = decode_array(row["volume"], row["shape"], "int16")
        mask = decode_array(row["mask"], row["shape"], "uint8")
        assert volume.shape == tuple(row["shape"]) and mask.max() <= 4
        assert set(np.unique(mask)) == {0, 1, 2, 3, 4}
        assert row["spacing_mm"] == [8.0, 4.0, 4.0]


def test_geometry_mask_and_volume_stay_on_the_source_grid(tmp_path: Path, make_cohort) -> None:
    """Every shard voxel maps (through the stored affine) onto the source voxel it was taken from."""
    cohort = make_cohort(tmp_path / "in", 2)
    out = tmp_path / "shards"
    build(cohort, out, split=SplitConfig(train=1.0, val=0.0, test=0.0))
    table = load_anatomy_set("ctrate4").lookup_table()
    for row in read_rows(out):
        source_img = nib.load(cohort.converted / "volumes" / f"{row['study_id']}.nii.gz")
        source_ids = np.asanyarray(nib.load(cohort.segmented / "masks" / f"{row['study_id']}.nii.gz").dataobj)
        source_hu = np.asanyarray(source_img.dataobj)
        volume = decode_array(row["volume"], row["shape"], "int16")
        mask = decode_array(row["mask"], row["shape"], "uint8")
        affine = np.asarray(row["affine"]).reshape(4, 4)
        to_source = np.linalg.inv(source_img.affine) @ affine
        zz, yy, xx = np.meshgrid(*(np.arange(n) for n in mask.shape), indexing="ij")
        index_xyz1 = np.stack([xx.ravel(), yy.ravel(), zz.ravel(), np.ones(xx.size)])
        src = to_source @ index_xyz1
        nearest = np.rint(src[:3]).astype(int)
        expected_mask = table[source_ids[nearest[0], nearest[1], nearest[2]]].reshape(mask.shape)
        assert np.array_equal(mask, expected_mask)
        exact = np.all(np.abs(src[:3] - nearest) < 1e-6, axis=0).reshape(mask.shape)
        assert exact.any()
        assert np.array_equal(volume[exact], source_hu[nearest[0], nearest[1], nearest[2]].reshape(mask.shape)[exact])
        # ROI margins: the anatomies do not touch the cropped grid's faces
        for face in (mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]):
            assert not face.any()


def test_quarantine_with_reasons_and_counts(tmp_path: Path, anatomies, make_cohort) -> None:
    cohort = make_cohort(
        tmp_path / "in", 8, missing_mask=[1], missing_report=[2], corrupt_volume=[3], upstream_quarantined=2
    )
    out = tmp_path / "shards"
    metrics = tmp_path / "metrics" / "shard.json"
    summary = build(cohort, out, metrics_path=metrics)
    reasons = {q["study_id"]: q["reason"] for q in summary.quarantined}
    assert reasons["st_00001"].startswith("no mask")
    assert reasons["st_00002"].startswith("no report") and "reports.id_column" in reasons["st_00002"]
    assert reasons["st_00003"].startswith("prepare failed: volume file st_00003.nii.gz unreadable")
    assert str(tmp_path) not in reasons["st_00003"]
    assert summary.written == 5 and summary.upstream_not_ok == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_quarantined"] == 3
    assert {q["study_id"] for q in manifest["quarantined"]} == {"st_00001", "st_00002", "st_00003"}
    assert sum(s["studies"] for s in manifest["splits"].values()) == 5
    assert set(manifest["abnormal_rate"]) == set(anatomies)
    assert manifest["content_hash"] == summary.content_hash
    small = json.loads(metrics.read_text())
    assert small["studies"] == 5 and small["quarantined"] == 3
    # numbers only in the DVC metrics file; the hash beside it (core/metrics_files.py)
    assert "content_hash" not in small and all(isinstance(v, int) for v in small.values())
    assert json.loads((metrics.parent / "shard.info.json").read_text())["content_hash"] == summary.content_hash
    assert {r["study_id"] for r in read_rows(out)} == {f"st_{i:05d}" for i in (0, 4, 5, 6, 7)}


def test_mask_on_another_grid_is_quarantined(tmp_path: Path, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 3)
    mask_path = cohort.segmented / "masks" / "st_00001.nii.gz"
    image = nib.load(mask_path)
    nib.save(nib.Nifti1Image(np.asanyarray(image.dataobj)[:-2], image.affine), mask_path)
    summary = build(cohort, tmp_path / "shards")
    assert [q["study_id"] for q in summary.quarantined] == ["st_00001"]
    assert "differs from volume grid" in summary.quarantined[0]["reason"]


def test_split_ratios_determinism_and_stability() -> None:
    patients = [f"pa_{i:04d}" for i in range(200)]
    splits = [assign_split(p, 0.7, 0.15, 0.15, seed=0) for p in patients]
    counts = {name: splits.count(name) for name in ("train", "val", "test")}
    assert 120 <= counts["train"] <= 160 and 15 <= counts["val"] <= 45 and 15 <= counts["test"] <= 45
    # deterministic, independent of order and of other patients
    assert splits == [assign_split(p, 0.7, 0.15, 0.15, seed=0) for p in patients]
    assert [assign_split(p, 0.7, 0.15, 0.15, seed=0) for p in reversed(patients)] == splits[::-1]
    assert all(0.0 <= patient_fraction(p) < 1.0 for p in patients)
    assert [assign_split(p, 0.7, 0.15, 0.15, seed=1) for p in patients] != splits
    assert all(assign_split(p, 1.0, 0.0, 0.0) == "train" for p in patients)


def test_no_patient_in_two_splits(tmp_path: Path, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 24, studies_per_patient=3, shape_xyz=(24, 24, 10))
    out = tmp_path / "shards"
    summary = build(cohort, out)
    split_of: dict[str, set[str]] = {}
    for row in read_rows(out):
        split_of.setdefault(row["patient_id"], set()).add(row["split"])
        assert row["split"] == assign_split(row["patient_id"], SPLIT.train, SPLIT.val, SPLIT.test, SPLIT.seed)
    assert all(len(s) == 1 for s in split_of.values())
    assert len(split_of) == 8 and summary.written == 24
    for split in ("train", "val", "test"):
        for path in shard_files(out, split):
            assert set(pq.read_table(path, columns=["split"]).column("split").to_pylist()) == {split}


def test_byte_identical_rebuild(tmp_path: Path, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 6)
    first = build(cohort, tmp_path / "a")
    second = build(cohort, tmp_path / "b")  # fresh: no cache
    third = build(cohort, tmp_path / "a")  # from the cache
    assert first.content_hash == second.content_hash == third.content_hash
    assert third.prepared == 0 and third.reused == 6
    names_a = [p.relative_to(tmp_path / "a") for p in all_parts(tmp_path / "a")]
    names_b = [p.relative_to(tmp_path / "b") for p in all_parts(tmp_path / "b")]
    assert names_a == names_b
    for name in names_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_incremental_prepares_only_new_studies(tmp_path: Path, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 8)
    studies_path = cohort.converted / "studies.parquet"
    full = pq.read_table(studies_path)
    pq.write_table(full.slice(0, 6), studies_path)
    out = tmp_path / "shards"
    before = build(cohort, out)
    assert before.prepared == 6 and before.written == 6
    pq.write_table(full, studies_path)
    after = build(cohort, out)
    assert after.prepared == 2 and after.reused == 6 and after.written == 8
    # same result as a from-scratch build
    assert after.content_hash == build(cohort, tmp_path / "fresh").content_hash
    # a changed mask re-prepares exactly that study
    mask_path = cohort.segmented / "masks" / "st_00004.nii.gz"
    image = nib.load(mask_path)
    data = np.asanyarray(image.dataobj).copy()
    data[data == 52] = 0
    nib.save(nib.Nifti1Image(data, image.affine), mask_path)
    changed = build(cohort, out)
    assert changed.prepared == 1 and changed.content_hash != after.content_hash
    from preprocessing.shards import shard_cache_dir

    assert len(list(shard_cache_dir(out.parent, out).glob("*.npz"))) == 8  # stale entry pruned
    # the cache (absolute paths, mtimes) lives outside the DVC-tracked output
    assert {p.relative_to(out).parts[0] for p in out.rglob("*") if p.is_file()} <= {
        "train",
        "val",
        "test",
        "manifest.json",
    }


def test_files_roll_over_at_target_size(tmp_path: Path, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 8)
    out = tmp_path / "shards"
    summary = build(
        cohort,
        out,
        split=SplitConfig(train=1.0, val=0.0, test=0.0),
        shard=ShardConfig(rows_per_group=2, target_file_mb=0.001),
    )
    parts = shard_files(out, "train")
    assert len(parts) == 4 and summary.files == [f"train/part-{i:05d}.parquet" for i in range(4)]
    assert sum(pq.ParquetFile(p).metadata.num_rows for p in parts) == 8
    # a smaller rebuild removes the now-surplus part files
    build(cohort, out, split=SplitConfig(train=1.0, val=0.0, test=0.0), shard=ShardConfig(rows_per_group=2))
    assert [p.name for p in shard_files(out, "train")] == ["part-00000.parquet"]


def test_exception_mid_write_leaves_no_partial_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_cohort
) -> None:
    import preprocessing.shards as shards_module

    cohort = make_cohort(tmp_path / "in", 8)
    out = tmp_path / "shards"
    original = shards_module._table_for
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk full (injected)")
        return original(*args, **kwargs)

    monkeypatch.setattr(shards_module, "_table_for", failing)
    with pytest.raises(RuntimeError, match="injected"):
        build(cohort, out, split=SplitConfig(train=1.0, val=0.0, test=0.0))
    assert all_parts(out) == []
    assert not list(out.rglob(".part-*"))  # temp files removed too


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import pyarrow.parquet as pq
    from core.config import GridConfig, ShardConfig, SplitConfig
    from preprocessing.shards import ShardJob, run_shard
    from tests.preprocessing.cohort_factory import make_cohort, Cohort

    root = Path(sys.argv[1])
    cohort = Cohort(root / "in" / "converted", root / "in" / "segmented", root / "in" / "reports" / "reports.parquet",
                    (), {})
    real_write = pq.ParquetWriter.write_table
    def write_then_die(self, *args, **kwargs):
        real_write(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)      # killed between a row group and the rename
    pq.ParquetWriter.write_table = write_then_die
    run_shard(ShardJob(cohort.converted, cohort.segmented, cohort.reports, root / "shards", anatomy_set="ctrate4",
              grid=GridConfig(spacing_zyx_mm=(8.0, 4.0, 4.0), roi_margin_slices=1, roi_margin_voxels=4),
              split=SplitConfig(train=1.0, val=0.0, test=0.0), shard=ShardConfig(rows_per_group=2)))
    """
)


def test_killed_writer_leaves_previous_shards_complete(tmp_path: Path, repo_root: Path, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 6)
    out = tmp_path / "shards"
    split = SplitConfig(train=1.0, val=0.0, test=0.0)
    first = build(cohort, out, split=split)
    before = {p: p.read_bytes() for p in all_parts(out)}
    # new studies arrive; the rebuild is killed (SIGKILL) in the middle of writing a part file
    for index in range(6):
        (cohort.segmented / "masks" / f"st_{index:05d}.nii.gz").touch()
    make_cohort(tmp_path / "in", 8)
    script = tmp_path / "kill_writer.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(repo_root)}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], cwd=repo_root, env=env, capture_output=True, timeout=120
    )
    assert result.returncode == -9, result.stderr.decode()[-2000:]
    assert list(out.rglob(".part-*.tmp-*")), "the killed writer should have left its hidden temp file"
    # the visible shards are exactly the previous complete build
    assert {p: p.read_bytes() for p in all_parts(out)} == before
    for path in all_parts(out):
        pq.read_table(path)
    # the next run cleans up and completes
    again = build(cohort, out, split=split)
    assert again.written == 8 and again.content_hash != first.content_hash
    assert not list(out.rglob(".part-*.tmp-*"))


def test_cli_shard(tmp_path: Path, repo_root: Path, capsys: pytest.CaptureFixture[str], make_cohort) -> None:
    from fvlm.cli import main

    cohort = make_cohort(tmp_path / "in", 4, missing_mask=[0])
    out, metrics = tmp_path / "shards", tmp_path / "metrics" / "shard.json"
    code = main(
        [
            "--params",
            str(repo_root / "params.yaml"),
            "shard",
            "--converted",
            str(cohort.converted),
            "--segmented",
            str(cohort.segmented),
            "--reports",
            str(cohort.reports),
            "--out",
            str(out),
            "--metrics",
            str(metrics),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "3 studies" in printed and "quarantined st_00000: no mask (" in printed
    assert json.loads(metrics.read_text())["studies"] == 3
    code = main(
        [
            "--params",
            str(repo_root / "params.yaml"),
            "shard",
            "--converted",
            str(tmp_path / "nope"),
            "--segmented",
            str(cohort.segmented),
            "--reports",
            str(cohort.reports),
            "--out",
            str(out),
            "--metrics",
            str(metrics),
        ]
    )
    assert code == 1
    assert "studies.parquet" in capsys.readouterr().err


@pytest.mark.shared
def test_real_totalsegmentator_output_to_shard(tmp_path: Path, shared_data: Path, make_cohort) -> None:
    """TotalSegmentator's example CT + its real `total` --fast output -> one shard row."""
    source = shared_data / "totalsegmentator"
    cohort = make_cohort(tmp_path / "in", 1)
    shutil.copy(source / "example_ct_sm.nii.gz", cohort.converted / "volumes" / "st_00000.nii.gz")
    shutil.copy(source / "example_seg_fast.nii.gz", cohort.segmented / "masks" / "st_00000.nii.gz")
    out = tmp_path / "shards"
    summary = build(cohort, out, grid=GridConfig(), split=SplitConfig(train=1.0, val=0.0, test=0.0))
    assert summary.written == 1, summary.quarantined
    (row,) = read_rows(out)
    mask = decode_array(row["mask"], row["shape"], "uint8")
    volume = decode_array(row["volume"], row["shape"], "int16")
    present = set(np.unique(mask)) - {0}
    assert present == {1, 4}  # lung lobes and aorta are in this crop; heart, esophagus are not
    assert row["spacing_mm"] == [3.0, 1.0, 1.0]
    assert -1200 <= volume.min() and volume.max() <= 1300
    source_img = nib.load(source / "example_ct_sm.nii.gz")
    affine = np.asarray(row["affine"]).reshape(4, 4)
    # the stored grid is a sub-grid of the source (3 mm -> 1 mm in-plane: 3 shard voxels per source voxel)
    assert np.allclose(np.abs(np.diag(affine)[:3]), [1.0, 1.0, 3.0])
    origin_in_source = np.linalg.inv(source_img.affine) @ affine[:, 3]
    assert np.allclose(origin_in_source[:3], np.rint(origin_in_source[:3]))


def test_parallel_preparation_gives_the_same_shards(tmp_path: Path, make_cohort) -> None:
    cohort = make_cohort(tmp_path / "in", 3, corrupt_volume=[1])
    serial = build(cohort, tmp_path / "serial", workers=1)
    parallel = build(cohort, tmp_path / "parallel", workers=2)
    assert parallel.prepared == 3 and parallel.content_hash == serial.content_hash
    assert parallel.quarantined == serial.quarantined and len(parallel.quarantined) == 1


def test_cli_convert_to_nii_then_shard_shards_every_study(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`fvlm convert --output-extension .nii`, segment, parse-reports, then `fvlm shard`: shard reads the
    volume convert recorded (``volume_path``) instead of assuming ``volumes/<id>.nii.gz`` (which used to
    quarantine every study as "no volume file")."""
    import json

    from fvlm.cli import main
    from synthetic import generate_cohort

    monkeypatch.setenv("FVLM_NO_FLOWS", "1")
    monkeypatch.setenv("FVLM_SALT", "test-salt")
    demo = tmp_path / "demo"
    generate_cohort(demo, studies=2, seed=0, size="demo", workers=1)
    params = tmp_path / "params.yaml"
    params.write_text(
        "grid: {spacing_zyx_mm: [8.0, 4.0, 4.0], crop_zyx: [32, 64, 96], roi_margin_slices: 1, roi_margin_voxels: 4}\n"
        "split: {train: 1.0, val: 0.0, test: 0.0}\n"
    )
    converted, segmented, reports = tmp_path / "converted", tmp_path / "segmented", tmp_path / "reports.parquet"
    cli = ["--params", str(params)]
    assert (
        main([*cli, "convert", str(demo / "dicom"), str(converted), "--workers", "1", "--output-extension", ".nii"])
        == 0
    )
    assert len(list((converted / "volumes").glob("*.nii"))) == 2
    assert not list((converted / "volumes").glob("*.nii.gz"))
    assert (
        main(
            [
                *cli,
                "segment",
                str(converted),
                str(segmented),
                "--backend",
                "precomputed",
                "--masks",
                str(demo / "masks"),
                "--no-qc",
            ]
        )
        == 0
    )
    assert main([*cli, "parse-reports", str(demo / "reports.csv"), str(reports)]) == 0
    capsys.readouterr()
    code = main(
        [
            *cli,
            "shard",
            "--converted",
            str(converted),
            "--segmented",
            str(segmented),
            "--reports",
            str(reports),
            "--out",
            str(tmp_path / "shards"),
            "--metrics",
            str(tmp_path / "shard.json"),
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "no volume file" not in printed
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["n_quarantined"] == 0 and manifest["splits"]["train"]["studies"] == 2


def test_study_without_patient_id_is_its_own_patient_not_quarantined(tmp_path: Path, make_cohort) -> None:
    """An older convert left patient_id empty for an anonymised study: shard splits it as its own patient."""
    cohort = make_cohort(tmp_path / "in", 6)
    studies_path = cohort.converted / "studies.parquet"
    table = pq.read_table(studies_path)
    rows = table.to_pylist()
    rows[0]["patient_id"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), studies_path)
    summary = build(cohort, tmp_path / "shards")
    assert summary.quarantined == [] and summary.written == 6


def test_split_leaving_a_split_empty_or_train_below_a_batch_says_so(tmp_path: Path, make_cohort) -> None:
    from preprocessing.split import split_problems

    cohort = make_cohort(tmp_path / "in", 3)
    summary = build(cohort, tmp_path / "shards", split=SplitConfig(train=1.0, val=0.0, test=0.0), train_batch_size=8)
    text = summary.describe()
    assert "split val is empty" in text and "split.val" in text and "split.seed" in text
    assert "fewer than one batch of train.batch_size=8" in text
    assert split_problems({"train": 8, "val": 2, "test": 2}, {"train": 8, "val": 2, "test": 2}, {}, 0, 8) == []
