"""`run_segment` and `fvlm segment`: manifest, masks, QC, quarantine, idempotent reruns."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from core.privacy import pseudonym
from segmentation.stage import SegmentJob, run_segment


def segment(inputs, output_dir, **options):
    return run_segment(SegmentJob(inputs=inputs, output_dir=output_dir, **options))


SALT = "stage-test-salt"


def _cohort(tmp_path: Path, make_phantom, n: int = 3) -> tuple[Path, Path, dict[str, str]]:
    """A convert-style output (studies.parquet + volumes/) and raw-key-named precomputed masks."""
    converted, masks = tmp_path / "converted", tmp_path / "masks"
    (converted / "volumes").mkdir(parents=True)
    masks.mkdir()
    rows, keys = [], {}
    for k in range(n):
        key = f"1.2.840.99999.{k}"
        study_id = pseudonym(key, SALT, kind="study")
        keys[study_id] = key
        hu, ids = make_phantom((40, 32, 20), seed=k)
        affine = np.diag([1.5, 1.5, 3.0, 1.0])
        nib.save(nib.Nifti1Image(hu, affine), str(converted / "volumes" / f"{study_id}.nii.gz"))
        if k == 1:
            ids[ids == 52] = 0  # the second study's mask lacks the aorta
        nib.save(nib.Nifti1Image(ids, affine), str(masks / f"{key}.nii.gz"))
        rows.append({"study_id": study_id, "status": "ok"})
    rows.append({"study_id": "st_quarantined_at_convert", "status": "quarantined"})
    pq.write_table(pa.Table.from_pylist(rows), converted / "studies.parquet")
    return converted, masks, keys


def test_precomputed_cohort_manifest_masks_qc_and_rerun(tmp_path: Path, make_phantom) -> None:
    converted, masks, keys = _cohort(tmp_path, make_phantom)
    bad_id = list(keys)[2]
    (masks / f"{keys[bad_id]}.nii.gz").write_bytes(b"\x1f\x8b broken gzip")  # one unreadable mask
    out = tmp_path / "segmented"
    summary = segment(converted, out, backend="precomputed", precomputed_dir=masks, salt=SALT)
    assert (summary.n_ok, summary.n_quarantined, len(summary.rows)) == (2, 1, 3)
    table = pq.read_table(out / "segments.parquet").to_pylist()
    by_id = {row["study_id"]: row for row in table}
    assert set(by_id) == set(keys)  # the convert-quarantined study is not input
    bad = by_id[bad_id]
    assert bad["status"] == "quarantined" and "not a readable NIfTI" in bad["reason"]
    for study_id, row in by_id.items():
        text = repr(row)
        assert keys[study_id] not in text  # no raw study key anywhere
        if row["status"] != "ok":
            continue
        mask = nib.load(str(out / row["mask_path"]))
        volume = nib.load(str(converted / "volumes" / f"{study_id}.nii.gz"))
        assert mask.shape == volume.shape and np.allclose(mask.affine, volume.affine)
        assert mask.get_data_dtype() == np.uint8
        assert row["lung_voxels"] > 0 and row["lung_cut_by_fov"] is True and "z_first" in row["lung_touches"]
        assert row["backend"] == "precomputed" and row["anatomy_set"] == "ctrate4"
        with Image.open(out / row["qc_path"]) as picture:
            assert picture.format == "PNG" and picture.size[0] > picture.size[1] > 100
    missing = by_id[list(keys)[1]]
    assert missing["status"] == "ok" and "aorta" in missing["missing_anatomies"]
    assert any("aorta" in w for w in missing["warnings"]) and missing["aorta_voxels"] == 0

    # rerun with nothing new: every ok study is reused, the bad one is retried (still quarantined)
    mtime = (out / by_id[list(keys)[0]]["mask_path"]).stat().st_mtime_ns
    again = segment(converted, out, backend="precomputed", precomputed_dir=masks, salt=SALT)
    assert (again.n_reused, again.n_quarantined) == (2, 1)
    assert (out / by_id[list(keys)[0]]["mask_path"]).stat().st_mtime_ns == mtime

    # a changed mask source redoes only that study
    first = list(keys)[0]
    ids = np.asarray(nib.load(str(masks / f"{keys[first]}.nii.gz")).dataobj).copy()
    ids[ids == 51] = 0
    nib.save(nib.Nifti1Image(ids, np.diag([1.5, 1.5, 3.0, 1.0])), str(masks / f"{keys[first]}.nii.gz"))
    third = segment(converted, out, backend="precomputed", precomputed_dir=masks, salt=SALT)
    redone = {row["study_id"] for row in third.rows if row["status"] == "ok" and not row["reused"]}
    assert redone == {first}
    assert "heart" in {r["study_id"]: r for r in third.rows}[first]["missing_anatomies"]


def test_missing_volume_and_list_input(tmp_path: Path, make_phantom) -> None:
    converted, masks, keys = _cohort(tmp_path, make_phantom, n=1)
    study_id = next(iter(keys))
    pairs = [(study_id, converted / "volumes" / f"{study_id}.nii.gz"), ("st_gone", tmp_path / "nope.nii.gz")]
    summary = segment(pairs, tmp_path / "out", backend="precomputed", precomputed_dir=masks, salt=SALT, qc=False)
    rows = {row["study_id"]: row for row in summary.rows}
    assert rows[study_id]["status"] == "ok" and rows[study_id].get("qc_path") is None
    assert rows["st_gone"]["status"] == "quarantined" and "volume file missing" in rows["st_gone"]["reason"]


def test_totalsegmentator_backend_through_the_stage(tmp_path: Path, make_phantom, totalseg_env: Path) -> None:
    converted, _, keys = _cohort(tmp_path, make_phantom, n=2)
    out = tmp_path / "segmented"
    summary = segment(converted, out, backend="totalsegmentator", device="cpu", totalseg_home=totalseg_env)
    assert summary.n_ok == 2, summary.text()
    for row in summary.rows:
        mask = nib.load(str(out / row["mask_path"]))
        assert mask.shape == (40, 32, 20) and mask.get_data_dtype() == np.uint8
        assert "STANDIN" in row["model_id"]
    # rerun: no model is loaded at all
    from segmentation.totalseg import TotalSegmentatorBackend

    calls: list[int] = []
    original = TotalSegmentatorBackend.load
    try:
        TotalSegmentatorBackend.load = lambda self: calls.append(1) or original(self)  # type: ignore[method-assign]
        again = segment(converted, out, backend="totalsegmentator", device="cpu", totalseg_home=totalseg_env)
    finally:
        TotalSegmentatorBackend.load = original  # type: ignore[method-assign]
    assert again.n_reused == 2 and calls == []


def test_cli_segment(tmp_path: Path, make_phantom, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from fvlm.cli import main

    monkeypatch.setenv("FVLM_SALT", SALT)
    converted, masks, keys = _cohort(tmp_path, make_phantom, n=2)
    out = tmp_path / "seg"
    code = main(["segment", str(converted), str(out), "--backend", "precomputed", "--masks", str(masks), "--no-qc"])
    printed = capsys.readouterr().out
    assert code == 0 and "2 ok" in printed and (out / "segments.parquet").is_file()
    assert not (out / "qc").exists()
    code = main(["segment", str(tmp_path / "missing"), str(out)])
    assert code == 2
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "no_weights"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    code = main(["segment", str(converted), str(tmp_path / "ts"), "--backend", "totalsegmentator"])
    assert code == 2 and "totalseg_import_weights" in capsys.readouterr().err


def test_missing_masks_folder_stops_the_stage(tmp_path: Path, make_phantom) -> None:
    converted, _, _ = _cohort(tmp_path, make_phantom, n=1)
    with pytest.raises(FileNotFoundError, match="precomputed masks folder not found"):
        segment(converted, tmp_path / "out", backend="precomputed", precomputed_dir=tmp_path / "none", salt=SALT)


def test_written_manifest_schema_is_the_one_declared_before_derivation(tmp_path: Path) -> None:
    """segments.parquet's schema, derived from SegmentRow + AnatomyColumns, equals the hand-written one."""
    import json

    from segmentation.stage import STAGE_VERSION, manifest_schema, write_manifest

    columns = [
        ("study_id", pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("backend", pa.string()),
        ("model_id", pa.string()),
        ("anatomy_set", pa.string()),
        ("config_hash", pa.string()),
        ("input_sha256", pa.string()),
        ("mask_path", pa.string()),
        ("mask_sha256", pa.string()),
        ("qc_path", pa.string()),
        ("shape", pa.list_(pa.int32())),
        ("spacing_mm", pa.list_(pa.float32())),
        ("classes_present", pa.list_(pa.int32())),
        ("missing_anatomies", pa.list_(pa.string())),
        ("cut_anatomies", pa.list_(pa.string())),
        ("missing_classes", pa.list_(pa.string())),
        ("warnings", pa.list_(pa.string())),
        ("stage_version", pa.string()),
    ]
    for name in ("lung", "heart"):
        columns += [
            (f"{name}_voxels", pa.int64()),
            (f"{name}_volume_ml", pa.float32()),
            (f"{name}_bbox_zyx", pa.list_(pa.int32())),
            (f"{name}_cut_by_fov", pa.bool_()),
            (f"{name}_touches", pa.list_(pa.string())),
        ]
    expected = pa.schema(
        columns,
        metadata={
            b"fvlm.stage": STAGE_VERSION.encode(),
            b"fvlm.axes": b"bbox_zyx = (z0, y0, x0, z1, y1, x1), ends exclusive, RAS canonical volume as (z, y, x)",
            b"fvlm.anatomies": json.dumps(["lung", "heart"]).encode(),
        },
    )
    assert manifest_schema(["lung", "heart"]).equals(expected, check_metadata=True)
    path = tmp_path / "segments.parquet"
    row = {"study_id": "s1", "status": "ok", "shape": [2, 3, 4], "seconds": 1.5, "reused": False, "lung_voxels": 7}
    write_manifest([row], path, ["lung", "heart"])
    by_hand = tmp_path / "by-hand.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=expected), by_hand)
    assert path.read_bytes() == by_hand.read_bytes()
    assert pq.read_table(path).to_pylist()[0]["lung_voxels"] == 7
