"""Does the method work, on cohorts nobody tuned on? CLIP vs fVLM vs fVLM + each 2025-26 ingredient, equal steps.

Usage::

    .venv/bin/python experiments/ablation.py --out data/ablation
    # = --studies 120 --steps 300 --split 0.6 0.2 0.2 (the demo's cohort size and recipe, params.yaml),
    #   text from the 800 real CT-RATE reports of ../shared when present (--synthetic-text: the generator's),
    #   development cohort seed 0 / training seed 0, 3 report cohort seeds x 2 training seeds drawn fresh

The protocol (issue #27): nothing is chosen on the split or the seeds it reports.

1. **Cohorts.** Per cohort seed, a scratch dir ``WORK/cohort_<seed>`` gets its own ``params.yaml`` (the
   repo's, with ``split.seed`` = ``demo_data.seed`` = the cohort seed) and the cohort is built there with
   the ``fvlm`` CLI: ``demo-data [--reports CSV --labels CSV] -> convert -> segment (precomputed phantom
   masks) -> parse-reports -> shard``. With real reports each phantom is drawn from one report's 18 labels
   and carries that report's text, so the model reads free text, not the generator's sentences.
2. **Development phase** (``--dev-cohort-seeds``, ``--dev-train-seeds``): fVLM as published (normal
   positives + co-teaching) and fVLM + each ingredient of :data:`INGREDIENTS` (label supervision, sigmoid
   loss, cross-anatomy term, co-teaching off), each a ``train.*`` params key. The *best combination* is
   fVLM + every ingredient whose **validation** mean AUC beats fVLM's on the development runs.
3. **Report phase** (``--report-cohort-seeds``, ``--report-train-seeds``; by default drawn fresh with
   :mod:`secrets` once per OUT and kept in ``OUT/report_seeds.json``): CLIP, fVLM, each ingredient and the
   best combination on every (cohort, training seed). Each model is evaluated once (``fvlm evaluate
   --no-promote``: val and test, every prompt set of core/prompt_sets.yaml); test is reported, never compared.
4. **Intervals**: a two-level bootstrap (:func:`cohort_bootstrap`) over cohorts and, within each drawn cohort,
   its test studies (the same draw for every variant: paired), of each variant's mean test AUC and of its
   difference to CLIP and to fVLM. ``OUT/ablation.md`` (the table) and ``OUT/ablation.json`` (every run:
   val / test mean AUC, per-label AUC, prompt-set AUCs, loss first-10 / last-10, wall times).

A finished run (``runs/<variant>_s<seed>/result.json``) and a prepared cohort are reused: a killed
benchmark resumes, and two invocations with different ``--variants`` on the same OUT share their runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

# what each variant sets on top of params.yaml's train section (equal steps for all)
PUBLISHED_FVLM: dict[str, Any] = {
    "loss": "fvlm",
    "normal_positives": True,
    "coteaching_alpha": 0.5,
    "contrastive": "softmax",
    "label_loss_weight": 0.0,
    "cross_anatomy_weight": 0.0,
}
# one ingredient each, as fixed a priori (not tuned): the label loss at the contrastive terms' weight,
# the cross-anatomy term at half of it
INGREDIENTS: dict[str, dict[str, Any]] = {
    "labels": {"label_loss_weight": 1.0},
    "sigmoid": {"contrastive": "sigmoid"},
    "cross": {"cross_anatomy_weight": 0.5},
    "no-ct": {"coteaching_alpha": 0.0},  # co-teaching off: what the EMA self-distillation adds, measured
}
VARIANTS: dict[str, dict[str, Any]] = {
    "clip": {**PUBLISHED_FVLM, "loss": "clip", "normal_positives": False, "coteaching_alpha": 0.0},
    "fvlm": dict(PUBLISHED_FVLM),
    **{f"fvlm+{name}": {**PUBLISHED_FVLM, **keys} for name, keys in INGREDIENTS.items()},
}
VARIANT_TITLES = {
    "clip": "global CLIP (`loss=clip`, no normal positives, no co-teaching)",
    "fvlm": "fVLM as published (`loss=fvlm`, `normal_positives`, co-teaching `alpha=0.5`)",
    "fvlm+labels": "fVLM + label supervision (`label_loss_weight=1`)",
    "fvlm+sigmoid": "fVLM + sigmoid loss (`contrastive=sigmoid`)",
    "fvlm+cross": "fVLM + cross-anatomy term (`cross_anatomy_weight=0.5`)",
    "fvlm+no-ct": "fVLM without co-teaching (`coteaching_alpha=0`)",
}
DEV_VARIANTS = ["fvlm", *(f"fvlm+{name}" for name in INGREDIENTS)]


def best_variant(ingredients: list[str]) -> dict[str, Any]:
    """The train keys of fVLM + every ingredient in INGREDIENTS (the 'best' row: chosen on dev val)."""
    keys = dict(PUBLISHED_FVLM)
    for name in ingredients:
        keys.update(INGREDIENTS[name])
    return keys


def fvlm_env() -> dict[str, str]:
    """The environment for `fvlm` subprocesses: the venv's bin first, no FVLM_* / MLflow overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FVLM_") and k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_fvlm(params: Path, args: list[str], log: Path) -> float:
    """Run `python -m fvlm.cli --params PARAMS ARGS...` in the work dir; output to LOG; returns wall seconds."""
    command = [sys.executable, "-m", "fvlm.cli", "--params", str(params), *args]
    started = time.perf_counter()
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        result = subprocess.run(command, cwd=params.parent, env=fvlm_env(), stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise RuntimeError(f"`fvlm {' '.join(args)}` failed (exit {result.returncode}); log {log}:\n{tail}")
    return wall


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    from core.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def set_key(params: dict[str, Any], section: str, key: str, value: Any) -> None:
    """Set SECTION.KEY (params.yaml holds the values that run: no profile is merged over them)."""
    params.setdefault(section, {})[key] = value


def demo_cohort_matches(demo_dir: Path, studies: int, seed: int, difficulty: str = "learnable") -> bool:
    """True when DEMO_DIR holds a finished `fvlm demo-data` cohort of STUDIES studies from SEED at DIFFICULTY."""
    cohort_file = demo_dir / "cohort.json"
    if not cohort_file.is_file():
        return False
    try:
        cohort = json.loads(cohort_file.read_text())
    except json.JSONDecodeError:
        return False
    records = cohort.get("studies")
    count = len(records) if isinstance(records, list) else records
    same_difficulty = cohort.get("difficulty", "paper") == difficulty  # cohorts before the option were "paper"
    return cohort.get("seed") == seed and count == studies and same_difficulty and (demo_dir / "reports.csv").is_file()


def prepare_cohort(
    work: Path,
    base_params: dict[str, Any],
    studies: int,
    cohort_seed: int,
    split: tuple[float, float, float],
    workers: int,
    log: Path,
    reports: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """Build (or reuse) the synthetic cohort and its shards in WORK; returns the cohort record. With
    REPORTS (reports CSV, labels CSV), each phantom is drawn from one real report's labels and carries its
    text (``fvlm demo-data --reports --labels``)."""
    work.mkdir(parents=True, exist_ok=True)
    params = copy.deepcopy(base_params)
    params["paths"] = {
        **params.get("paths", {}),
        "data_dir": "data",
        "demo_dir": "data/demo",
        "raw_dicom": "data/demo/dicom",
        "reports_csv": "data/demo/reports.csv",
        "labels_csv": "data/demo/labels.csv",
        "precomputed_masks": "data/demo/masks",
        "converted": "data/converted",
        "segmented": "data/segmented",
        "reports_table": "data/reports/reports.parquet",
        "shards": "data/shards",
        "models": "data/models",
        "metrics": "metrics",
    }
    train_fraction, val_fraction, test_fraction = split
    params["split"] = {
        **params.get("split", {}),
        "train": train_fraction,
        "val": val_fraction,
        "test": test_fraction,
        "seed": cohort_seed,
    }
    params["segment"] = {**params.get("segment", {}), "backend": "precomputed", "qc_pictures": False}
    params["convert"] = {**params.get("convert", {}), "workers": workers}
    params["tracking"] = {**params.get("tracking", {}), "enabled": False}
    difficulty = (params.get("demo_data") or {}).get("difficulty", "learnable")
    wanted = {
        "studies": studies,
        "cohort_seed": cohort_seed,
        "split": list(split),
        "difficulty": difficulty,
        "profile": params.get("profile"),
        "grid": params.get("grid"),
        "reports": [str(path) for path in reports] if reports else None,
    }
    marker = work / "cohort_done.json"
    params_path = work / "params.yaml"
    if (
        marker.is_file()
        and json.loads(marker.read_text()).get("settings") == json.loads(json.dumps(wanted))
        and params_path.is_file()
    ):
        record = json.loads(marker.read_text())
        print(f"reusing cohort in {work} ({studies} studies, prepared in {record['wall_s']:.0f} s)", flush=True)
        return {**record, "reused": True}
    write_yaml(params_path, params)
    started = time.perf_counter()
    stage_walls: dict[str, float] = {}
    stages = [
        (
            "demo-data",
            [
                "demo-data",
                "data/demo",
                "--studies",
                str(studies),
                "--seed",
                str(cohort_seed),
                "--workers",
                str(workers),
                *(["--reports", str(reports[0]), "--labels", str(reports[1])] if reports else []),
            ],
        ),
        ("convert", ["convert", "data/demo/dicom", "data/converted"]),
        ("segment", ["segment", "data/converted", "data/segmented", "--masks", "data/demo/masks"]),
        ("parse-reports", ["parse-reports", "data/demo/reports.csv", "data/reports/reports.parquet"]),
        ("shard", ["shard"]),
    ]
    # a generated cohort already there is kept (with real reports it is written again: the source may differ)
    keep_demo_data = not reports and demo_cohort_matches(work / "data" / "demo", studies, cohort_seed, difficulty)
    for name, args in stages:
        if name == "demo-data" and keep_demo_data:
            print("cohort: reusing the generated demo cohort", flush=True)
            continue
        print(f"cohort: fvlm {name} ...", flush=True)
        stage_walls[name] = round(run_fvlm(params_path, args, log), 1)
    from core.layout import shard_manifest

    manifest_path = shard_manifest(work / "data" / "shards")
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    record = {
        "settings": wanted,
        "wall_s": round(time.perf_counter() - started, 1),
        "stage_wall_s": stage_walls,
        "shard_metrics": json.loads((work / "metrics" / "shard.json").read_text())
        if (work / "metrics" / "shard.json").is_file()
        else {},
        "manifest_splits": manifest.get("splits") or manifest.get("counts"),
    }
    from core.io import atomic_write_text

    atomic_write_text(marker, json.dumps(record, indent=2) + "\n")
    return record


def variant_params(work: Path, variant: str, keys: dict[str, Any], seed: int, steps: int) -> Path:
    """WORK/params_<variant>_s<seed>.yaml: the cohort params with the variant's train KEYS and seed."""
    params = load_yaml(work / "params.yaml")
    for key, value in keys.items():
        set_key(params, "train", key, value)
    set_key(params, "train", "seed", seed)
    set_key(params, "train", "steps", steps)
    set_key(params, "train", "checkpoint_every", max(steps, 1))
    set_key(params, "evaluate", "seed", seed)
    path = work / f"params_{slug(variant)}_s{seed}.yaml"
    write_yaml(path, params)
    return path


def slug(variant: str) -> str:
    return variant.replace("+", "_").replace("-", "_")


def train_and_evaluate(
    work: Path, variant: str, keys: dict[str, Any], seed: int, steps: int, log: Path
) -> dict[str, Any]:
    """One training run + its zero-shot evaluation (val and test); returns the run's numbers. A finished
    run (its result.json, same keys) is reused: a killed benchmark resumes."""
    params = variant_params(work, variant, keys, seed, steps)
    run_dir = work / "runs" / f"{slug(variant)}_s{seed}"
    done = run_dir / "result.json"
    if done.is_file() and json.loads(done.read_text()).get("keys") == json.loads(json.dumps(keys)):
        return json.loads(done.read_text())
    for leftover in ("train.json", "eval.json"):
        (run_dir / leftover).unlink(missing_ok=True)
    train_wall = run_fvlm(
        params,
        [
            "train",
            "--shards",
            "data/shards",
            "--out",
            str(run_dir / "model_out"),
            "--steps",
            str(steps),
            "--metrics",
            str(run_dir / "train.json"),
            "--no-tracking",
        ],
        log,
    )
    eval_wall = run_fvlm(
        params,
        [
            "evaluate",
            "--shards",
            "data/shards",
            "--model",
            str(run_dir / "model_out" / "model"),
            "--out",
            str(run_dir / "eval"),
            "--metrics",
            str(run_dir / "eval.json"),
            "--no-promote",
            "--no-tracking",
        ],
        log,
    )
    train_metrics = json.loads((run_dir / "train.json").read_text())
    eval_metrics = json.loads((run_dir / "eval.json").read_text())
    report = json.loads((run_dir / "eval" / "eval_report.json").read_text())
    losses = loss_curve(run_dir / "plots" / "train_loss.csv")
    prompt_sets = report.get("prompt_sets") or {}
    result = {
        "variant": variant,
        "keys": keys,
        "seed": seed,
        "steps": steps,
        "val_mean_auc": report.get("val_mean_auc"),
        "study_scores": str(run_dir / "eval" / "study_scores.npz"),
        "prompt_sets": {name: entry.get("test_mean_auc") for name, entry in (prompt_sets.get("sets") or {}).items()},
        "mean_auc": eval_metrics.get("mean_auc", report.get("mean_auc")),
        "mean_auc_ci": eval_metrics.get("mean_auc_ci", report.get("mean_auc_ci")),
        "per_label_auc": eval_metrics.get("per_label_auc", {}),
        "n_test": report.get("n_test"),
        "scored_labels": report.get("scored_labels"),
        "skipped_labels": report.get("skipped_labels"),
        "final_loss": train_metrics.get("final_loss"),
        "final_loss_avg": train_metrics.get("final_loss_avg"),
        "loss_first10": statistics.fmean(losses[:10]) if losses else None,
        "loss_last10": statistics.fmean(losses[-10:]) if losses else None,
        "samples_per_s": train_metrics.get("samples_per_s"),
        "train_wall_s": round(train_wall, 1),
        "eval_wall_s": round(eval_wall, 1),
    }
    from core.io import atomic_write_text

    atomic_write_text(done, json.dumps(result, indent=2, default=str) + "\n")
    return result


def loss_curve(path: Path) -> list[float]:
    """The per-step training losses `fvlm train` wrote (``<metrics dir>/plots/train_loss.csv``)."""
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def fmt(value: float | None) -> str:
    """A metric with 3 decimals; 'n/a' for a missing one (e.g. every test label had a single class)."""
    return "n/a" if value is None else f"{value:.3f}"


def run_auc_matrix(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(test truth, test scores, study ids) of one run from its study_scores.npz."""
    with np.load(run["study_scores"]) as data:
        return data["test_truth"], data["test_scores"], [str(x) for x in data["test_ids"]]


def cohort_bootstrap(
    runs: list[dict[str, Any]], variants: list[str], resamples: int, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Two-level bootstrap of each variant's mean test AUC and of every variant's difference to `clip`
    and to `fvlm`: each resample draws the cohorts with replacement, then each drawn cohort's test studies
    with replacement (the same draw for every variant and training seed of that cohort: paired), and
    averages the runs' mean AUCs. The interval therefore holds cohort-to-cohort and test-sampling noise
    as well as the training seeds' spread."""
    from training.evaluation.evaluate import split_mean_auc

    rng = np.random.default_rng(seed)
    by_cohort: dict[int, dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]] = {}
    for run in runs:
        truth, scores, _ = run_auc_matrix(run)
        by_cohort.setdefault(int(run["cohort_seed"]), {})[(run["variant"], int(run["seed"]))] = (truth, scores)
    cohorts = sorted(by_cohort)
    replicate_means: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(resamples):
        sums = {v: [] for v in variants}
        for cohort in rng.choice(cohorts, size=len(cohorts), replace=True):
            cells = by_cohort[int(cohort)]
            n = next(iter(cells.values()))[0].shape[0]
            rows = rng.integers(0, n, size=n)
            for (variant, _seed), (truth, scores) in cells.items():
                if variant in sums:
                    sums[variant].append(split_mean_auc(truth[rows], scores[rows]))
        for variant, values in sums.items():
            finite = [v for v in values if np.isfinite(v)]
            replicate_means[variant].append(float(np.mean(finite)) if finite else float("nan"))
    low, high = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values: list[float]) -> list[float] | None:
        finite = np.array([v for v in values if np.isfinite(v)])
        return [float(np.percentile(finite, low)), float(np.percentile(finite, high))] if finite.size else None

    point = {
        v: float(
            np.mean([split_mean_auc(*cell) for cells in by_cohort.values() for (w, _), cell in cells.items() if w == v])
        )
        for v in variants
    }
    out: dict[str, Any] = {}
    for variant in variants:
        entry: dict[str, Any] = {"mean": point[variant], "ci95": interval(replicate_means[variant])}
        for reference in ("clip", "fvlm"):
            if reference in replicate_means and variant != reference:
                deltas = [a - b for a, b in zip(replicate_means[variant], replicate_means[reference], strict=True)]
                entry[f"delta_vs_{reference}"] = point[variant] - point[reference]
                entry[f"delta_vs_{reference}_ci95"] = interval(deltas)
        entry["per_run"] = {
            f"c{c}/s{s}": round(split_mean_auc(*cell), 4)
            for c, cells in by_cohort.items()
            for (w, s), cell in cells.items()
            if w == variant
        }
        out[variant] = entry
    return {"cohorts": cohorts, "resamples": resamples, "level": level, "variants": out}


def _points(delta: float | None, bounds: list[float] | None) -> str:
    if delta is None or bounds is None:
        return "—"
    return f"{100 * delta:+.1f} [{100 * bounds[0]:+.1f}, {100 * bounds[1]:+.1f}]"


def markdown_table(summary: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | test mean AUC (95 % CI: cohorts x test studies) | Δ vs CLIP, points | Δ vs fVLM, points "
        "| val mean AUC | prompt sets: mean [min, max] | per cohort/seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, row in summary["variants"].items():
        mine = [r for r in runs if r["variant"] == variant]
        vals = [r["val_mean_auc"] for r in mine if r.get("val_mean_auc") is not None]
        set_means = [
            statistics.fmean(v for v in r["prompt_sets"].values() if v is not None and not math_isnan(v))
            for r in mine
            if r.get("prompt_sets")
        ]
        set_mins = [min(v for v in r["prompt_sets"].values() if v is not None) for r in mine if r.get("prompt_sets")]
        set_maxs = [max(v for v in r["prompt_sets"].values() if v is not None) for r in mine if r.get("prompt_sets")]
        spread = (
            f"{statistics.fmean(set_means):.3f} [{statistics.fmean(set_mins):.3f}, {statistics.fmean(set_maxs):.3f}]"
            if set_means
            else "—"
        )
        per_run = ", ".join(f"{key} {value:.3f}" for key, value in row["per_run"].items())
        lines.append(
            f"| {VARIANT_TITLES.get(variant, variant)} | {row['mean']:.3f} {_interval(row['ci95'])} "
            f"| {_points(row.get('delta_vs_clip'), row.get('delta_vs_clip_ci95'))} "
            f"| {_points(row.get('delta_vs_fvlm'), row.get('delta_vs_fvlm_ci95'))} "
            f"| {statistics.fmean(vals) if vals else float('nan'):.3f} | {spread} | {per_run} |"
        )
    return "\n".join(lines)


def _interval(bounds: Any, scale: float = 1.0, digits: int = 3) -> str:
    return "—" if not bounds else f"[{scale * bounds[0]:.{digits}f}, {scale * bounds[1]:.{digits}f}]"


def choose_best(dev_runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    """The ingredients whose validation mean AUC beats fVLM's, paired by (cohort, seed), on the dev runs:
    the 'best' combination is fVLM + all of them (selection on validation of development cohorts only)."""
    gains: dict[str, float] = {}
    reference = {(r["cohort_seed"], r["seed"]): r["val_mean_auc"] for r in dev_runs if r["variant"] == "fvlm"}
    for name in INGREDIENTS:
        paired = [
            r["val_mean_auc"] - reference[(r["cohort_seed"], r["seed"])]
            for r in dev_runs
            if r["variant"] == f"fvlm+{name}" and (r["cohort_seed"], r["seed"]) in reference
        ]
        if paired:
            gains[name] = statistics.fmean(paired)
    return [name for name, gain in gains.items() if gain > 0], gains


def math_isnan(value: float) -> bool:
    import math

    return value is None or math.isnan(value)


SHARED_REPORTS = REPO_ROOT.parent / "shared" / "data" / "ct_clip" / "text_classifier" / "data" / "train.csv"


def fresh_seeds(count: int) -> list[int]:
    """COUNT seeds nobody chose: drawn from the OS's entropy at run time (printed and recorded)."""
    import secrets

    return [secrets.randbelow(10**6) for _ in range(count)]


def run_grid(
    phase: str,
    cohort_seeds: list[int],
    train_seeds: list[int],
    variants: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    base_params: dict[str, Any],
    work_root: Path,
    reports: tuple[Path, Path] | None,
    train_overrides: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (cohort seed, training seed, variant) run of one phase; returns (runs, cohort records)."""
    runs: list[dict[str, Any]] = []
    cohorts: list[dict[str, Any]] = []
    for cohort_seed in cohort_seeds:
        work = work_root / f"cohort_{cohort_seed}"
        log = work / "ablation.log"
        work.mkdir(parents=True, exist_ok=True)
        print(f"[{phase}] cohort seed {cohort_seed}: preparing {args.studies} studies ...", flush=True)
        cohort = prepare_cohort(
            work, base_params, args.studies, cohort_seed, tuple(args.split), args.workers, log, reports
        )
        cohorts.append({"cohort_seed": cohort_seed, **cohort})
        if train_overrides:  # a reused cohort keeps its params.yaml; these are training keys
            params = load_yaml(work / "params.yaml")
            for key, value in train_overrides.items():
                set_key(params, "train", key, value)
            write_yaml(work / "params.yaml", params)
        for seed in train_seeds:
            for variant, keys in variants.items():
                result = train_and_evaluate(work, variant, keys, seed, args.steps, log)
                result.update({"cohort_seed": cohort_seed, "phase": phase})
                runs.append(result)
                print(
                    f"  [{phase}] cohort {cohort_seed} seed {seed} {variant}: val {fmt(result['val_mean_auc'])}, "
                    f"test {fmt(result['mean_auc'])} ({result['n_test']} studies); loss "
                    f"{fmt(result['loss_first10'])} -> {fmt(result['loss_last10'])}; "
                    f"train {result['train_wall_s']:.0f} s",
                    flush=True,
                )
    return runs, cohorts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=120, help="cohort size per cohort seed (the demo's)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (all variants; the demo's)")
    parser.add_argument("--out", default="data/ablation", help="results dir (ablation.json, ablation.md)")
    parser.add_argument("--work", default=None, help="scratch dir for the cohorts and runs (default: OUT/work)")
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"), help="params.yaml to start from")
    parser.add_argument(
        "--reports",
        type=Path,
        default=SHARED_REPORTS if SHARED_REPORTS.is_file() else None,
        help="real reports CSV with the 18 labels (default: the 800 CT-RATE reports of ../shared when present)",
    )
    parser.add_argument("--labels", type=Path, default=None, help="labels CSV of --reports (default: --reports)")
    parser.add_argument(
        "--synthetic-text", action="store_true", help="the generator's template reports instead of --reports"
    )
    parser.add_argument("--phase", choices=("dev", "report", "all"), default="all")
    parser.add_argument(
        "--dev-cohort-seeds", type=int, nargs="+", default=[0], help="development cohorts (choose the best combination)"
    )
    parser.add_argument("--dev-train-seeds", type=int, nargs="+", default=[0], help="development training seeds")
    parser.add_argument(
        "--report-cohort-seeds", type=int, nargs="+", default=None, help="report cohorts (default: drawn fresh)"
    )
    parser.add_argument(
        "--report-train-seeds", type=int, nargs="+", default=None, help="report training seeds (default: drawn fresh)"
    )
    parser.add_argument("--report-cohorts", type=int, default=3, help="how many report cohort seeds to draw")
    parser.add_argument("--report-train", type=int, default=2, help="how many report training seeds to draw")
    parser.add_argument(
        "--best",
        nargs="*",
        choices=list(INGREDIENTS),
        default=None,
        help="the best combination's ingredients, skipping the dev selection (none: fVLM itself)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=[*VARIANTS, "best"],
        choices=[*VARIANTS, "best"],
        help="report-phase variants",
    )
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples of the two-level bootstrap")
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=[0.6, 0.2, 0.2],
        metavar=("TRAIN", "VAL", "TEST"),
        help="patient split fractions",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    parser.add_argument(
        "--crop", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"), help="override grid.crop_zyx"
    )
    parser.add_argument("--lr", type=float, default=None, help="override train.lr")
    parser.add_argument("--warmup-steps", type=int, default=None, help="override train.warmup_steps")
    parser.add_argument("--workers", type=int, default=2, help="processes for cohort generation and conversion")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    out = Path(args.out).resolve()
    work_root = Path(args.work).resolve() if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work_root.mkdir(parents=True, exist_ok=True)
    reports = None
    if not args.synthetic_text and args.reports is not None:
        reports = (args.reports.resolve(), (args.labels or args.reports).resolve())
    text_source = f"real reports {reports[0].name} ({reports[0]})" if reports else "the generator's template reports"
    started = time.perf_counter()
    base_params = load_yaml(Path(args.params))
    if args.crop:
        set_key(base_params, "grid", "crop_zyx", list(args.crop))
    train_overrides = {
        key: value
        for key, value in (("batch_size", args.batch_size), ("lr", args.lr), ("warmup_steps", args.warmup_steps))
        if value is not None
    }
    for key, value in train_overrides.items():
        set_key(base_params, "train", key, value)
    drawn_file = out / "report_seeds.json"  # seeds drawn once per OUT: a resumed or split run keeps them
    if drawn_file.is_file():
        drawn = json.loads(drawn_file.read_text())
    else:
        drawn = {"cohort": fresh_seeds(args.report_cohorts), "train": fresh_seeds(args.report_train)}
        if not (args.report_cohort_seeds and args.report_train_seeds):
            from core.io import atomic_write_text

            atomic_write_text(drawn_file, json.dumps(drawn) + "\n")
    report_cohorts = args.report_cohort_seeds or drawn["cohort"]
    report_train = args.report_train_seeds or drawn["train"]
    overlap = set(report_cohorts) & set(args.dev_cohort_seeds)
    if overlap and args.phase != "dev":
        print(f"ablation: report cohort seeds {sorted(overlap)} are development seeds; pick others", file=sys.stderr)
        return 2
    print(
        f"ablation: text from {text_source}; development cohort seeds {args.dev_cohort_seeds} "
        f"(training seeds {args.dev_train_seeds}); report cohort seeds {report_cohorts} "
        f"(training seeds {report_train}, {'given' if args.report_cohort_seeds else 'drawn fresh'})",
        flush=True,
    )
    dev_runs: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    cohorts: list[dict[str, Any]] = []
    best = args.best
    gains: dict[str, float] = {}
    try:
        if args.phase in ("dev", "all") and best is None:
            dev_variants = {name: VARIANTS[name] for name in DEV_VARIANTS}
            dev_runs, dev_cohorts = run_grid(
                "dev",
                args.dev_cohort_seeds,
                args.dev_train_seeds,
                dev_variants,
                args,
                base_params,
                work_root,
                reports,
                train_overrides,
            )
            cohorts += dev_cohorts
            best, gains = choose_best(dev_runs)
            print(f"dev: validation gains over fVLM {gains}; best = fVLM + {best or 'nothing'}", flush=True)
        if args.phase in ("report", "all"):
            variants = {
                name: (best_variant(best or []) if name == "best" else VARIANTS[name]) for name in args.variants
            }
            runs, report_cohort_records = run_grid(
                "report",
                report_cohorts,
                report_train,
                variants,
                args,
                base_params,
                work_root,
                reports,
                train_overrides,
            )
            cohorts += report_cohort_records
    except RuntimeError as error:
        print(f"ablation: {error}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    report_variants = list(dict.fromkeys(r["variant"] for r in runs))
    summary = cohort_bootstrap(runs, report_variants, args.bootstrap) if runs else {"variants": {}}
    compute_min = sum(r.get("train_wall_s", 0) + r.get("eval_wall_s", 0) for r in [*dev_runs, *runs]) / 60
    if best is not None:
        VARIANT_TITLES["best"] = f"best on development validation: fVLM + {' + '.join(best) or 'nothing'}"
    command = "python experiments/ablation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    n_test = sorted({r["n_test"] for r in runs}) if runs else []
    header = (
        f"`{command}` — {args.studies} phantom studies per cohort, text from {text_source}; split "
        f"{'/'.join(map(str, args.split))} ({'/'.join(map(str, n_test))} test studies per cohort); {args.steps} "
        f"steps per run.\n\n"
        f"- development cohort seeds {args.dev_cohort_seeds}, training seeds {args.dev_train_seeds}: used only to "
        f"choose the best combination, on validation (gains over fVLM: "
        f"{', '.join(f'{k} {100 * v:+.1f}' for k, v in gains.items()) or 'not run'}; best = fVLM + "
        f"{', '.join(best) if best else 'nothing'})\n"
        f"- report cohort seeds {report_cohorts}, training seeds {report_train} "
        f"({'given' if args.report_cohort_seeds else 'drawn fresh at run time'}): the table; test scored once per run\n"
        f"- intervals: {args.bootstrap}-resample two-level bootstrap (cohorts, then each cohort's test studies; "
        f"paired across variants); compute {compute_min:.0f} min of training + evaluation over "
        f"{len(runs) + len(dev_runs)} runs (this invocation {wall / 60:.1f} min; finished runs are reused)."
    )
    table = markdown_table(summary, runs) if runs else "(no report runs)"
    text = header + "\n\n" + table + "\n"
    from core.io import atomic_write_text

    atomic_write_text(out / "ablation.md", text)
    atomic_write_text(
        out / "ablation.json",
        json.dumps(
            {
                "command": command,
                "studies": args.studies,
                "steps": args.steps,
                "text": text_source,
                "split": args.split,
                "dev_cohort_seeds": args.dev_cohort_seeds,
                "dev_train_seeds": args.dev_train_seeds,
                "report_cohort_seeds": report_cohorts,
                "report_train_seeds": report_train,
                "best": best,
                "dev_val_gains": gains,
                "wall_s": round(wall, 1),
                "cohorts": cohorts,
                "summary": summary,
                "dev_runs": dev_runs,
                "runs": runs,
            },
            indent=2,
            default=str,
        )
        + "\n",
    )
    print()
    print(text)
    print(f"results: {out / 'ablation.json'}, {out / 'ablation.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
