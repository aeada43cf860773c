"""Does the method work? Global CLIP vs fine-grained fVLM (+ normal positives, + co-teaching), equal steps.

Usage::

    .venv/bin/python experiments/ablation.py --cohort-seed 1 --out data/ablation
    # = --studies 120 --steps 300 --seeds 0 1 2 --split 0.6 0.2 0.2: the demo's cohort and recipe
    #   (params.yaml; the table in docs/learnability.md), about 40 min on 2 idle cores

1. A scratch work dir (``--work``, default ``OUT/work``) gets its own ``params.yaml`` (the repo's, with
   the profile's split / demo_data edited) and the synthetic cohort is built there with the ``fvlm`` CLI:
   ``demo-data -> convert -> segment (precomputed phantom masks) -> parse-reports -> shard``. A stage
   whose output is already there for the same cohort settings is reused (``WORK/cohort_done.json``).
2. For each seed, four variants are trained at the same number of steps (``fvlm train --no-tracking``):
   ``clip`` (global CLIP loss), ``fvlm`` (fine-grained, normal_positives=false, co-teaching off),
   ``fvlm+np`` (+ normal false-negative targets), ``fvlm+np+ct`` (+ co-teaching, alpha 0.5); each with its
   own params file ``WORK/params_<variant>_s<seed>.yaml`` (``train.seed`` = the seed).
3. Each model is evaluated zero-shot on the test split (``fvlm evaluate --no-promote --no-tracking``).
4. For each seed the supervised probe (``training/trainer/probe.py``: the same image encoder + a linear
   head trained with BCE on the train split's labels, same steps) is scored on the same test labels: the
   ceiling row of the table (``--no-probe`` skips it).
5. A table per variant is printed and written to ``OUT/ablation.md``: test mean AUC (mean +- std and the
   t-interval over seeds, the mean of the runs' bootstrap CIs) and the difference to CLIP paired by seed
   with its t-interval; every run's numbers (per-label AUC, first-10 / last-10 loss) go to ``OUT/ablation.json``.

The cohort is the same for every seed: the seeds vary model initialisation, data order and augmentation.
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

REPO_ROOT = Path(__file__).resolve().parent.parent

VARIANTS: dict[str, dict[str, Any]] = {
    "clip": {"loss": "clip", "normal_positives": False, "coteaching_alpha": 0.0},
    "fvlm": {"loss": "fvlm", "normal_positives": False, "coteaching_alpha": 0.0},
    "fvlm+np": {"loss": "fvlm", "normal_positives": True, "coteaching_alpha": 0.0},
    "fvlm+np+ct": {"loss": "fvlm", "normal_positives": True, "coteaching_alpha": 0.5},
}
VARIANT_TITLES = {
    "probe": "ceiling: supervised probe (same encoder + linear head, BCE on the labels)",
    "clip": "global CLIP (`train.loss=clip`)",
    "fvlm": "fine-grained (`loss=fvlm`, `normal_positives=false`, `coteaching_alpha=0`)",
    "fvlm+np": "+ normal false-negative targets (`normal_positives=true`)",
    "fvlm+np+ct": "+ co-teaching (`coteaching_alpha=0.5`)",
}


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
) -> dict[str, Any]:
    """Build (or reuse) the synthetic cohort and its shards in WORK; returns the cohort record."""
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
            ],
        ),
        ("convert", ["convert", "data/demo/dicom", "data/converted"]),
        ("segment", ["segment", "data/converted", "data/segmented", "--masks", "data/demo/masks"]),
        ("parse-reports", ["parse-reports", "data/demo/reports.csv", "data/reports/reports.parquet"]),
        ("shard", ["shard"]),
    ]
    for name, args in stages:
        if name == "demo-data" and demo_cohort_matches(work / "data" / "demo", studies, cohort_seed, difficulty):
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


def variant_params(work: Path, variant: str, seed: int, steps: int) -> Path:
    """WORK/params_<variant>_s<seed>.yaml: the cohort params with the variant's train keys and seed."""
    params = load_yaml(work / "params.yaml")
    for key, value in VARIANTS[variant].items():
        set_key(params, "train", key, value)
    set_key(params, "train", "seed", seed)
    set_key(params, "train", "steps", steps)
    set_key(params, "train", "checkpoint_every", max(steps, 1))
    set_key(params, "evaluate", "seed", seed)
    path = work / f"params_{variant.replace('+', '_')}_s{seed}.yaml"
    write_yaml(path, params)
    return path


