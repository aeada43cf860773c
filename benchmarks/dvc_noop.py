"""Wall time of `dvc repro` with nothing changed on the demo pipeline (target < 3 s).

Peer, in the same run: `dvc version` (DVC's own start-up floor), so the ratio says how much of the
no-op is the pipeline's own checking (hashing deps/outs, reading params) rather than DVC starting.

    python benchmarks/dvc_noop.py [--repo DIR] [--repeats 5]

DIR must hold a reproduced demo pipeline (run `fvlm demo` there first; with --prepare this script
does it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _time(command: list[str], cwd: Path, repeats: int) -> tuple[float, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    timings, output = [], ""
    for _ in range(repeats):
        started = time.perf_counter()
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        timings.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed in {cwd}:\n{result.stderr[-2000:]}")
        output = result.stdout
    return statistics.median(timings), output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--prepare", action="store_true", help="run `fvlm demo --no-push` first")
    args = parser.parse_args(argv)
    dvc = [sys.executable, "-m", "dvc"]
    if args.prepare:
        subprocess.run([sys.executable, "-m", "fvlm.cli", "demo", "--no-push"], cwd=args.repo, check=True)
    noop, output = _time([*dvc, "repro"], args.repo, args.repeats)
    if "Running stage" in output:
        raise SystemExit("`dvc repro` still ran a stage: the pipeline was not up to date (use --prepare)")
    floor, _ = _time([*dvc, "version"], args.repo, args.repeats)
    print(f"dvc repro, nothing changed: {noop:.2f} s (median of {args.repeats}); target < 3 s")
    print(f"dvc version (start-up floor): {floor:.2f} s")
    print(f"ratio no-op repro / start-up floor: {noop / floor:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
