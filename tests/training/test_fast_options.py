"""``train.compile`` / ``train.fused_optimizer`` (the fast path's two options) and the train-step benchmark's
profiles: the keys validate, default off, a short training with each option matches the plain run, and
``benchmarks/train_step.py --paper`` builds the paper profile from params.paper.yaml."""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
import torch

from core.config import ConfigError, TrainConfig, config_from_dict, load_config
from training.trainer.batch import InMemoryBatches
from training.trainer.job import TrainJob
from training.trainer.loop import train
from training.trainer.step import make_adamw

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------- the keys
def test_keys_default_off_and_validate() -> None:
    assert TrainConfig().compile is False and TrainConfig().fused_optimizer is False
    repo = load_config(REPO / "params.yaml")
    assert repo.train.compile is False and repo.train.fused_optimizer is False  # existing runs unchanged
    on = config_from_dict({"train": {"compile": True, "fused_optimizer": True}}, environ={})
    assert on.train.compile is True and on.train.fused_optimizer is True
    with pytest.raises(ConfigError, match="compile"):
        config_from_dict({"train": {"compile": "sometimes"}}, environ={})
    with pytest.raises(ConfigError, match="fused_optimizer"):
        config_from_dict({"train": {"fused_optimizer": [1]}}, environ={})


def test_fused_adamw_on_cpu_and_the_fallback(caplog) -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    assert make_adamw([weight], 1e-3, fused=True).defaults["fused"] is True
    assert not make_adamw([weight], 1e-3).defaults.get("fused")
    # a device without the fused kernel (meta): the plain AdamW, and one log line saying so
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    with caplog.at_level(logging.WARNING, logger="training.trainer.step"):
        optimizer = make_adamw(({"params": [meta], "weight_decay": 0.0} for _ in range(1)), 1e-3, fused=True)
    assert not optimizer.defaults.get("fused") and len(optimizer.param_groups[0]["params"]) == 1
    lines = [r.getMessage() for r in caplog.records if "fused_optimizer" in r.getMessage()]
    assert len(lines) == 1 and "plain AdamW" in lines[0]


# ------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def samples(make_samples) -> list[dict]:
    return make_samples(8, seed=2)


def _two_steps(tmp_path: Path, name: str, samples: list[dict], anatomies, tiny_config, **train_keys):
    """A 2-step run; every run shares one tokenizer (the WordPiece trainer orders ties arbitrarily)."""
    config = tiny_config(tmp_path, train={"checkpoint_every": 100, **train_keys})
    source = InMemoryBatches(samples, batch_size=4, seed=0)
    shared = tmp_path / "tokenizer"
    if not shared.is_dir():
        from training.models.text import build_tokenizer

        build_tokenizer(source.texts(), config.model.text.vocab_size, shared)
    shutil.copytree(shared, tmp_path / name / "tokenizer")
    result = train(
        TrainJob.from_config(config, out=tmp_path / name, steps=2), source, anatomies, corpus_texts=source.texts()
    )
    from training.models.model import FVLM

    return result, FVLM.from_pretrained(tmp_path / name / "model").state_dict()


def test_fused_adamw_training_matches_the_plain_one(tmp_path: Path, samples, anatomies, tiny_config) -> None:
    plain, plain_state = _two_steps(tmp_path, "plain", samples, anatomies, tiny_config)
    fused, fused_state = _two_steps(tmp_path, "fused", samples, anatomies, tiny_config, fused_optimizer=True)
    assert len(fused.losses) == 2 and all(math.isfinite(v) for v in fused.losses)
    assert fused.losses[0] == plain.losses[0]  # before any optimiser step: the same function
    assert fused.losses[1] == pytest.approx(plain.losses[1], abs=1e-5)
    assert fused_state.keys() == plain_state.keys()
    diffs = {key: float((fused_state[key].float() - value.float()).abs().max()) for key, value in plain_state.items()}
    # a key projection's bias shifts every logit of a softmax alike: its gradient is 0 up to rounding, which
    # Adam's normalisation turns into steps of up to lr, so the two kernels' roundings show there (~2e-5)
    rounding_only = {key for key in diffs if key.endswith(("k_proj.bias", "key.bias"))}
    assert {key: d for key, d in diffs.items() if key not in rounding_only and d > 1e-5} == {}
    assert max(diffs[key] for key in rounding_only) < 1e-4


