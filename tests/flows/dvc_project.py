"""A tiny real DVC project (no git) for the pipeline / deployment tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

STAGE_SCRIPT = '''
import json, pathlib, sys
root = pathlib.Path(".")
count = root / "runs.txt"
count.write_text(count.read_text() + "x" if count.exists() else "x")
text = (root / "data" / "input.txt").read_text()
(root / "data" / "out").mkdir(parents=True, exist_ok=True)
(root / "data" / "out" / "result.txt").write_text(text.upper())
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("metrics/eval.json").write_text(json.dumps({"promoted": 1, "mean": {"auc": 0.75}}))  # numbers only
pathlib.Path("metrics/eval.info.json").write_text(json.dumps({"run_id": "run-123", "model_version": "4"}))
if "FAIL" in text:
    sys.exit(3)
'''

DVC_YAML = '''stages:
  evaluate:
    cmd: python stage.py
    deps:
      - data/input.txt
      - stage.py
    outs:
      - data/out
      - metrics/eval.info.json:
          cache: false
    metrics:
      - metrics/eval.json:
          cache: false
'''


def make_dvc_project(root: Path, *, with_remote: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=root, check=True)
    if with_remote:
        subprocess.run(
            [dvc, "remote", "add", "-d", "local", str(root.parent / f"{root.name}-remote")], cwd=root, check=True
        )
    (root / "stage.py").write_text(STAGE_SCRIPT)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "input.txt").write_text("hello\n")
    (root / "params.yaml").write_text("profile: demo\n")
    return root
