"""Benchmark: a nightly `ingest` with nothing new over 10^3 and 10^4 known studies, with the raw-tree index.

    .venv/bin/python benchmarks/ingest_noop.py [--studies 1000 10000] [--files-per-study 4] [--baseline]

Simulates a raw archive of small studies in a temporary folder (the tiny series of benchmarks/convert_noop.py,
copied per study with new UIDs: no pixel work). For each size it runs, every run a fresh process (imports
included), :func:`preprocessing.ingest.collect_incoming` with the index at ``ingest_index_path``:

* ``first``: the first night (the index is built: every raw file's header read and content hashed once);
* ``noop``: a night whose drop holds only a study the archive already has (nothing new: every incoming file is
  a duplicate) -- the known files are only stat-ed;
* ``plus1``: a night with one new study;
* ``--baseline``: the ``noop`` night without an index (every known file read and hashed: what it replaces).

It prints wall and CPU seconds and the growth factor of the no-op between the sizes (1.0: constant; the size
ratio: linear).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RUN_INGEST = """
import json, sys
from pathlib import Path
from preprocessing.ingest import collect_incoming
watch, raw, index = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
result = collect_incoming(watch, raw, settle_s=0, index_path=Path(index) if index != "-" else None)
print(json.dumps({"new": result.studies_moved, "ingested": result.files_ingested, "dup": result.duplicates}))
"""


def timed_ingest(watch: Path, raw: Path, index: Path | None) -> dict:
    from benchmarks.convert_noop import timed_child

    wall, cpu, done = timed_child(RUN_INGEST, str(watch), str(raw), str(index) if index else "-")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    from benchmarks.convert_noop import print_growth, template_files, write_studies
    from preprocessing import file_index
    from preprocessing.ingest import ingest_index_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--files-per-study", type=int, default=4)
    parser.add_argument("--baseline", action="store_true", help="also the no-op night without an index")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="fvlm-ingest-noop-") as scratch:
        work = Path(scratch)
        templates = template_files(work / "template", args.files_per_study)
        for n in args.studies:
            raw, watch = work / f"raw-{n}", work / f"incoming-{n}"
            index = ingest_index_path(work / f"project-{n}", raw)
            started = time.perf_counter()
            write_studies(raw, templates, 0, n)
            generated = time.perf_counter() - started
            # the index trusts a file once its mtime / ctime are older than the recording scan by the racy window;
            # a real archive's files are hours old
            time.sleep(file_index.RACY_WINDOW_NS / 1e9 + 0.1)
            row: dict = {"studies": n, "files": n * args.files_per_study, "generate_s": round(generated, 1)}

            nights = [("first", 0, index), ("noop", 1, index)]  # first: a known study again, builds the index
            nights += [("noindex", 2, None)] if args.baseline else []
            nights += [("plus1", n, index)]  # one new study
            for label, drop_study, night_index in nights:
                write_studies(watch, templates, drop_study, 1)
                outcome = timed_ingest(watch, raw, night_index)
                row.update({f"{label}_{key}": value for key, value in outcome.items()})
                shutil.rmtree(watch, ignore_errors=True)
            results.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(raw)
    print_growth(results, "wall")


if __name__ == "__main__":
    main()