@pytest.mark.slow
def test_compiled_training_matches_the_plain_one(tmp_path: Path, samples, anatomies, tiny_config) -> None:
    """Inductor on CPU compiles C++ (gcc): tens of seconds on a loaded machine."""
    plain, plain_state = _two_steps(tmp_path, "plain", samples, anatomies, tiny_config)
    compiled, compiled_state = _two_steps(tmp_path, "compiled", samples, anatomies, tiny_config, compile=True)
    assert len(compiled.losses) == 2 and all(math.isfinite(v) for v in compiled.losses)
    assert compiled.losses == pytest.approx(plain.losses, rel=1e-4, abs=1e-4)
    assert compiled_state.keys() == plain_state.keys()  # compiled in place: checkpoints load into an eager model
    for key, value in plain_state.items():
        torch.testing.assert_close(compiled_state[key], value, rtol=1e-3, atol=1e-4, msg=key)


# ------------------------------------------------------------------------------------------- the benchmark
def test_benchmark_tiny_profile_follows_params_yaml(load_benchmark) -> None:
    module = load_benchmark("train_step")
    params = load_config(REPO / "params.yaml")
    config, model_cfg = module.make_config(True, None, False)
    assert model_cfg.vision.kind == params.model.vision.kind and tuple(config.grid.crop_zyx) == params.grid.crop_zyx
    _, vit = module.make_config(True, None, False, encoder="vit")
    assert vit.vision.kind == "vit" and vit.vision.conv_peak_channels == 0
    assert vit.vision.embed_dim == model_cfg.vision.embed_dim and vit.vision.patch_zyx == model_cfg.vision.patch_zyx


def test_benchmark_runs_the_options_on_cpu(load_benchmark, tmp_path: Path, capsys) -> None:
    import json

    module = load_benchmark("train_step")
    argv = ["--tiny", "--batch-size", "1", "--steps", "1", "--warmup", "0", "--fused", "--no-flops"]
    assert module.main([*argv, "--json", str(tmp_path / "out.json")]) == 0
    printed = capsys.readouterr().out
    assert "ratio fast+fused/fast samples/s" in printed and "ratio fast/faithful samples/s" in printed
    payload = json.loads((tmp_path / "out.json").read_text())
    assert set(payload["results"]) == {"fast", "fast+fused", "faithful"}
    losses = {name: figures["loss"] for name, figures in payload["results"].items()}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["fast+fused"] == pytest.approx(losses["fast"], abs=1e-5)  # one step from the same weights


def test_benchmark_paper_profile_parses_and_builds(load_benchmark, tmp_path: Path) -> None:
    """``--paper`` is params.paper.yaml applied to a scratch copy (params.yaml untouched), with a random
    BERT-base text tower; the model builds (no forward: minutes on a CPU)."""
    module = load_benchmark("train_step")
    before = (REPO / "params.yaml").read_bytes()
    args = module.parse_args(["--paper", "--steps", "1", "--batch-size", "1"])
    assert args.paper and args.batch == 1 and args.steps == 1
    config, model_cfg = module.make_config(not args.paper, None, False)
    assert (REPO / "params.yaml").read_bytes() == before
    assert config.profile == "paper" and tuple(config.grid.crop_zyx) == (112, 256, 352)
    vision, text = model_cfg.vision, model_cfg.text
    assert (vision.kind, vision.embed_dim, vision.depth, tuple(vision.patch_zyx)) == ("vit", 768, 12, (16, 16, 32))
    assert (text.name_or_path, text.hidden, text.layers, text.vocab_size) == (None, 768, 12, 30522)
    from training.models.text import build_tokenizer

    corpus = [sentence for group in module.SENTENCES for sentence in group]
    build_tokenizer(corpus, text.vocab_size, tmp_path / "tokenizer")
    model = module.build(model_cfg, tuple(config.grid.crop_zyx), str(tmp_path / "tokenizer"))
    params = sum(p.numel() for p in model.parameters())
    assert 150e6 < params < 200e6, params  # ViT-B + BERT-base shape (docs/model.md: 182 M)
