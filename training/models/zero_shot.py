"""Zero-shot scoring: per-label (negative, positive) prompt pairs scored against anatomy embeddings.

For a label whose anatomy is k (``core/anatomy_sets.yaml``), the probability of the positive class is
``softmax(logit_scale * [e_k . t_neg, e_k . t_pos])[1]`` with ``e_k`` the study's anatomy-k embedding
(the global embedding for the CLIP baseline, and as a recorded fallback when anatomy k is absent from
the crop) and ``t_*`` the prompt text embeddings. ``t_neg`` follows the spec's ``negative_rule``
(``evaluate.negative_rule``, chosen on validation, never on test):

* ``plain`` (the default; the public fVLM pair): the label's negative prompt;
* ``with_normal``: the normalised mean of the negative prompt and anatomy k's normal description
  (``normal_prompts``). It was chosen on one cohort's test split and inverted the lung labels on
  another (docs/learnability.md, "Protocol"); specs saved before the rule was recorded used it.

* :class:`ZeroShotSpec` (``zero_shot_spec`` / ``write_zero_shot_spec`` / ``read_zero_shot_spec``): the
  scored labels, their anatomy slots and prompt pairs, saved as ``zero_shot.json`` next to the model;
* :func:`embed_batches` / :func:`prompt_embeddings` / :func:`zero_shot_probabilities`: embeddings of
  contract batches (``training.trainer.batch``) and the probabilities;
* :class:`ZeroShotModel` (:func:`load_zero_shot_model`, :func:`predict_arrays`): a saved model + its spec
  + the prompt embeddings computed once (used by evaluation, the MLflow pyfunc and prediction).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from training.models.model import FVLM

ZERO_SHOT_FILE = "zero_shot.json"
NEGATIVE_RULES = ("plain", "with_normal")  # how t_neg is formed (module docstring)
LEGACY_NEGATIVE_RULE = "with_normal"  # what a zero_shot.json without `negative_rule` was evaluated with


# ------------------------------------------------------------------------------------ zero-shot spec
@dataclass(frozen=True)
class ZeroShotSpec:
    anatomy_set: str
    anatomy_names: tuple[str, ...]
    labels: tuple[str, ...]  # scored labels, CT-RATE order
    label_columns: tuple[int, ...]  # column of each scored label in the 18-label vectors
    anatomy_index: tuple[int, ...]  # anatomy slot k of each scored label
    prompts: tuple[tuple[str, str], ...]  # (negative, positive) per scored label
    use_global: bool = False  # CLIP baseline: score the global embedding
    # per scored label: its anatomy's normal description, averaged into the negative (None: label prompt
    # only; () in specs saved before normal descriptions existed)
    normal_prompts: tuple[str | None, ...] = ()
    negative_rule: str = "plain"  # NEGATIVE_RULES

    def __post_init__(self) -> None:
        if self.negative_rule not in NEGATIVE_RULES:
            raise ValueError(f"negative_rule must be one of {NEGATIVE_RULES}, got {self.negative_rule!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ZeroShotSpec:
        return cls(
            anatomy_set=raw["anatomy_set"],
            anatomy_names=tuple(raw["anatomy_names"]),
            labels=tuple(raw["labels"]),
            label_columns=tuple(int(c) for c in raw["label_columns"]),
            anatomy_index=tuple(int(k) for k in raw["anatomy_index"]),
            prompts=tuple((str(p[0]), str(p[1])) for p in raw["prompts"]),
            use_global=bool(raw.get("use_global", False)),
            normal_prompts=tuple(None if p is None else str(p) for p in raw.get("normal_prompts", ())),
            negative_rule=str(raw.get("negative_rule", LEGACY_NEGATIVE_RULE)),
        )

    def with_negative_rule(self, rule: str) -> ZeroShotSpec:
        return replace(self, negative_rule=rule)

    def with_prompts(self, pairs: Mapping[str, tuple[str, str]]) -> ZeroShotSpec:
        """The same spec scoring ``pairs`` (label -> (negative, positive); labels not in it keep theirs)."""
        chosen = tuple(pairs.get(label, pair) for label, pair in zip(self.labels, self.prompts, strict=True))
        return replace(self, prompts=tuple((str(negative), str(positive)) for negative, positive in chosen))


def zero_shot_spec(
    anatomy_set_name: str,
    model_anatomy_names: Sequence[str] | None = None,
    *,
    use_global: bool = False,
    prompts_file: str | Path | None = None,
    negative_rule: str = "plain",
) -> ZeroShotSpec:
    """Scored labels + prompt pairs of an anatomy set (``prompts_file``: YAML/JSON label -> [neg, pos]).

    The anatomies' normal descriptions are kept whatever ``negative_rule`` says, so evaluation can score
    either rule from one spec."""
    from core.anatomy_sets import CTRATE_LABELS, load_anatomy_set

    anatomy_set = load_anatomy_set(anatomy_set_name)
    if model_anatomy_names is not None and tuple(model_anatomy_names) != anatomy_set.anatomy_names:
        raise ValueError(
            f"model anatomies {tuple(model_anatomy_names)} differ from anatomy set {anatomy_set_name!r} "
            f"{anatomy_set.anatomy_names}"
        )
    prompts = dict(anatomy_set.prompts)
    if prompts_file is not None:
        import yaml

        override = yaml.safe_load(Path(prompts_file).read_text()) or {}
        for label, pair in override.items():
            if label not in CTRATE_LABELS or len(pair) != 2:
                raise ValueError(f"{prompts_file}: label {label!r} must be a CT-RATE label with [negative, positive]")
            prompts[label] = (str(pair[0]), str(pair[1]))
    labels = anatomy_set.scored_labels()
    anatomy_of = {label: str(anatomy_set.label_anatomy[label]) for label in labels}
    return ZeroShotSpec(
        anatomy_set=anatomy_set.name,
        anatomy_names=anatomy_set.anatomy_names,
        labels=labels,
        label_columns=tuple(CTRATE_LABELS.index(label) for label in labels),
        anatomy_index=tuple(anatomy_set.index(anatomy_of[label]) for label in labels),
        prompts=tuple(prompts[label] for label in labels),
        use_global=use_global,
        normal_prompts=tuple(anatomy_set.normal_prompts.get(anatomy_of[label]) for label in labels),
        negative_rule=negative_rule,
    )


def write_zero_shot_spec(
    model_dir: str | Path, spec: ZeroShotSpec, *, hu_window: Sequence[float], spacing_zyx_mm: Sequence[float]
) -> Path:
    """``zero_shot.json`` next to the saved model: the spec + the preprocessing the model expects."""
    from core.io import atomic_write_text

    payload = {**spec.to_json(), "hu_window": list(hu_window), "spacing_zyx_mm": list(spacing_zyx_mm)}
    target = Path(model_dir) / ZERO_SHOT_FILE
    atomic_write_text(target, json.dumps(payload, indent=2) + "\n")
    return target


def read_zero_shot_spec(model_dir: str | Path) -> tuple[ZeroShotSpec, dict[str, Any]]:
    """The spec and the whole ``zero_shot.json`` (hu_window, spacing_zyx_mm, ...) of a saved model."""
    source = Path(model_dir) / ZERO_SHOT_FILE
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no zero-shot spec (model not saved by `fvlm train`?)")
    raw = json.loads(source.read_text())
    return ZeroShotSpec.from_json(raw), raw


# ------------------------------------------------------------------------------------ embeddings
@dataclass
class Embeddings:
    """Image embeddings of N studies (:func:`embed_batches`)."""

    study_ids: list[str]
    anatomy: np.ndarray  # (N, K, D) float32
    global_: np.ndarray  # (N, D)
    present: np.ndarray  # (N, K) bool
    labels: np.ndarray  # (N, 18) int8, -1 unknown


@torch.no_grad()
def embed_batches(model: FVLM, batches: Iterable[Mapping[str, Any]]) -> Embeddings:
    """Image embeddings of every study, in first-seen order.

    Batches from the reader's ``eval_mode="anatomy"`` carry ``crop_anatomy`` (one crop per anatomy
    present, centred on it): the anatomy-k embedding of a study is taken from its crop centred on k,
    its global embedding is the mean over its crops (re-normalised). Otherwise one crop per study.
    """
    model.eval()
    device = model.device
    order: list[str] = []
    rows: dict[str, dict[str, Any]] = {}
    for batch in batches:
        out = model.encode_image(batch["volume"].to(device), batch["mask"].to(device))
        anatomy = out["anatomy"].float().cpu().numpy()
        global_ = out["global_"].float().cpu().numpy()
        present = out["anatomy_present"].cpu().numpy().astype(bool)
        labels = torch.as_tensor(batch["labels"]).cpu().numpy().astype(np.int8)
        crop_anatomy = batch.get("crop_anatomy")
        for i, study_id in enumerate(batch["study_id"]):
            if study_id not in rows:
                order.append(study_id)
                rows[study_id] = {
                    "anatomy": np.zeros_like(anatomy[i]),
                    "present": np.zeros_like(present[i]),
                    "global": [],
                    "labels": labels[i],
                }
            row = rows[study_id]
            row["global"].append(global_[i])
            if crop_anatomy is None:
                row["anatomy"], row["present"] = anatomy[i], present[i]
            else:
                k = int(crop_anatomy[i])
                row["anatomy"][k], row["present"][k] = anatomy[i, k], present[i, k]
    if not order:
        raise ValueError("no studies to evaluate (empty split)")
    global_mean = np.stack([np.mean(rows[s]["global"], axis=0) for s in order])
    global_mean /= np.maximum(np.linalg.norm(global_mean, axis=1, keepdims=True), 1e-12)
    return Embeddings(
        order,
        np.stack([rows[s]["anatomy"] for s in order]),
        global_mean.astype(np.float32),
        np.stack([rows[s]["present"] for s in order]),
        np.stack([rows[s]["labels"] for s in order]),
    )


@torch.no_grad()
def prompt_embeddings(model: FVLM, spec: ZeroShotSpec) -> np.ndarray:
    """(S, 2, D): (negative, positive) prompt embeddings per scored label.

    With ``spec.negative_rule == "with_normal"`` the negative is the normalised mean of the label's
    negative prompt and its anatomy's normal description where the spec has one (module docstring).
    """
    model.eval()
    flat = [text for pair in spec.prompts for text in pair]
    encoded = model.encode_text(flat).float().cpu().numpy().reshape(len(spec.prompts), 2, -1)
    if spec.negative_rule != "with_normal":
        return encoded
    normals = [(s, text) for s, text in enumerate(spec.normal_prompts) if text is not None]
    if normals:
        normal_emb = model.encode_text([text for _, text in normals]).float().cpu().numpy()
        for (s, _), normal in zip(normals, normal_emb, strict=True):
            negative = encoded[s, 0] + normal
            encoded[s, 0] = negative / max(float(np.linalg.norm(negative)), 1e-12)
    return encoded


def zero_shot_probabilities(
    embeddings: Embeddings, prompt_emb: np.ndarray, spec: ZeroShotSpec, logit_scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """(N, S) positive-class probabilities and (N, S) bool 'scored on the global embedding (fallback)'."""
    n = embeddings.anatomy.shape[0]
    probabilities = np.zeros((n, len(spec.labels)), dtype=np.float64)
    used_global = np.zeros((n, len(spec.labels)), dtype=bool)
    for s, k in enumerate(spec.anatomy_index):
        if spec.use_global:
            image = embeddings.global_
            used_global[:, s] = True
        else:
            absent = ~embeddings.present[:, k]
            image = np.where(absent[:, None], embeddings.global_, embeddings.anatomy[:, k])
            used_global[:, s] = absent
        logits = logit_scale * image.astype(np.float64) @ prompt_emb[s].astype(np.float64).T  # (N, 2)
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probabilities[:, s] = exp[:, 1] / exp.sum(axis=1)
    return probabilities, used_global


# ------------------------------------------------------------------------------------ a loaded model
@dataclass
class ZeroShotModel:
    """A saved model ready for zero-shot scoring (:func:`load_zero_shot_model`)."""

    model: FVLM
    spec: ZeroShotSpec
    meta: dict[str, Any]  # zero_shot.json (hu_window, spacing_zyx_mm, ...)
    prompt_emb: np.ndarray  # (S, 2, D)
    logit_scale: float
    model_dir: Path

    @property
    def crop_zyx(self) -> tuple[int, int, int]:
        z, y, x = (int(c) for c in self.model.crop_zyx)
        return z, y, x


def load_zero_shot_model(
    model_dir: str | Path, device: str | torch.device = "cpu", *, negative_rule: str | None = None
) -> ZeroShotModel:
    """Load ``FVLM.save_pretrained`` dir + ``zero_shot.json``; prompt embeddings computed once.

    ``negative_rule``: score with this rule instead of the spec's (the rule evaluation chose on val,
    recorded in ``thresholds.json``, so predict scores as the thresholds were chosen)."""
    from training.models.model import FVLM

    folder = Path(model_dir)
    model = FVLM.from_pretrained(folder, map_location=device).eval()
    spec, meta = read_zero_shot_spec(folder)
    if negative_rule is not None:
        spec = spec.with_negative_rule(negative_rule)
    return ZeroShotModel(
        model, spec, meta, prompt_embeddings(model, spec), float(model.logit_scale.detach().cpu()), folder
    )


def with_negative_rule(bundle: ZeroShotModel, rule: str) -> ZeroShotModel:
    """The loaded model scoring with negative ``rule`` (prompt embeddings recomputed)."""
    spec = bundle.spec.with_negative_rule(rule)
    return replace(bundle, spec=spec, prompt_emb=prompt_embeddings(bundle.model, spec))


@torch.no_grad()
def embed_arrays(bundle: ZeroShotModel, volume: Any, mask: Any) -> Embeddings:
    """Embeddings of volume (B,1,Z,Y,X) or (B,Z,Y,X) in [0, 1] and mask (B,Z,Y,X) 0..K (labels unknown)."""
    device = bundle.model.device
    volume_t = torch.as_tensor(np.asarray(volume), dtype=torch.float32, device=device)
    mask_t = torch.as_tensor(np.asarray(mask).astype(np.int64), device=device)
    if volume_t.dim() == 4:
        volume_t = volume_t.unsqueeze(1)
    out = bundle.model.encode_image(volume_t, mask_t)
    n = volume_t.shape[0]
    return Embeddings(
        study_ids=[str(i) for i in range(n)],
        anatomy=out["anatomy"].float().cpu().numpy(),
        global_=out["global_"].float().cpu().numpy(),
        present=out["anatomy_present"].cpu().numpy().astype(bool),
        labels=np.full((n, 18), -1, dtype=np.int8),
    )


def predict_arrays(bundle: ZeroShotModel, volume: Any, mask: Any) -> np.ndarray:
    """(B, S) positive-class probabilities for volume (B,1,Z,Y,X) in [0, 1] and mask (B,Z,Y,X) 0..K."""
    embeddings = embed_arrays(bundle, volume, mask)
    probabilities, _ = zero_shot_probabilities(embeddings, bundle.prompt_emb, bundle.spec, bundle.logit_scale)
    return probabilities
