"""fVLM model: pooling vs a naive loop, forward/backward on the demo profile, save/load, text towers."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import ModelConfig, load_config
from training.models.losses import clip_loss, fvlm_loss
from training.models.model import FVLM, build_model
from training.models.pooling import AnatomyPooling, mask_to_patch_grid
from training.models.text import build_tokenizer
from training.models.vit3d import ViT3D

ANATOMIES = ("lung", "heart", "esophagus", "aorta")
REPORTS = [
    "The lungs are clear. No pleural effusion.",
    "Heart size is enlarged. Pericardial effusion is seen.",
    "Esophagus is normal. Small hiatal hernia.",
    "Calcification of the aortic wall. Aorta diameter normal.",
    "A 5 mm nodule in the right upper lobe of the lung.",
]


@pytest.fixture(scope="module")
def demo_cfg(repo_root: Path):
    return load_config(repo_root / "params.yaml", profile="demo")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer(REPORTS * 5, 512, folder)  # words in >= vocab_min_patients (5) texts (each its own patient)
    return str(folder)


def _batch(crop_zyx, batch: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    volume = torch.rand(batch, 1, *crop_zyx, generator=generator)
    mask = torch.zeros(batch, *crop_zyx, dtype=torch.uint8)
    z, y, x = crop_zyx
    mask[:, : z // 2, : y // 2, : x // 2] = 1  # lung
    mask[:, z // 2 :, y // 2 :, x // 2 :] = 2  # heart
    mask[:, :, :4, -4:] = 4  # aorta: thin strip
    mask[0, :4, :4, :4] = 3  # esophagus only in sample 0
    return volume, mask


def _naive_membership(mask: torch.Tensor, anatomies: int, patch) -> torch.Tensor:
    batch, z, y, x = mask.shape
    pz, py, px = patch
    out = torch.zeros(batch, anatomies, (z // pz) * (y // py) * (x // px), dtype=torch.bool)
    for b in range(batch):
        token = 0
        for iz in range(z // pz):
            for iy in range(y // py):
                for ix in range(x // px):
                    block = mask[b, iz * pz : (iz + 1) * pz, iy * py : (iy + 1) * py, ix * px : (ix + 1) * px]
                    for k in range(anatomies):
                        out[b, k, token] = bool((block == k + 1).any())
                    token += 1
    return out


def test_mask_to_patch_grid_matches_naive_loop():
    mask = torch.randint(0, 4, (2, 8, 8, 12), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    mask[mask == 3] = 0
    mask[1, 5, 6, 7] = 3  # one voxel makes its whole patch member
    fast = mask_to_patch_grid(mask, 3, (4, 4, 6))
    torch.testing.assert_close(fast, _naive_membership(mask, 3, (4, 4, 6)))
    assert fast[1, 2].sum() == 1 and fast[0, 2].sum() == 0


def test_batched_pooling_equals_per_sample_loop():
    torch.manual_seed(0)
    pooling = AnatomyPooling(n_anatomies=4, token_dim=32, out_dim=16, heads=4)
    tokens = torch.randn(3, 20, 32)
    membership = torch.rand(3, 4, 20, generator=torch.Generator().manual_seed(1)) > 0.6
    membership[1, 2] = False  # absent anatomy
    membership[2, 0] = False
    membership[2, 0, 7] = True  # single token
    batched, present = pooling(tokens, membership)
    looped, present_loop = pooling.forward_loop(tokens, membership)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    assert torch.equal(present, present_loop)
    assert not present[1, 2] and torch.all(batched[1, 2] == 0)
    assert torch.isfinite(batched).all()
    norms = batched.norm(dim=-1)[present]
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_demo_forward_backward(demo_cfg, tokenizer_dir):
    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=tokenizer_dir)
    volume, mask = _batch(demo_cfg.grid.crop_zyx)
    anatomy_text = [
        ["lungs are clear", "heart normal", "", "aorta normal"],
        ["nodule in the lung", "heart enlarged", "", "aortic calcification"],
        ["lungs are clear", "heart normal", "", ""],
    ]
    out = model(volume, mask, anatomy_text, REPORTS[:3])
    batch, k, dim = 3, len(ANATOMIES), demo_cfg.model.embed_dim
    assert out["anatomy"].shape == (batch, k, dim) and out["text_anatomy"].shape == (batch, k, dim)
    assert out["global_"].shape == (batch, dim) and out["text_global"].shape == (batch, dim)
    assert out["anatomy_present"].tolist() == [
        [True, True, True, True],
        [True, True, False, True],
        [True, True, False, True],
    ]
    assert torch.all(out["text_anatomy"][:, 2] == 0)
    intact = out["anatomy_present"]
    abnormal = torch.tensor([[False] * 4, [True, True, False, True], [False] * 4])
    loss, per_anatomy = fvlm_loss(
        out["anatomy"],
        out["text_anatomy"],
        intact,
        abnormal,
        anatomy_text,
        model.logit_scale,
        True,
        None,
        0.0,
        False,
        anatomy_names=ANATOMIES,
    )
    loss = loss + clip_loss(out["global_"], out["text_global"], model.logit_scale)
    loss.backward()
    assert set(per_anatomy) == set(ANATOMIES) and torch.isfinite(loss)
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("vision."))
    assert grads["text.encoder.embeddings.word_embeddings.weight"].abs().sum() > 0
    assert grads["log_logit_scale"] is not None


def test_scratch_text_tower_separates_texts_at_init(demo_cfg, tokenizer_dir):
    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=tokenizer_dir).eval()
    assert model.text.pooling == "mean"  # auto: a random-init BERT's [CLS] state ignores the text
    with torch.no_grad():
        embeddings = model.encode_text(["lungs are clear", "heart enlarged", "small hiatal hernia"])
    cosine = embeddings @ embeddings.t()
    assert float(cosine[~torch.eye(3, dtype=torch.bool)].max()) < 0.99


def test_logit_scale_init_and_clamp(demo_cfg, tokenizer_dir):
    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=tokenizer_dir)
    assert math.isclose(float(model.logit_scale.detach()), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.log_logit_scale.fill_(20.0)
    assert math.isclose(float(model.logit_scale.detach()), 1000.0, rel_tol=1e-5)
    with torch.no_grad():
        model.log_logit_scale.fill_(-5.0)
    assert math.isclose(float(model.logit_scale.detach()), 2.0, rel_tol=1e-5)


def test_position_embedding_interpolates_to_other_grid():
    vit = ViT3D((16, 32, 32), (8, 16, 16), embed_dim=16, depth=2, heads=2, pool_layers=[1])
    final, levels, grid = vit(torch.rand(2, 1, 24, 48, 32))
    assert grid == (3, 3, 2) and final.shape == (2, 18, 16) and len(levels) == 1
    with pytest.raises(ValueError, match="not divisible"):
        vit(torch.rand(1, 1, 20, 32, 32))


def test_math_attention_and_checkpointing_match_sdpa():
    torch.manual_seed(0)
    vit = ViT3D((16, 32, 32), (8, 16, 16), embed_dim=16, depth=2, heads=2, pool_layers=[1, 2])
    volume = torch.rand(2, 1, 16, 32, 32)
    reference, _, _ = vit(volume)
    reference.sum().backward()
    reference_grad = vit.patch_embed.proj.weight.grad.clone()
    vit.zero_grad()
    vit.set_attention("math")
    math_out, _, _ = vit(volume)
    torch.testing.assert_close(math_out, reference, rtol=1e-5, atol=1e-5)
    vit.set_attention("sdpa")
    vit.grad_checkpointing = True
    checkpointed, _, _ = vit(volume)
    checkpointed.sum().backward()
    torch.testing.assert_close(vit.patch_embed.proj.weight.grad, reference_grad, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(demo_cfg, tokenizer_dir, tmp_path):
    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=tokenizer_dir).eval()
    with torch.no_grad():
        model.log_logit_scale.fill_(3.0)
    model.save_pretrained(tmp_path / "model")
    assert {"fvlm_config.json", "model.pt", "tokenizer"} <= {p.name for p in (tmp_path / "model").iterdir()}
    loaded = FVLM.from_pretrained(tmp_path / "model").eval()
    volume, mask = _batch(demo_cfg.grid.crop_zyx, batch=2)
    with torch.no_grad():
        a, b = model.encode_image(volume, mask), loaded.encode_image(volume, mask)
        torch.testing.assert_close(a["anatomy"], b["anatomy"])
        torch.testing.assert_close(a["global_"], b["global_"])
        torch.testing.assert_close(model.encode_text(REPORTS), loaded.encode_text(REPORTS))
    assert loaded.anatomy_names == ANATOMIES and float(loaded.logit_scale.detach()) == pytest.approx(math.exp(3.0))


def test_tokenizer_from_reports_knows_report_words(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokens = tokenizer.tokenize("The lungs are clear. Hiatal hernia.")
    assert "[UNK]" not in tokens and "lungs" in tokens
    assert tokenizer.tokenize("zygomatic")  # unseen words split into pieces, no crash
    encoded = tokenizer(["heart"], return_tensors="pt")
    assert encoded["input_ids"][0, 0] == tokenizer.cls_token_id
    assert encoded["input_ids"][0, -1] == tokenizer.sep_token_id


def _tiny_pretrained_dir(folder: Path) -> Path:
    from transformers import BertConfig, BertModel

    build_tokenizer(REPORTS, 256, folder)
    config = BertConfig(
        vocab_size=256,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder


def test_text_tower_from_local_pretrained_dir(tmp_path):
    local = _tiny_pretrained_dir(tmp_path / "tiny-bert")
    cfg = ModelConfig.model_validate(
        {
            "vision": {"patch_zyx": [8, 16, 16], "embed_dim": 32, "depth": 2, "heads": 2, "pool_layers": [1]},
            "text": {"name_or_path": str(local), "max_length": 32},
            "embed_dim": 16,
        }
    )
    model = build_model(cfg, ANATOMIES, (16, 32, 32))
    assert type(model.text.encoder).__name__ == "BertModel" and model.text.pooling == "cls"
    embeddings = model.encode_text(["lungs are clear", "heart enlarged"])
    assert embeddings.shape == (2, 16)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
    model.eval().save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "text_encoder" / "config.json").is_file()
    loaded = FVLM.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(REPORTS), loaded.encode_text(REPORTS))


def test_text_tower_skips_a_masked_lm_head(tokenizer_dir):
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    from training.models.text import TextTower

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    encoder = BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).eval()
    head_calls = []
    encoder.cls.register_forward_hook(lambda *args: head_calls.append(1))
    tower = TextTower(encoder, tokenizer, out_dim=8, max_length=16).eval()
    inputs = tower.tokenize(["lungs are clear"], torch.device("cpu"))
    with torch.no_grad():
        hidden = tower.hidden_states(inputs)
        expected = encoder(**inputs, output_hidden_states=True).hidden_states[-1]
    assert head_calls == [1]  # only the reference call above ran the MLM head
    torch.testing.assert_close(hidden, expected)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_tower_buckets_by_length_without_changing_any_embedding(tokenizer_dir, pooling):
    """A batch of 2- to ~60-token texts is encoded in length buckets; each embedding equals the text alone."""
    from transformers import AutoTokenizer

    from training.models.text import TextTower, scratch_bert

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    encoder = scratch_bert(len(tokenizer), 32, 1, 2, 128, pad_token_id=tokenizer.pad_token_id or 0)
    tower = TextTower(encoder, tokenizer, out_dim=8, max_length=128, pooling=pooling).eval()
    sentence = "Patchy consolidation in the right lower lobe with a small pleural effusion. "
    texts = ["Normal.", sentence * 6, "The heart is enlarged.", sentence, "Clear.", sentence * 3, "No effusion."]
    with torch.no_grad():
        together = tower(texts)
        alone = torch.cat([tower([text]) for text in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


def test_length_buckets_cover_every_text_once_in_few_calls():
    from training.models.text import length_buckets

    lengths = [2, 150, 8, 127, 10, 41, 2, 15, 108, 13, 86, 7]
    buckets = length_buckets(lengths)
    assert sorted(i for bucket in buckets for i in bucket) == list(range(len(lengths)))
    assert 1 < len(buckets) <= 4
    longest = [max(lengths[i] for i in bucket) for bucket in buckets]
    assert longest == sorted(longest)
    assert length_buckets([5, 6, 7]) == [[0, 1, 2]]  # similar lengths: one call
    assert length_buckets([]) == [] and length_buckets([3]) == [[0]]
    many = length_buckets([i % 50 for i in range(1000)])  # a long list: equal-count runs, no quadratic search
    assert len(many) == 4 and sorted(i for bucket in many for i in bucket) == list(range(1000))


def test_training_package_imports_without_optional_stacks(repo_root):
    code = (
        "import sys\n"
        "for name in ('transformers', 'tokenizers', 'prefect', 'mlflow', 'pandas', 'spacy'):\n"
        "    sys.modules[name] = None\n"
        "import training.models.model, training.models.losses, training.models.pooling, training.models.vit3d\n"
        "import training.models.text, training.models.distributed\n"
        "import training.models.zero_shot\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True)


def test_forward_under_bf16_autocast(demo_cfg, tokenizer_dir):
    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=tokenizer_dir)
    volume, mask = _batch(demo_cfg.grid.crop_zyx, batch=2)
    texts = [["lungs are clear", "heart normal", "", "aorta normal"]] * 2
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = model(volume, mask, texts, REPORTS[:2])
        loss, _ = fvlm_loss(
            out["anatomy"],
            out["text_anatomy"],
            out["anatomy_present"],
            torch.zeros(2, 4, dtype=torch.bool),
            texts,
            out["logit_scale"],
            True,
            None,
            0.0,
            False,
        )
    loss.backward()
    assert out["anatomy"].dtype == torch.float32 and torch.isfinite(loss)
    norms = out["anatomy"].norm(dim=-1)[out["anatomy_present"]]
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-3, atol=1e-3)


def test_model_deepcopies_for_an_ema_peer(demo_cfg, tokenizer_dir):
    import copy

    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=tokenizer_dir).eval()
    peer = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(peer.encode_text(REPORTS[:2]), model.encode_text(REPORTS[:2]))


def test_train_step_benchmark_runs_tiny_on_cpu(load_benchmark, capsys):
    module = load_benchmark("train_step")
    assert module.main(["--tiny", "--batch", "4", "--steps", "1", "--warmup", "0"]) == 0
    printed = capsys.readouterr().out
    assert "ratio fast/faithful samples/s" in printed and "faithful" in printed


def test_a_few_steps_fit_a_fixed_batch(demo_cfg, tmp_path):
    texts = [
        ["lungs are clear", "heart normal", "", "aorta normal"],
        ["nodule in the lung", "heart enlarged", "", "aortic calcification"],
        ["opacity in the lung", "heart normal", "", "aorta normal"],
        ["lungs are clear", "pericardial effusion", "", "aorta dilated"],
    ]
    # as in training, the tokenizer is built from the texts the model is trained on
    build_tokenizer(REPORTS * 4 + [text for row in texts for text in row], 512, tmp_path / "tokenizer")
    torch.manual_seed(0)
    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=str(tmp_path / "tokenizer"))
    volume, mask = _batch(demo_cfg.grid.crop_zyx, batch=4, seed=3)
    volume = 0.5 * volume + 0.15 * torch.arange(4.0).view(4, 1, 1, 1, 1)  # samples differ in brightness
    abnormal = torch.tensor(
        [[False] * 4, [True, True, False, True], [True, False, False, False], [False, True, False, True]]
    )
    model.eval()  # no dropout: a deterministic fit
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(30):
        out = model(volume, mask, texts)
        loss, _ = fvlm_loss(
            out["anatomy"],
            out["text_anatomy"],
            out["anatomy_present"],
            abnormal,
            texts,
            out["logit_scale"],
            True,
            None,
            0.0,
            False,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert min(losses[-5:]) < 0.6 * losses[0], losses


def test_bad_inputs_raise_clear_errors(demo_cfg, tokenizer_dir, tmp_path):
    model = build_model(demo_cfg.model, ANATOMIES, demo_cfg.grid.crop_zyx, tokenizer_dir=tokenizer_dir)
    volume, mask = _batch(demo_cfg.grid.crop_zyx, batch=2)
    with pytest.raises(ValueError, match=r"volume must be \(B, 1, Z, Y, X\)"):
        model.encode_image(volume[:, 0], mask)
    with pytest.raises(ValueError, match="mask must be"):
        model.encode_image(volume, mask[:1])
    with pytest.raises(ValueError, match="anatomy_text must be"):
        model.encode_anatomy_text([["only one"]])
    with pytest.raises(FileNotFoundError, match="fvlm_config.json"):
        FVLM.from_pretrained(tmp_path)
