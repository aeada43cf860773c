"""Can the demo model learn the synthetic labels at all? Lesion visibility on the model input + a supervised probe.

Usage::

    python experiments/learnability.py --difficulty learnable paper --encoders conv vit \
        --studies 200 --steps 300 --out data/learnability
    python experiments/learnability.py --visibility-only --difficulty paper learnable

1. **Visibility** (per label): ``--per-label`` phantoms with only that finding forced on, each next to the
   same patient without it (same anatomy, same noise: only the lesion differs). Both go through the shard
   stage's preparation (``segmentation.model_grid.prepare_model_grid``: ROI crop + resampling to
   ``grid.spacing_zyx_mm``, on the lesion-free study's mask so the grids coincide), the loader's evaluation
   crop (``grid.crop_zyx``, centred on the anatomies) and the HU window. Reported: how many model voxels
   the lesion changes by >= ``--threshold-hu`` HU (after windowing) and the mean / max |change| there.
2. **Probe**: a cohort of ``--studies`` phantoms (the same per-study generator as ``fvlm demo-data``),
   prepared the same way, split by patient (``--test-fraction``), and ``training.trainer.probe.fit_probe`` with
   each encoder of ``--encoders`` (the demo profile's ``model.vision``, ``kind`` switched). Test AUC per
   label, train / test mean.

Skipping DICOM and NIfTI is lossless here: the converter's output equals ``Phantom.hu_zyx`` voxel for voxel
(tests/preprocessing/test_synthetic.py) and the Parquet shards store the prepared arrays unchanged.
Prepared cohorts are cached in ``OUT/cache`` (npz). Results: ``OUT/learnability.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_REPORTS = REPO_ROOT.parent / "shared" / "data" / "ct_clip" / "text_classifier" / "data" / "train.csv"
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def demo_config(params: str | None = None) -> Any:
    from core.config import load_config

    return load_config(params or REPO_ROOT / "params.yaml", profile="demo")


def _prepare(hu_zyx: np.ndarray, ids_zyx: np.ndarray, affine: np.ndarray, grid: Any, anatomy_set: str):
    from segmentation.model_grid import prepare_model_grid

    return prepare_model_grid(
        hu_zyx.transpose(2, 1, 0),
        ids_zyx.transpose(2, 1, 0),
        anatomy_set,
        tuple(grid.spacing_zyx_mm),
        grid.roi_margin_slices,
        grid.roi_margin_voxels,
        affine=affine,
    )


def prepared_study(job: tuple[int, int, str, dict[str, Any], str, dict[str, int] | None]) -> dict[str, Any]:
    """One cohort study on the model grid: {hu, anatomy, labels, patient}; with a labels dict (one real
    report's 18 labels) the phantom draws exactly those findings."""
    import torch

    torch.set_num_threads(1)
    from core.anatomy_sets import CTRATE_LABELS
    from core.config import GridConfig
    from synthetic.patients import patient_index
    from synthetic.phantom import make_phantom

    seed, index, difficulty, grid_raw, anatomy_set, labels = job
    grid = GridConfig.model_validate(grid_raw)
    phantom = make_phantom(seed, index, "demo", labels=labels, difficulty=difficulty)
    model_grid = _prepare(phantom.hu_zyx, phantom.labels_zyx, phantom.affine_ras, grid, anatomy_set)
    return {
        "hu": np.asarray(model_grid.hu_zyx, dtype=np.int16),
        "anatomy": np.asarray(model_grid.anatomy_index_zyx, dtype=np.uint8),
        "labels": np.array([phantom.labels[n] for n in CTRATE_LABELS], dtype=np.float32),
        "patient": patient_index(seed, index),
    }


def _pool_map(function: Any, jobs: list[Any], workers: int) -> list[Any]:
    if workers <= 1:
        return [function(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(function, jobs, chunksize=4))


def load_cohort(
    cache: Path,
    seed: int,
    studies: int,
    difficulty: str,
    config: Any,
    workers: int,
    reports: tuple[Path, Path] | None = None,
) -> list[dict[str, Any]]:
    """Prepared studies 0..studies-1 of cohort ``seed`` (cached as one npz per study). With REPORTS
    (reports CSV, labels CSV) study i draws the findings of one real report (``synthetic.cohort
    .pick_sources``, the same draw as ``fvlm demo-data --reports``): real label prevalence and co-occurrence."""
    from synthetic.cohort import GENERATOR_VERSION, pick_sources, read_source_reports

    spacing = "x".join(f"{s:g}" for s in config.grid.spacing_zyx_mm)
    source_tag = f"_real{reports[0].stem}" if reports else ""
    folder = cache / f"{difficulty}_v{GENERATOR_VERSION}_s{seed}_{spacing}{source_tag}"  # a new generator: a new cache
    drawn: list[dict[str, int] | None] = [None] * studies
    if reports:
        drawn = [dict(source.labels) for source in pick_sources(read_source_reports(*reports), studies, seed)]
    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in range(studies) if not (folder / f"{i:04d}.npz").is_file()]
    if missing:
        started = time.perf_counter()
        grid_raw = config.grid.model_dump(mode="json")
        jobs = [(seed, i, difficulty, grid_raw, config.segment.anatomy_set, drawn[i]) for i in missing]
        for index, record in zip(missing, _pool_map(prepared_study, jobs, workers), strict=False):
            np.savez(folder / f"{index:04d}.npz", **record)
        print(f"  prepared {len(missing)} {difficulty} studies in {time.perf_counter() - started:.0f} s", flush=True)
    out = []
    for i in range(studies):
        with np.load(folder / f"{i:04d}.npz") as data:
            out.append({key: data[key] for key in data.files})
    return out


# ------------------------------------------------------------------------------------------ visibility
def visibility_job(job: tuple[int, int, str, str, dict[str, Any], str, float]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from core.config import GridConfig
    from synthetic.phantom import make_phantom
    from training.trainer.transforms import centred_starts, extract_crop, label_centre

    seed, index, label, difficulty, grid_raw, anatomy_set, threshold = job
    grid = GridConfig.model_validate(grid_raw)
    normal = make_phantom(seed, index, "demo", labels={}, difficulty=difficulty)
    lesion = make_phantom(seed, index, "demo", labels={label: 1}, difficulty=difficulty)
    drawn = bool(lesion.labels.get(label))
    base = _prepare(normal.hu_zyx, normal.labels_zyx, normal.affine_ras, grid, anatomy_set)
    with_lesion = _prepare(lesion.hu_zyx, normal.labels_zyx, lesion.affine_ras, grid, anatomy_set)
    centre = label_centre(base.anatomy_index_zyx) or tuple((n - 1) / 2.0 for n in base.hu_zyx.shape)
    starts = centred_starts(base.hu_zyx.shape, grid.crop_zyx, centre)
    window = tuple(grid.hu_window)
    a, _, _ = extract_crop(np.asarray(base.hu_zyx), np.asarray(base.anatomy_index_zyx), starts, grid.crop_zyx, window)
    b, _, _ = extract_crop(
        np.asarray(with_lesion.hu_zyx), np.asarray(base.anatomy_index_zyx), starts, grid.crop_zyx, window
    )
    delta = np.abs(b - a) * float(window[1] - window[0])  # HU after windowing
    # the same lesion at native resolution (before resampling / crop / window), for comparison
    native = np.abs(lesion.hu_zyx.astype(np.float32) - normal.hu_zyx.astype(np.float32))
    footprint = delta >= threshold
    return {
        "label": label,
        "drawn": drawn,
        "voxels": int(footprint.sum()),
        "mean_hu": float(delta[footprint].mean()) if footprint.any() else 0.0,
        "max_hu": float(delta.max()),
        "native_voxels": int((native >= threshold).sum()),
        "native_max_hu": float(native.max()),
    }


def visibility(
    difficulty: str, config: Any, per_label: int, threshold: float, workers: int, seed: int = 900
) -> dict[str, dict[str, float]]:
    from core.anatomy_sets import CTRATE_LABELS

    grid_raw = config.grid.model_dump(mode="json")
    jobs = [
        (seed, i, label, difficulty, grid_raw, config.segment.anatomy_set, threshold)
        for label in CTRATE_LABELS
        for i in range(per_label)
    ]
    started = time.perf_counter()
    rows = _pool_map(visibility_job, jobs, workers)
    print(f"  visibility ({difficulty}): {len(jobs)} pairs in {time.perf_counter() - started:.0f} s", flush=True)
    out: dict[str, dict[str, float]] = {}
    for label in CTRATE_LABELS:
        mine = [r for r in rows if r["label"] == label and r["drawn"]]
        out[label] = {
            "n": len(mine),
            "voxels": float(np.median([r["voxels"] for r in mine])) if mine else float("nan"),
            "mean_hu": float(np.median([r["mean_hu"] for r in mine])) if mine else float("nan"),
            "max_hu": float(np.median([r["max_hu"] for r in mine])) if mine else float("nan"),
            "native_voxels": float(np.median([r["native_voxels"] for r in mine])) if mine else float("nan"),
        }
    return out


# ------------------------------------------------------------------------------------------ probe
def split_by_patient(records: list[dict[str, Any]], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    patients = sorted({int(r["patient"]) for r in records})
    rng = np.random.default_rng(seed)
    test_patients = set(rng.choice(patients, size=max(1, round(test_fraction * len(patients))), replace=False).tolist())
    test = [i for i, r in enumerate(records) if int(r["patient"]) in test_patients]
    train = [i for i, r in enumerate(records) if int(r["patient"]) not in test_patients]
    return train, test


def run_probe(
    records: list[dict[str, Any]],
    config: Any,
    encoder_kind: str,
    steps: int,
    batch_size: int,
    lr: float,
    test_fraction: float,
    seed: int,
    log_every: int,
    pooling: str = "anatomy",
) -> dict[str, Any]:
    import torch

    from core.anatomy_sets import CTRATE_LABELS
    from training.models.model import vision_encoder
    from training.trainer.probe import ProbeStudy, fit_probe, label_anatomies

    torch.manual_seed(seed)
    studies = [ProbeStudy(r["hu"], r["anatomy"], r["labels"]) for r in records]
    train_idx, test_idx = split_by_patient(records, test_fraction, seed)
    vision = config.model.vision.model_copy(update={"kind": encoder_kind})
    encoder = vision_encoder(vision, config.grid.crop_zyx)
    result = fit_probe(
        encoder,
        [studies[i] for i in train_idx],
        [studies[i] for i in test_idx],
        label_names=list(CTRATE_LABELS),
        crop_zyx=config.grid.crop_zyx,
        hu_window=config.grid.hu_window,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        flip_prob=config.grid.flip_prob,
        seed=seed,
        log_every=log_every,
        label_anatomy=label_anatomies(config.segment.anatomy_set, CTRATE_LABELS) if pooling == "anatomy" else None,
    )
    test_labels = np.stack([studies[i].labels for i in test_idx])
    return {
        "encoder": encoder_kind,
        "pooling": pooling,
        "steps": steps,
        "lr": lr,
        "batch_size": batch_size,
        "n_train": len(train_idx),
        "n_test": len(test_idx),
        "seconds": round(result.seconds, 1),
        "params": int(sum(p.numel() for p in encoder.parameters())),
        "test_auc": result.test_auc,
        "train_auc": result.train_auc,
        "test_mean_auc": result.test_mean_auc,
        "train_mean_auc": result.train_mean_auc,
        "test_positives": {n: int(c) for n, c in zip(CTRATE_LABELS, test_labels.sum(axis=0), strict=False)},
        "loss_first10": float(np.mean(result.losses[:10])),
        "loss_last10": float(np.mean(result.losses[-10:])),
    }


def _f(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    from core.anatomy_sets import CTRATE_LABELS

    lines = []
    vis = results.get("visibility", {})
    if vis:
        diffs = list(vis)
        lines.append(
            f"Lesion visibility on the model input (median over studies; footprint = model voxels changed by "
            f">= {results['threshold_hu']:g} HU after resampling to {results['spacing']} mm, crop {results['crop']} "
            f"and HU window {results['hu_window']}):\n"
        )
        header = "| label | " + " | ".join(f"{d}: voxels | {d}: mean / max Δ HU" for d in diffs) + " |"
        lines += [header, "|---|" + "---|---|" * len(diffs)]
        for label in CTRATE_LABELS:
            cells = []
            for d in diffs:
                row = vis[d][label]
                cells += [f"{_f(row['voxels'], 0)}", f"{_f(row['mean_hu'], 0)} / {_f(row['max_hu'], 0)}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    probes = results.get("probes", [])
    if probes:
        lines.append("Supervised probe (test AUC per label; `encoder -> mean|max over tokens -> linear`, BCE):\n")
        names = [f"{p['difficulty']} / {p['encoder']}" for p in probes]
        lines += ["| label | " + " | ".join(names) + " |", "|---|" + "---|" * len(probes)]
        for label in CTRATE_LABELS:
            cells = [f"{_f(p['test_auc'][label])} ({p['test_positives'][label]})" for p in probes]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("| **test mean AUC** | " + " | ".join(f"**{_f(p['test_mean_auc'], 3)}**" for p in probes) + " |")
        lines.append("| train mean AUC | " + " | ".join(_f(p["train_mean_auc"], 3) for p in probes) + " |")
        lines.append(
            "| BCE first-10 -> last-10 | "
            + " | ".join(f"{p['loss_first10']:.3f} -> {p['loss_last10']:.3f}" for p in probes)
            + " |"
        )
        lines.append(
            "| train / test studies, steps, s | "
            + " | ".join(f"{p['n_train']} / {p['n_test']}, {p['steps']}, {p['seconds']:.0f}" for p in probes)
            + " |"
        )
        lines.append("\n(in brackets: positives in the test split)\n")
        lines += [f"- {p['difficulty']} / {p['encoder']}: {target_verdict(p)}" for p in probes]
    return "\n".join(lines) + "\n"


# issue #13's bar for the learnable cohort: the probe's test mean AUC and its weakest label
TARGET_MEAN_AUC = 0.90
TARGET_LABEL_AUC = 0.75


def target_verdict(row: dict[str, Any]) -> str:
    """One line: does this probe reach test mean AUC >= 0.90 with every scored label >= 0.75?"""
    scored = {label: auc for label, auc in row["test_auc"].items() if auc is not None and not math.isnan(auc)}
    below = sorted((auc, label) for label, auc in scored.items() if auc < TARGET_LABEL_AUC)
    mean = float(row["test_mean_auc"])
    reached = mean >= TARGET_MEAN_AUC and not below
    weakest = min(scored.items(), key=lambda item: item[1]) if scored else ("-", float("nan"))
    detail = ", ".join(f"{label} {auc:.3f}" for auc, label in below) or f"weakest {weakest[0]} {weakest[1]:.3f}"
    return (
        f"target (mean >= {TARGET_MEAN_AUC:.2f}, each label >= {TARGET_LABEL_AUC:.2f}): "
        f"{'reached' if reached else 'not reached'}: mean {mean:.4f}, "
        f"{len(scored) - len(below)}/{len(scored)} labels >= {TARGET_LABEL_AUC:.2f} ({detail})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulty", nargs="+", default=["learnable", "paper"], choices=["learnable", "paper"])
    parser.add_argument("--encoders", nargs="+", default=["conv", "vit"], choices=["conv", "vit"])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="cohort seed")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--lr", type=float, nargs="+", default=None, help="probe lr per encoder (default: conv 2e-3, vit 5e-4)"
    )
    parser.add_argument("--test-fraction", type=float, default=0.3)
    parser.add_argument(
        "--pooling",
        choices=["anatomy", "global"],
        default="anatomy",
        help="probe head input: each label's anatomy tokens (fVLM's pooling) or every token",
    )
    parser.add_argument("--per-label", type=int, default=4, help="visibility: studies per label")
    parser.add_argument("--threshold-hu", type=float, default=30.0)
    parser.add_argument("--visibility-only", action="store_true")
    parser.add_argument("--no-visibility", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the probe")
    parser.add_argument("--params", default=None, help="params.yaml (demo profile is used)")
    parser.add_argument("--out", default="data/learnability")
    parser.add_argument(
        "--reports",
        type=Path,
        default=SHARED_REPORTS if SHARED_REPORTS.is_file() else None,
        help="probe cohort labels drawn from real reports (default: the 800 CT-RATE reports of ../shared when "
        "present; the labels CSV is the same file)",
    )
    parser.add_argument("--synthetic-labels", action="store_true", help="the generator's own label draw")
    args = parser.parse_args(argv)
    reports = None if args.synthetic_labels or args.reports is None else (args.reports, args.reports)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    config = demo_config(args.params)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "learnability.json"
    results: dict[str, Any] = json.loads(results_file.read_text()) if results_file.is_file() else {}
    results.update(
        {
            "threshold_hu": args.threshold_hu,
            "spacing": "x".join(f"{s:g}" for s in config.grid.spacing_zyx_mm),
            "crop": "x".join(str(c) for c in config.grid.crop_zyx),
            "hu_window": list(config.grid.hu_window),
        }
    )
    if not args.no_visibility:
        results.setdefault("visibility", {})
        for difficulty in args.difficulty:
            results["visibility"][difficulty] = visibility(
                difficulty, config, args.per_label, args.threshold_hu, args.workers
            )
        results_file.write_text(json.dumps(results, indent=1))
    if not args.visibility_only:
        default_lr = {"conv": 2e-3, "vit": 5e-4}
        lrs = args.lr or [default_lr[e] for e in args.encoders]
        probes = [p for p in results.get("probes", [])]
        for difficulty in args.difficulty:
            records = load_cohort(out / "cache", args.seed, args.studies, difficulty, config, args.workers, reports)
            for encoder, lr in zip(args.encoders, lrs, strict=False):
                print(f"probe: {difficulty} cohort, {encoder} encoder, lr {lr:g}, {args.steps} steps", flush=True)
                row = run_probe(
                    records,
                    config,
                    encoder,
                    args.steps,
                    args.batch_size,
                    lr,
                    args.test_fraction,
                    args.seed,
                    log_every=max(args.steps // 6, 1),
                    pooling=args.pooling,
                )
                row.update(
                    {
                        "difficulty": difficulty,
                        "studies": args.studies,
                        "cohort_seed": args.seed,
                        "labels_from": str(reports[0]) if reports else "generator",
                    }
                )
                probes = [p for p in probes if not (p["difficulty"] == difficulty and p["encoder"] == encoder)] + [row]
                results["probes"] = probes
                results_file.write_text(json.dumps(results, indent=1))
                print(
                    f"  test mean AUC {row['test_mean_auc']:.3f} (train "
                    f"{row['train_mean_auc']:.3f}), {row['seconds']:.0f} s",
                    flush=True,
                )
                print(f"  {target_verdict(row)}", flush=True)
    table = markdown(results)
    (out / "learnability.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
