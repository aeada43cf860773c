"""Training-loop overhead: `training.trainer.loop.train` vs a bare optimisation loop on the same model and batches.

Peers measured in the same run (same model, batches, threads):

* ``bare``: forward + fVLM loss + backward + clip + AdamW step, nothing else;
* ``train()``: the real loop (schedule, NaN guard, token counting, checkpoint at the end, model save),
  tracking off;
* ``train()+mlflow``: the same with MLflow on a local SQLite store in a temp dir (per-step metrics, params,
  checkpoints and the pyfunc model logged, a registry version created).

Prints samples/s of each and the ratios against ``bare``; MLflow's fixed cost (run setup, model logging,
registration) is reported separately from its per-step cost.

    .venv/bin/python benchmarks/train_loop.py [--steps 20] [--profile demo]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_samples(n: int, crop_zyx: tuple[int, int, int], n_anatomies: int, seed: int = 0) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    z, y, x = crop_zyx
    samples = []
    for index in range(n):
        volume = rng.random((1, z, y, x), dtype=np.float32)
        mask = np.zeros((z, y, x), dtype=np.uint8)
        for k in range(n_anatomies):
            mask[:, (k * y) // n_anatomies : ((k + 1) * y) // n_anatomies, x // 4 : 3 * x // 4] = k + 1
        abnormal = rng.random(n_anatomies) < 0.4
        texts = [
            ("Abnormal finding in anatomy %d." if a else "Anatomy %d is normal.") % k for k, a in enumerate(abnormal)
        ]
        samples.append(
            {
                "volume": volume,
                "mask": mask,
                "anatomy_intact": np.ones(n_anatomies, bool),
                "anatomy_abnormal": abnormal,
                "anatomy_text": texts,
                "labels": np.zeros(18, np.int8),
                "report_text": " ".join(texts),
                "study_id": f"s{index}",
            }
        )
    return samples


def bare_loop(config, source, anatomy_names, steps: int, tokenizer_dir: str) -> float:  # noqa: ANN001
    import torch

    from training.models.model import build_model
    from training.trainer.step import LossModule, param_groups

    torch.manual_seed(0)
    model = build_model(config.model, anatomy_names, config.grid.crop_zyx, tokenizer_dir=tokenizer_dir)
    loss_module = LossModule(model, config.train, gather=False)
    optimizer = torch.optim.AdamW(param_groups(model, config.train.weight_decay), lr=config.train.lr)
    batches = list(source.iter_epoch(0))
    seconds, samples = 0.0, 0
    for step in range(steps + 1):
        batch = batches[step % len(batches)]
        started = time.perf_counter()
        loss, _ = loss_module(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.grad_clip)
        optimizer.step()
        if step > 0:  # step 0 = warm-up, as in train()
            seconds += time.perf_counter() - started
            samples += batch["volume"].shape[0]
    return samples / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", default="demo")
    args = parser.parse_args()

    import torch

    from core.config import load_config
    from core.env import apply_offline_env
    from training.models.text import build_tokenizer
    from training.trainer.batch import InMemoryBatches
    from training.trainer.job import TrainJob
    from training.trainer.loop import train

    apply_offline_env()
    base = load_config(REPO / "params.yaml", profile=args.profile)
    anatomy_names = ("lung", "heart", "esophagus", "aorta")
    crop = tuple(base.grid.crop_zyx)
    batch_size = base.train.batch_size
    samples = synthetic_samples(batch_size * 4, crop, len(anatomy_names))
    print(
        f"profile {args.profile}: crop {crop}, batch {batch_size}, vision {base.model.vision.embed_dim}x"
        f"{base.model.vision.depth}, {torch.get_num_threads()} threads, {args.steps} steps"
    )

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        source = InMemoryBatches(samples, batch_size, seed=0)
        tokenizer_dir = root / "tokenizer"
        build_tokenizer(source.texts(), base.model.text.vocab_size, tokenizer_dir)

        def configured(tracking: bool):  # noqa: ANN202
            update_train = base.train.model_copy(update={"checkpoint_every": 10**6, "steps": args.steps})
            update_tracking = base.tracking.model_copy(
                update={
                    "enabled": tracking,
                    "mlflow_tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
                    "artifact_location": str(root / "artifacts"),
                }
            )
            return base.model_copy(update={"train": update_train, "tracking": update_tracking, "root": root})

        def run_train(tracking: bool, name: str) -> tuple[float, float]:
            out = root / name
            out.mkdir()
            (out / "tokenizer").symlink_to(tokenizer_dir, target_is_directory=True)
            started = time.perf_counter()
            result = train(TrainJob.from_config(configured(tracking), out=out, steps=args.steps), source, anatomy_names)
            return result.samples_per_s, time.perf_counter() - started

        bare = bare_loop(configured(False), source, anatomy_names, args.steps, str(tokenizer_dir))
        loop, loop_wall = run_train(False, "plain")
        tracked, tracked_wall = run_train(True, "mlflow")

    step_seconds = batch_size / bare
    print(f"bare loop        {bare:8.2f} samples/s   (1.00)")
    print(f"train()          {loop:8.2f} samples/s   ({loop / bare:.2f} of bare)   wall {loop_wall:.1f} s")
    print(f"train()+mlflow   {tracked:8.2f} samples/s   ({tracked / bare:.2f} of bare)   wall {tracked_wall:.1f} s")
    fixed = tracked_wall - loop_wall
    print(
        f"MLflow fixed cost (run, params, checkpoints, pyfunc log + register): ~{fixed:.1f} s "
        f"(= {fixed / step_seconds:.0f} bare steps)"
    )
    if not all(math.isfinite(v) for v in (bare, loop, tracked)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
