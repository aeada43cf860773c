"""Benchmark: `fvlm convert` over 5 / 20 / 80 synthetic demo studies vs dcm2niix run per study folder.

    .venv/bin/python benchmarks/convert_scale.py --cohort DIR [--studies 5 20 80] [--repeat 3] [--workers 2]

``DIR`` holds ``dicom/study_NNNN/series_K/*.dcm`` (``fvlm demo-data`` / ``synthetic.generate_cohort``; it is
generated there when missing, ``--studies`` max of them). For each size, a subset of the study folders is
hard-linked into a scratch folder; then, interleaved ``--repeat`` times: ours (a fresh process running
``run_convert`` with ``--workers``, imports included, no file index: a cold run), dcm2niix on each study folder
(all its series, ``-z y``, as a user would run it), and ours again over the now-known studies with the file
index (the second, no-op run). It prints CPU seconds per study (user + sys of the child processes; the
machine is shared, so CPU is the firm figure) and the ratio ours / dcm2niix (< 1: ours faster), median of the
repeats.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OURS = """
import sys
from pathlib import Path
from preprocessing.convert import ConvertJob, ConvertSettings, run_convert
index = Path(sys.argv[4]) if sys.argv[4] != "-" else None
job = ConvertJob(input_dir=Path(sys.argv[1]), output_dir=Path(sys.argv[2]), workers=int(sys.argv[3]),
                 settings=ConvertSettings(salt="bench"), file_index=index)
run_convert(job)
"""


def child_run(command: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the children) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def ours(source: Path, out: Path, workers: int, index: Path | None) -> tuple[float, float]:
    return child_run([sys.executable, "-c", OURS, str(source), str(out), str(workers), str(index or "-")])


def dcm2niix_loop(dcm2niix: str, source: Path, out: Path) -> tuple[float, float]:
    wall = cpu = 0.0
    for study in sorted(source.iterdir()):
        target = out / study.name
        target.mkdir(parents=True, exist_ok=True)
        w, c = child_run([dcm2niix, "-z", "y", "-b", "n", "-f", "%s", "-o", str(target), str(study)])
        wall, cpu = wall + w, cpu + c
    return wall, cpu


def dcm2niix_binary() -> str:
    """The dcm2niix executable itself (one definition: benchmarks/convert_vs_dcm2niix.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from convert_vs_dcm2niix import dcm2niix_binary as binary

    return binary()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", required=True)
    parser.add_argument("--studies", type=int, nargs="+", default=[5, 20, 80])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="convert.workers (params.yaml default: 2)")
    args = parser.parse_args()
    cohort = Path(args.cohort)
    if not (cohort / "dicom").is_dir():
        from synthetic import generate_cohort

        generate_cohort(cohort, studies=max(args.studies), seed=0, size="demo", workers=2)
    all_studies = sorted((cohort / "dicom").iterdir())
    dcm2niix = dcm2niix_binary()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; workers {args.workers}")
    print(
        f"{'studies':>7s} {'ours cold CPU s/study':>22s} {'dcm2niix CPU s/study':>21s} {'ours/dcm2niix':>13s} "
        f"{'ours no-op CPU s/study':>23s} {'wall ours/dcm2niix':>18s}"
    )
    with tempfile.TemporaryDirectory(prefix="fvlm-scale-") as scratch:
        for n in args.studies:
            if n > len(all_studies):
                raise SystemExit(f"{cohort} holds {len(all_studies)} studies, fewer than {n}")
            source = Path(scratch) / f"dicom-{n}"
            for study in all_studies[:n]:
                shutil.copytree(study, source / study.name, copy_function=os.link)
            for path in source.rglob("*.dcm"):  # warm the page cache
                path.read_bytes()
            time.sleep(2.1)  # linking touched the files' ctime: let the index's racy window pass (file_index.py)
            cold, peer, noop = [], [], []
            for attempt in range(args.repeat):
                out = Path(scratch) / f"out-{n}-{attempt}"
                index = Path(scratch) / f"index-{n}-{attempt}.pickle"
                cold.append(ours(source, out / "cold", args.workers, None))
                peer.append(dcm2niix_loop(dcm2niix, source, out / "dcm2niix"))
                ours(source, out / "indexed", args.workers, index)  # records the index
                noop.append(ours(source, out / "indexed", args.workers, index))
                shutil.rmtree(out)
            cpu = [statistics.median(c for _, c in runs) / n for runs in (cold, peer, noop)]
            wall = [statistics.median(w for w, _ in runs) / n for runs in (cold, peer)]
            print(
                f"{n:7d} {cpu[0]:22.3f} {cpu[1]:21.3f} {cpu[0] / cpu[1]:13.2f} {cpu[2]:23.3f} "
                f"{wall[0] / wall[1]:18.2f}",
                flush=True,
            )
            shutil.rmtree(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
