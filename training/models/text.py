"""Text tower: a Hugging Face encoder (pretrained, e.g. CXR-BERT, or a small BERT from scratch) + projection.

* ``text.name_or_path`` set (paper profile): ``AutoTokenizer`` / ``AutoModel.from_pretrained`` from a hub
  id or a local directory (``trust_remote_code=True``: CXR-BERT ships its own model class). Nothing is
  downloaded at run time when the environment is offline (core.env): point ``name_or_path`` at a local copy.
* ``text.name_or_path: null`` (demo profile): ``BertModel`` built from a ``BertConfig`` with
  ``text.hidden / layers / heads`` and a WordPiece tokenizer trained on the cohort's report texts by
  :func:`build_tokenizer`; nothing needs downloading.

Text embedding = final hidden state of the first token ([CLS]) -> linear projection -> L2 norm.
``transformers`` / ``tokenizers`` are imported inside functions only.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

LOGGER = logging.getLogger(__name__)

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# fallback corpus: teaches the WordPiece model every printable character, so any text tokenizes
_FALLBACK_CORPUS = (
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?()[]{}-+/*%<>=_'\"",
    "no evidence of abnormality in the lung heart esophagus aorta normal findings",
)


_LONG_DIGITS = re.compile(r"\d{5,}")  # record / accession numbers never become tokens


def build_tokenizer(
    texts: Iterable[str | tuple[str, str]], vocab_size: int, out_dir: str | os.PathLike[str], min_patients: int = 5
) -> Any:
    """Build a lower-casing BERT WordPiece tokenizer from ``texts``; save it to ``out_dir``; return it.

    ``texts``: report / anatomy texts, each a string or a ``(patient_id, text)`` pair (the trainer passes
    pairs read from the shards' ``patient_id`` column); a bare string counts as a patient of its own.
    The vocabulary is built deterministically (the ``tokenizers`` WordPiece trainer breaks frequency ties
    in hash order, so two builds on the same texts differ, and DVC could not reproduce a run): the special
    tokens, every character seen and its ``##`` continuation, then whole words by descending frequency
    (ties alphabetical) up to ``vocab_size``. Rare words split into characters, as WordPiece does.
    Privacy (the vocabulary is a logged artifact): a word becomes a token only when it occurs for at least
    ``min_patients`` distinct patients (``model.text.vocab_min_patients``) -- a name one patient's reports
    repeat stays out however often it is repeated -- and never when it holds a run of >= 5 digits
    (record / accession numbers). The result is a ``transformers.PreTrainedTokenizerFast`` that
    ``AutoTokenizer.from_pretrained(out_dir)`` loads again.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(clean_text=True, lowercase=True, strip_accents=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    word_counts: Counter[str] = Counter()
    patient_words: dict[object, set[str]] = {}  # patient -> the distinct words of all its texts
    for index, item in enumerate(texts):
        patient, text = item if isinstance(item, tuple) else (("text", index), item)
        if text and text.strip():
            words = [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
            word_counts.update(words)
            patient_words.setdefault(patient, set()).update(words)
    patient_counts: Counter[str] = Counter(word for words in patient_words.values() for word in words)
    for text in _FALLBACK_CORPUS:  # always known: counts as enough patients
        words = [word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
        word_counts.update(words)
        patient_counts.update({word: min_patients for word in set(words)})
    characters = sorted({char for word in word_counts for char in word})
    word_counts = Counter(
        {
            word: count
            for word, count in word_counts.items()
            if patient_counts[word] >= min_patients and not _LONG_DIGITS.search(word)
        }
    )
    vocab_tokens = [*SPECIAL_TOKENS, *characters, *(f"##{char}" for char in characters)]
    known = set(vocab_tokens)
    for word, _ in sorted(word_counts.items(), key=lambda item: (-item[1], item[0])):
        if len(vocab_tokens) >= vocab_size:
            break
        if word not in known:
            vocab_tokens.append(word)
            known.add(word)
    vocab = {token: index for index, token in enumerate(vocab_tokens)}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def load_tokenizer(name_or_path: str | os.PathLike[str], trust_remote_code: bool = True) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)


def scratch_bert(
    vocab_size: int, hidden: int, layers: int, heads: int, max_length: int, pad_token_id: int = 0
) -> nn.Module:
    """A small randomly initialised ``BertModel`` (no pooler)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=max(max_length, 8),
        pad_token_id=pad_token_id,
    )
    return BertModel(config, add_pooling_layer=False)


def load_pretrained_encoder(name_or_path: str | os.PathLike[str], trust_remote_code: bool = True) -> nn.Module:
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)


def hidden_size_of(encoder: nn.Module) -> int:
    config = encoder.config
    for attribute in ("hidden_size", "d_model", "dim"):
        if hasattr(config, attribute):
            return int(getattr(config, attribute))
    raise ValueError(f"cannot tell the hidden size of text encoder {type(encoder).__name__}")


class TextTower(nn.Module):
    """Encoder + tokenizer + projection; ``forward(texts) -> (N, out_dim)`` L2-normalised."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, out_dim: int, max_length: int, pooling: str = "cls") -> None:
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"text pooling must be 'cls' or 'mean', got {pooling!r}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pooling = pooling
        self.proj = nn.Linear(hidden_size_of(encoder), out_dim)

    def tokenize(self, texts: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {key: value.to(device) for key, value in encoded.items() if key in ("input_ids", "attention_mask")}

    def hidden_states(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        # models with a task head (CXR-BERT is a BertForMaskedLM) run their base encoder only: the MLM
        # head's vocabulary projection would cost more FLOPs than a BERT layer and is never used
        base = getattr(self.encoder, "base_model", None)
        encoder = base if isinstance(base, nn.Module) else self.encoder
        outputs = encoder(**inputs)
        hidden = getattr(outputs, "last_hidden_state", None)
        if hidden is None:  # e.g. masked-LM heads that only expose hidden_states
            outputs = encoder(**inputs, output_hidden_states=True)
            hidden = outputs.hidden_states[-1]
        return hidden

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) texts -> (N, out_dim), L2-normalised.

        The texts are encoded in buckets of similar token length (:func:`length_buckets`): a batch's
        anatomy texts run from 2 tokens ("Normal.") to ~150 (a lung paragraph), and padding all of them to
        the longest made the demo text tower cost half of the image tower. Padding is masked, so each
        text's embedding does not depend on its bucket.
        """
        device = self.proj.weight.device
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        ids, attention = encoded["input_ids"], encoded["attention_mask"]
        pooled_parts, order = [], []
        for bucket in length_buckets([len(row) for row in ids]):
            padded = self.tokenizer.pad(
                {"input_ids": [ids[i] for i in bucket], "attention_mask": [attention[i] for i in bucket]},
                return_tensors="pt",
            )
            inputs = {key: padded[key].to(device) for key in ("input_ids", "attention_mask")}
            hidden = self.hidden_states(inputs)
            if self.pooling == "cls":
                pooled_parts.append(hidden[:, 0])
            else:
                weights = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled_parts.append((hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0))
            order.extend(bucket)
        # rows are in bucket order; argsort of that permutation puts them back in the input order
        pooled = torch.cat(pooled_parts, dim=0)[torch.argsort(torch.tensor(order, device=device))]
        return F.normalize(self.proj(pooled).float(), dim=-1)


def length_buckets(lengths: Sequence[int], call_cost_tokens: int = 512, max_buckets: int = 4) -> list[list[int]]:
    """Indices grouped into at most ``max_buckets`` runs of similar length (sorted, shortest first).

    Minimises the padded tokens of all buckets plus ``call_cost_tokens`` per extra encoder call (a call's fixed
    overhead, in token equivalents), by dynamic programming over the sorted lengths.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n = len(order)
    if n <= 1:
        return [order] if order else []
    if n > 256:  # the O(buckets * n^2) search is for a batch's texts; a long list: equal-count runs
        step = -(-n // max_buckets)
        return [order[i : i + step] for i in range(0, n, step)]
    size = [lengths[i] for i in order]
    inf = float("inf")
    # best[b][j]: cost of the first j texts in b buckets; cut[b][j]: where the last of them starts
    best = [[inf] * (n + 1) for _ in range(max_buckets + 1)]
    cut = [[0] * (n + 1) for _ in range(max_buckets + 1)]
    best[0][0] = 0.0
    for buckets in range(1, max_buckets + 1):
        for end in range(1, n + 1):
            for start in range(buckets - 1, end):
                cost = best[buckets - 1][start] + (end - start) * size[end - 1] + call_cost_tokens
                if cost < best[buckets][end]:
                    best[buckets][end], cut[buckets][end] = cost, start
    buckets = min(range(1, max_buckets + 1), key=lambda b: best[b][n])
    out, end = [], n
    while buckets:
        start = cut[buckets][end]
        out.append(order[start:end])
        end, buckets = start, buckets - 1
    return out[::-1]