def train_and_evaluate(work: Path, variant: str, seed: int, steps: int, log: Path) -> dict[str, Any]:
    """One training run + its zero-shot test evaluation; returns the run's numbers."""
    params = variant_params(work, variant, seed, steps)
    run_dir = work / "runs" / f"{variant.replace('+', '_')}_s{seed}"
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
    return {
        "variant": variant,
        "seed": seed,
        "steps": steps,
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


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of VALUES (None below two values)."""
    import math

    from scipy import stats

    if len(values) < 2:
        return None
    mean, sd = statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1)) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def clipped(bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """An AUC interval kept inside [0, 1]."""
    return None if bounds is None else (max(0.0, bounds[0]), min(1.0, bounds[1]))


def summarise(runs: list[dict[str, Any]], variants: list[str]) -> dict[str, dict[str, Any]]:
    """Per variant (and the probe): mean, std and t-interval of the test mean-AUC over seeds; the paired
    difference to CLIP on the same seeds with its t-interval; the mean of the runs' bootstrap CIs."""

    def finite(value: Any) -> bool:
        return not math_isnan(value)

    summary: dict[str, dict[str, Any]] = {}
    clip_by_seed = {r["seed"]: r["mean_auc"] for r in runs if r["variant"] == "clip" and finite(r["mean_auc"])}
    for variant in [*variants, *(["probe"] if any(r["variant"] == "probe" for r in runs) else [])]:
        rows = [r for r in runs if r["variant"] == variant]
        values = [r["mean_auc"] for r in rows]
        good = [v for v in values if finite(v)]
        diffs = [
            r["mean_auc"] - clip_by_seed[r["seed"]] for r in rows if finite(r["mean_auc"]) and r["seed"] in clip_by_seed
        ]
        cis = [r["mean_auc_ci"] for r in rows if r.get("mean_auc_ci") and all(finite(c) for c in r["mean_auc_ci"])]
        summary[variant] = {
            "n": len(good),
            "n_runs": len(values),
            "mean": statistics.fmean(good) if good else float("nan"),
            "std": statistics.stdev(good) if len(good) > 1 else 0.0,
            "seed_ci95": clipped(t_interval(good)),
            "bootstrap_ci95_mean": [statistics.fmean(c[0] for c in cis), statistics.fmean(c[1] for c in cis)]
            if cis
            else None,
            "values": values,
            "delta_vs_clip": statistics.fmean(diffs) if diffs and variant != "clip" else float("nan"),
            "delta_vs_clip_ci95": t_interval(diffs) if variant != "clip" else None,
            "paired_delta_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
        }
    return summary


def _interval(bounds: Any, scale: float = 1.0, digits: int = 3) -> str:
    return "—" if not bounds else f"[{scale * bounds[0]:.{digits}f}, {scale * bounds[1]:.{digits}f}]"


def markdown_table(summary: dict[str, dict[str, Any]], seeds: list[int]) -> str:
    lines = [
        "| variant | test mean AUC, mean ± std over seeds | 95 % CI over seeds | mean bootstrap 95 % CI of a run "
        "| Δ vs CLIP, AUC points (95 % CI, paired by seed) | per seed |",
        "|---|---|---|---|---|---|",
    ]
    for variant, row in summary.items():
        per_seed = ", ".join(fmt(v) for v in row["values"])
        if variant == "clip" or math_isnan(row["delta_vs_clip"]):
            delta = "—"
        else:
            delta = f"{100 * row['delta_vs_clip']:+.1f} {_interval(row['delta_vs_clip_ci95'], 100, 1)}"
        lines.append(
            f"| {VARIANT_TITLES[variant]} | {row['mean']:.3f} ± {row['std']:.3f} | {_interval(row['seed_ci95'])} "
            f"| {_interval(row['bootstrap_ci95_mean'])} | {delta} | {per_seed} |"
        )
    return "\n".join(lines)


def math_isnan(value: float) -> bool:
    import math

    return value is None or math.isnan(value)


def probe_ceiling(work: Path, seed: int, steps: int, log_every: int = 0) -> dict[str, Any]:
    """The supervised probe on the same shards: the run's image encoder, each label's anatomy tokens pooled
    (mean | max) into a linear head trained with BCE on the train split's labels for STEPS steps, scored on
    the test split's zero-shot labels (the ceiling of what the image side can learn here;
    training/trainer/probe.py)."""
    import numpy as np
    import torch

    from core.config import load_config
    from training.metrics import bootstrap_auc
    from training.models.model import vision_encoder
    from training.models.zero_shot import zero_shot_spec
    from training.trainer.data import ShardDataset
    from training.trainer.probe import ProbeStudy, fit_probe, label_anatomies

    config = load_config(work / "params.yaml")
    torch.manual_seed(seed)

    def studies(split: str) -> tuple[list[ProbeStudy], tuple[str, ...], list[np.ndarray]]:
        dataset = ShardDataset.from_dir(work / "data" / "shards", split, crop_zyx=config.grid.crop_zyx, mode="eval")
        rows = [row for unit in dataset.units for row in dataset.read_unit(unit)]
        return (
            [
                ProbeStudy(row["hu_volume"], row["anatomy_mask"], np.clip(row["labels"], 0, 1).astype(np.float32))
                for row in rows
            ],
            dataset.label_names,
            [row["labels"] for row in rows],
        )

    train, label_names, _ = studies("train")
    test, _, test_truth = studies("test")
    spec = zero_shot_spec(config.segment.anatomy_set)
    started = time.perf_counter()
    result = fit_probe(
        vision_encoder(config.model.vision, config.grid.crop_zyx),
        train,
        test,
        label_names=list(label_names),
        crop_zyx=config.grid.crop_zyx,
        hu_window=config.grid.hu_window,
        steps=steps,
        batch_size=config.train.batch_size,
        lr=2 * config.train.lr,
        flip_prob=config.grid.flip_prob,
        seed=seed,
        log_every=log_every,
        label_anatomy=label_anatomies(config.segment.anatomy_set, label_names),
    )
    scored = [label for label in spec.labels if not math_isnan(result.test_auc.get(label, float("nan")))]
    columns = [list(label_names).index(label) for label in scored]
    truth = np.stack(test_truth)[:, columns]
    interval = bootstrap_auc(truth, result.test_scores[:, columns], config.evaluate.bootstrap, seed=seed)["mean"]
    return {
        "variant": "probe",
        "seed": seed,
        "steps": steps,
        "mean_auc": float(np.mean([result.test_auc[label] for label in scored])) if scored else None,
        "mean_auc_ci": list(interval),
        "per_label_auc": {label: result.test_auc[label] for label in scored},
        "train_mean_auc": result.train_mean_auc,
        "n_test": len(test),
        "scored_labels": scored,
        "loss_first10": float(np.mean(result.losses[:10])),
        "loss_last10": float(np.mean(result.losses[-10:])),
        "train_wall_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=120, help="synthetic cohort size (the demo's)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (all variants; the demo's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--out", default="data/ablation", help="results dir (ablation.json, ablation.md)")
    parser.add_argument("--work", default=None, help="scratch dir for the cohort and runs (default: OUT/work)")
    parser.add_argument("--params", default=str(REPO_ROOT / "params.yaml"), help="params.yaml to start from")
    parser.add_argument("--cohort-seed", type=int, default=0, help="seed of the synthetic cohort and split")
    parser.add_argument(
        "--split",
        type=float,
        nargs=3,
        default=[0.6, 0.2, 0.2],
        metavar=("TRAIN", "VAL", "TEST"),
        help="patient split fractions (a large test split makes the AUC less noisy)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override train.batch_size")
    parser.add_argument(
        "--crop",
        type=int,
        nargs=3,
        default=None,
        metavar=("Z", "Y", "X"),
        help="override grid.crop_zyx (voxels of the profile's grid)",
    )
    parser.add_argument("--lr", type=float, default=None, help="override train.lr")
    parser.add_argument("--warmup-steps", type=int, default=None, help="override train.warmup_steps")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--workers", type=int, default=2, help="processes for cohort generation and conversion")
    parser.add_argument(
        "--no-probe", dest="probe", action="store_false", help="skip the supervised probe (the table's ceiling row)"
    )
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO_ROOT))
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "ablation.log"
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
    try:
        cohort = prepare_cohort(work, base_params, args.studies, args.cohort_seed, tuple(args.split), args.workers, log)
        if train_overrides:  # a reused cohort keeps its params.yaml; these are training keys
            params = load_yaml(work / "params.yaml")
            for key, value in train_overrides.items():
                set_key(params, "train", key, value)
            write_yaml(work / "params.yaml", params)
        runs: list[dict[str, Any]] = []
        for seed in args.seeds:
            for variant in args.variants:
                print(f"seed {seed}: training {variant} for {args.steps} steps ...", flush=True)
                result = train_and_evaluate(work, variant, seed, args.steps, log)
                runs.append(result)
                print(
                    f"  {variant} seed {seed}: test mean AUC {fmt(result['mean_auc'])} on {result['n_test']} "
                    f"studies; final loss {fmt(result['final_loss_avg'])}; train {result['train_wall_s']:.0f} s, "
                    f"eval {result['eval_wall_s']:.0f} s",
                    flush=True,
                )
            if args.probe:
                print(f"seed {seed}: supervised probe (ceiling) for {args.steps} steps ...", flush=True)
                result = probe_ceiling(work, seed, args.steps)
                runs.append(result)
                print(
                    f"  probe seed {seed}: test mean AUC {fmt(result['mean_auc'])} on {result['n_test']} studies "
                    f"(train {fmt(result['train_mean_auc'])}); {result['train_wall_s']:.0f} s",
                    flush=True,
                )
    except RuntimeError as error:
        print(f"ablation: {error}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - started
    summary = summarise(runs, args.variants)
    config_params = load_yaml(work / "params.yaml")
    profile = config_params.get("profile")
    batch_size = config_params.get("train", {}).get("batch_size")
    command = "python experiments/ablation.py --studies {s} --steps {t} --seeds {seeds}{bs}".format(
        s=args.studies,
        t=args.steps,
        seeds=" ".join(map(str, args.seeds)),
        bs=(f" --batch-size {args.batch_size}" if args.batch_size else "")
        + (f" --crop {' '.join(map(str, args.crop))}" if args.crop else "")
        + (f" --lr {args.lr:g}" if args.lr is not None else "")
        + (f" --warmup-steps {args.warmup_steps}" if args.warmup_steps is not None else "")
        + (f" --cohort-seed {args.cohort_seed}" if args.cohort_seed != parser.get_default("cohort_seed") else "")
        + (f" --variants {' '.join(args.variants)}" if args.variants != list(VARIANTS) else ""),
    )
    n_test = runs[0]["n_test"] if runs else None
    header = (
        f"`{command}` — cohort {args.studies} synthetic studies (profile `{profile}`, cohort seed "
        f"{args.cohort_seed}, split {'/'.join(map(str, args.split))}, {n_test} test studies), "
        f"{args.steps} steps of batch {batch_size} per run, seeds {', '.join(map(str, args.seeds))}; "
        f"wall {wall / 60:.1f} min (cohort {'reused; first built in' if cohort.get('reused') else 'built in'} "
        f"{cohort['wall_s']:.0f} s)."
    )
    table = markdown_table(summary, args.seeds)
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
                "seeds": args.seeds,
                "batch_size": batch_size,
                "split": args.split,
                "cohort_seed": args.cohort_seed,
                "wall_s": round(wall, 1),
                "cohort": cohort,
                "summary": summary,
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
