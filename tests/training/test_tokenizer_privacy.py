"""The scratch WordPiece vocabulary (a logged MLflow artifact) never holds rare words or record numbers."""

from __future__ import annotations

import json
from pathlib import Path

from training.models.text import build_tokenizer

CLINICAL = [
    "A 7 mm nodule is seen in the right upper lobe.",
    "No pleural effusion. Heart size is normal.",
    "Atherosclerotic calcification of the aortic wall.",
    "Mild emphysema in both upper lobes. Lymph nodes are normal.",
]


def _cohort() -> list[str]:
    texts = [f"{CLINICAL[i % 4]} {CLINICAL[(i + 1) % 4]}" for i in range(40)]
    # PHI slipped past the scrubber, planted in many-but-few (4) reports each
    for i in range(4):
        texts[i] += " Patient Quentina Zyxwvut, MRN 12345679, accession A99887766, ref 5550123."
    return texts


def _vocab(tokenizer_dir: Path) -> set[str]:
    return set(json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"])


def test_rare_names_and_record_numbers_stay_out_of_the_vocabulary(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(_cohort(), 2000, tmp_path / "tok", min_reports=5)
    vocab = _vocab(tmp_path / "tok")
    for needle in ("quentina", "zyxwvut", "12345679", "a99887766", "5550123"):
        assert needle not in vocab, needle
    assert not any(any(run.isdigit() and len(run) >= 5 for run in [token.strip("#")]) for token in vocab)
    for word in ("nodule", "pleural", "effusion", "emphysema", "lobe"):
        assert word in vocab, word
    ids = tokenizer("patient quentina zyxwvut")["input_ids"]
    assert tokenizer.unk_token_id not in ids  # still tokenizable (characters), just not memorised


def test_min_reports_is_a_threshold_and_digit_runs_always_drop(tmp_path: Path) -> None:
    vocab = _vocab(build_tokenizer(_cohort(), 2000, tmp_path / "tok1", min_reports=1) and tmp_path / "tok1")
    assert "quentina" in vocab and "12345679" not in vocab and "a99887766" not in vocab
    vocab4 = _vocab(build_tokenizer(_cohort(), 2000, tmp_path / "tok4", min_reports=4) and tmp_path / "tok4")
    assert "zyxwvut" in vocab4
    vocab5 = _vocab(build_tokenizer(_cohort(), 2000, tmp_path / "tok5", min_reports=5) and tmp_path / "tok5")
    assert "zyxwvut" not in vocab5


def test_config_default_and_override() -> None:
    from core.config import TextConfig

    assert TextConfig().vocab_min_reports == 5
    assert TextConfig(vocab_min_reports=2).vocab_min_reports == 2
