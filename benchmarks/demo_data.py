"""Benchmark the synthetic cohort generator (``fvlm demo-data``).

Measures, in one run:
* 20 ``demo`` studies with a process pool of 2 versus the same cohort with 1 worker (ratio = speed-up);
* one ``real`` study (512 x 512, 1.25 mm): in-memory phantom versus phantom + DICOM + mask on disk.

Wall time on a shared machine depends on its load; CPU seconds (this process + its children) do not,
so both are printed, with the load average.

    .venv/bin/python benchmarks/demo_data.py [--studies 20] [--skip-real] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(label: str, function, *args, **kwargs):
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    result = function(*args, **kwargs)
    wall, cpu = time.perf_counter() - wall0, _cpu_seconds() - cpu0
    print(f"{label:<46} wall {wall:7.1f} s   cpu {cpu:7.1f} s   (load avg {os.getloadavg()[0]:.1f})")
    return result, wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="write cohorts here instead of a temp dir")
    args = parser.parse_args()

    from synthetic import generate_cohort, make_phantom

    root = args.keep or Path(tempfile.mkdtemp(prefix="fvlm-demo-bench-"))
    print(f"cpus: {os.cpu_count()}, output under {root}")
    try:
        summary, wall2, cpu2 = _timed(
            f"{args.studies} demo studies, workers=2",
            generate_cohort,
            root / "w2",
            studies=args.studies,
            seed=args.seed,
            size="demo",
            workers=2,
        )
        _, wall1, cpu1 = _timed(
            f"{args.studies} demo studies, workers=1 (peer)",
            generate_cohort,
            root / "w1",
            studies=args.studies,
            seed=args.seed,
            size="demo",
            workers=1,
        )
        size_mb = sum(p.stat().st_size for p in (root / "w2").rglob("*") if p.is_file()) / 1e6
        print(
            f"  demo cohort: {summary.dicom_files} DICOM files, {size_mb:.0f} MB, "
            f"{wall2 / args.studies:.2f} s wall per study with 2 workers"
        )
        print(f"  ratio workers=1 / workers=2 wall: {wall1 / wall2:.2f}x  (cpu {cpu1 / max(cpu2, 1e-9):.2f}x)")
        if not args.skip_real:
            phantom, wall_mem, cpu_mem = _timed("1 real study, phantom in memory", make_phantom, args.seed, 0, "real")
            print(f"  real grid: {phantom.hu_zyx.shape} voxels (z, y, x), spacing {phantom.spacing_zyx} mm")
            del phantom
            _, wall_disk, cpu_disk = _timed(
                "1 real study, phantom + DICOM + mask (peer)",
                generate_cohort,
                root / "real",
                studies=1,
                seed=args.seed,
                size="real",
                workers=1,
            )
            print(
                f"  ratio on-disk / in-memory wall: {wall_disk / wall_mem:.2f}x "
                f" (cpu {cpu_disk / max(cpu_mem, 1e-9):.2f}x)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
