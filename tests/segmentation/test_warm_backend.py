"""One warm TotalSegmentator predictor per process across batches (segmentation.stage.warm_backend).

A Dask worker started with ``--nthreads 1`` runs one batch at a time, so it loads its predictor once; the
cluster version of this check is tests/flows/test_dask_cluster.py.
"""

from __future__ import annotations

import functools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segmentation import stage, totalseg
from segmentation.stage import SegmentJob, release_warm_backends, run_segment, segment_batch, warm_backend_stats


@pytest.fixture(autouse=True)
def _no_warm_backends_left() -> None:
    release_warm_backends()
    yield
    release_warm_backends()


def _volumes(tmp_path: Path, make_phantom, n: int) -> list[tuple[str, Path]]:
    folder = tmp_path / "volumes"
    folder.mkdir()
    pairs = []
    for k in range(n):
        hu, _ = make_phantom((40, 32, 20), seed=k)
        path = folder / f"st_{k}.nii.gz"
        nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
        pairs.append((f"st_{k}", path))
    return pairs


def _batches_of_one(items, batch_fn, key_fn):
    """A map_batches seam: every study its own batch, all in this process, one after the other."""
    return [outcome for item in items for outcome in batch_fn([item])]


def test_batches_in_one_process_share_one_loaded_predictor(tmp_path: Path, make_phantom, totalseg_env: Path) -> None:
    pairs = _volumes(tmp_path, make_phantom, 3)
    job = SegmentJob(
        inputs=tuple(pairs), output_dir=tmp_path / "out", backend="totalsegmentator", device="cpu", qc=False
    )
    loads, before = totalseg.predictor_loads(), warm_backend_stats()
    summary = run_segment(job, map_batches=_batches_of_one)
    assert summary.n_ok == 3, summary.text()
    after = warm_backend_stats()
    assert totalseg.predictor_loads() - loads == 1  # three batches, one predictor built
    assert (after["built"] - before["built"], after["reused"] - before["reused"], after["idle"]) == (1, 2, 1)

    with_qc = SegmentJob(inputs=(), output_dir=tmp_path / "out2", backend="totalsegmentator", device="cpu", qc=True)
    segment_batch(pairs[:1], with_qc)  # QC pictures do not change the model: the same warm backend
    assert totalseg.predictor_loads() - loads == 1 and warm_backend_stats()["idle"] == 1
    all_classes = SegmentJob(
        inputs=(), output_dir=tmp_path / "out3", backend="totalsegmentator", device="cpu", roi_subset=False
    )
    segment_batch(pairs[:1], all_classes)  # another model configuration: a backend of its own
    assert totalseg.predictor_loads() - loads == 2 and warm_backend_stats()["idle"] == 2
    assert release_warm_backends() == 2 and warm_backend_stats()["idle"] == 0


def test_replaced_weights_are_not_served_warm(tmp_path: Path, make_phantom, totalseg_env: Path) -> None:
    import os

    pairs = _volumes(tmp_path, make_phantom, 1)
    job = SegmentJob(inputs=tuple(pairs), output_dir=tmp_path / "out", backend="totalsegmentator", device="cpu")
    batch = functools.partial(segment_batch, job=job)
    batch(pairs)
    loads = totalseg.predictor_loads()
    # every stand-in checkpoint (the session's weights folder may hold several tasks by now): "new weights"
    checkpoints = {path: path.stat() for path in (totalseg_env / "nnunet" / "results").rglob("checkpoint_final.pth")}
    assert checkpoints
    for path, stat in checkpoints.items():
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    try:
        batch(pairs)
    finally:
        for path, stat in checkpoints.items():
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert totalseg.predictor_loads() - loads == 1 and warm_backend_stats()["dropped"] >= 1


def test_precomputed_masks_are_indexed_again_every_batch(tmp_path: Path) -> None:
    """The precomputed backend is not kept: masks added between batches must be seen."""
    job = SegmentJob(inputs=(), output_dir=tmp_path, backend="precomputed", precomputed_dir=tmp_path, salt="s")
    with stage.warm_backend(job) as first:
        pass
    with stage.warm_backend(job) as second:
        pass
    assert first is not second and warm_backend_stats()["idle"] == 0


def test_a_batch_that_raises_closes_its_backend(tmp_path: Path, totalseg_env: Path) -> None:
    job = SegmentJob(inputs=(), output_dir=tmp_path, backend="totalsegmentator", device="cpu")
    closed: list[int] = []
    with pytest.raises(ValueError), stage.warm_backend(job) as engine:
        engine.close = lambda: closed.append(1)  # type: ignore[method-assign]
        raise ValueError("boom")
    assert closed == [1] and warm_backend_stats()["idle"] == 0
