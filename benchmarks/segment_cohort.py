"""Per-study wall time of the segment stage: warm backend vs ``totalsegmentator()`` called per study.

    .venv/bin/python benchmarks/segment_cohort.py [--n 6] [--mode fast] [--device cpu] [--home DIR]

Without ``--home`` it builds random-weight stand-in models (segmentation.standin_weights) in a temporary
TOTALSEG_HOME_DIR, so it runs offline on CPU; with ``--home`` pointing at real weights (and ``--device
gpu``) the same script measures the real models. The cohort is N copies of the TotalSegmentator example
CT (../shared/data, with different noise per copy), or synthetic phantoms when that is absent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cohort(n: int, source: str | None) -> list:
    import nibabel as nib
    import numpy as np

    rng = np.random.default_rng(0)
    example = Path(source) if source else REPO.parent / "shared" / "data" / "totalsegmentator" / "example_ct_sm.nii.gz"
    if example.is_file():
        base = nib.load(str(example))
        data, affine = np.asarray(base.dataobj).astype(np.int16), base.affine
    else:
        data = np.full((120, 100, 40), -1000, dtype=np.int16)
        data[10:110, 10:90, :] = 40
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
    return [nib.Nifti1Image((data + rng.integers(-5, 5, size=data.shape)).astype(np.int16), affine) for _ in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=6, help="studies in the cohort")
    parser.add_argument("--mode", choices=["fast", "fastest", "full"], default="fast")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--home", default=None, help="TOTALSEG_HOME_DIR with real weights (default: stand-in)")
    parser.add_argument("--ct", default=None, help="a NIfTI CT to replicate (default: example_ct_sm)")
    args = parser.parse_args()

    from core.env import apply_offline_env, ensure_totalseg_config

    apply_offline_env()
    scratch = tempfile.TemporaryDirectory(prefix="fvlm-segbench-")
    home = Path(args.home) if args.home else Path(scratch.name) / "totalseg"
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    ensure_totalseg_config(home)
    if not args.home:
        from segmentation.standin_weights import build_standin_weights

        build_standin_weights(home / "nnunet" / "results", (args.mode,))
    from segmentation.totalseg import TotalSegmentatorBackend, segment_with_totalsegmentator_api

    images = cohort(args.n, args.ct)
    print(
        f"cohort: {args.n} x {images[0].shape} voxels, mode {args.mode}, device {args.device}, "
        f"weights {'real: ' + str(home) if args.home else 'stand-in (random)'}"
    )

    started = time.perf_counter()
    backend = TotalSegmentatorBackend(mode=args.mode, device=args.device, home_dir=home)
    backend.load()
    load_s = time.perf_counter() - started
    warm_times = []
    for image in images:
        tick = time.perf_counter()
        backend.segment(image)
        warm_times.append(time.perf_counter() - tick)
    warm_total = time.perf_counter() - started

    cold_times = []
    started = time.perf_counter()
    for image in images:
        tick = time.perf_counter()
        segment_with_totalsegmentator_api(image, mode=args.mode, device=args.device)
        cold_times.append(time.perf_counter() - tick)
    cold_total = time.perf_counter() - started

    warm_per_study = warm_total / args.n  # model load amortised over the cohort
    cold_per_study = cold_total / args.n
    print(
        f"warm backend      : load {load_s:.2f} s once, per study median {statistics.median(warm_times):.2f} s "
        f"(min {min(warm_times):.2f}, max {max(warm_times):.2f}); cohort {warm_total:.1f} s "
        f"= {warm_per_study:.2f} s/study incl. load"
    )
    print(
        f"totalsegmentator(): per study median {statistics.median(cold_times):.2f} s "
        f"(min {min(cold_times):.2f}, max {max(cold_times):.2f}); cohort {cold_total:.1f} s "
        f"= {cold_per_study:.2f} s/study"
    )
    print(
        f"ratio per study (cold / warm, load amortised): {cold_per_study / warm_per_study:.2f}x; "
        f"median steady-state: {statistics.median(cold_times) / statistics.median(warm_times):.2f}x"
    )
    scratch.cleanup()
    return 0


if __name__ == "__main__":  # nnU-Net spawns workers: keep the guard
    raise SystemExit(main())
