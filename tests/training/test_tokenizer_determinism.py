from __future__ import annotations

from pathlib import Path

from training.models.text import build_tokenizer

TEXTS = [
    "A 7 mm nodule is seen in the right upper lobe.",
    "No pleural effusion. Heart size is normal.",
    "Atherosclerotic calcification of the aortic wall.",
] * 4


def test_same_texts_give_the_same_vocabulary_and_ids(tmp_path: Path) -> None:
    first = build_tokenizer(TEXTS, 400, tmp_path / "a")
    second = build_tokenizer(list(reversed(TEXTS)), 400, tmp_path / "b")
    assert first.get_vocab() == second.get_vocab()
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    encoded = first("no pleural effusion")["input_ids"]
    assert encoded[0] == first.cls_token_id and encoded[-1] == first.sep_token_id
    assert first.unk_token_id not in first("zebra-like nodules")["input_ids"]  # falls back to characters
    assert len(first) <= 400
