"""Zero-shot evaluation: metrics against scikit-learn, val thresholds applied to test, spec, embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.evaluation.evaluate import plot_roc_curves, score_splits
from training.metrics import (
    best_f1_threshold,
    binary_metrics,
    bootstrap_auc,
    roc_auc,
    roc_curve,
    youden_threshold,
)
from training.models.zero_shot import (
    Embeddings,
    ZeroShotSpec,
    embed_batches,
    prompt_embeddings,
    zero_shot_probabilities,
    zero_shot_spec,
)


@pytest.fixture()
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=200)
    score = np.round(0.35 * y + rng.random(200) * 0.8, 2)  # rounding -> ties
    return y, score


def test_auc_and_roc_match_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.metrics import roc_auc_score
    from sklearn.metrics import roc_curve as sk_roc_curve

    y, score = scored
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    fpr, tpr, thresholds = roc_curve(y, score)
    sk_fpr, sk_tpr, sk_thresholds = sk_roc_curve(y, score, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thresholds[1:], sk_thresholds[1:])
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))


def test_binary_metrics_match_sklearn(scored: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    y, score = scored
    threshold = 0.5
    predicted = (score >= threshold).astype(int)
    metrics = binary_metrics(y, score, threshold)
    assert metrics.accuracy == pytest.approx(accuracy_score(y, predicted))
    assert metrics.sensitivity == pytest.approx(recall_score(y, predicted))
    assert metrics.specificity == pytest.approx(recall_score(1 - y, 1 - predicted))
    assert metrics.precision == pytest.approx(precision_score(y, predicted))
    assert metrics.f1 == pytest.approx(f1_score(y, predicted))
    assert metrics.f1_weighted == pytest.approx(f1_score(y, predicted, average="weighted"))
    assert metrics.n == 200 and metrics.n_positive == int(y.sum())


def test_threshold_choices_are_optimal(scored: tuple[np.ndarray, np.ndarray]) -> None:
    from sklearn.metrics import f1_score

    y, score = scored
    youden = youden_threshold(y, score)
    j = binary_metrics(y, score, youden)
    for candidate in np.unique(score):
        other = binary_metrics(y, score, candidate)
        assert j.sensitivity + j.specificity >= other.sensitivity + other.specificity - 1e-12
    best = best_f1_threshold(y, score)
    best_f1 = f1_score(y, score >= best)
    assert all(best_f1 >= f1_score(y, score >= c) - 1e-12 for c in np.unique(score))


def test_thresholds_chosen_on_val_are_applied_to_test() -> None:
    # val: positives above 0.7; test: positives above 0.3. The val threshold (0.8) misses test positives,
    # the fVLM protocol (threshold on test itself) does not.
    val_truth = np.array([[0], [0], [0], [1], [1]])
    val_scores = np.array([[0.1], [0.5], [0.6], [0.8], [0.9]])
    test_truth = np.array([[0], [0], [1], [1], [1], [-1]])
    test_scores = np.array([[0.1], [0.2], [0.4], [0.5], [0.85], [0.99]])
    report = score_splits(
        ("Lung nodule",), val_truth, val_scores, test_truth, test_scores, threshold_method="youden", bootstrap=0
    )
    entry = report["labels"]["Lung nodule"]
    assert entry["n_test"] == 5  # the -1 (unknown) row is left out
    assert entry["val_threshold"]["threshold"] == pytest.approx(0.8)
    assert entry["val_threshold"]["sensitivity"] == pytest.approx(1 / 3)
    assert entry["val_threshold"]["specificity"] == pytest.approx(1.0)
    assert entry["fvlm_protocol"]["threshold"] == pytest.approx(0.4)
    assert entry["fvlm_protocol"]["accuracy"] == pytest.approx(1.0)
    assert entry["val_threshold"]["auc"] == entry["fvlm_protocol"]["auc"] == pytest.approx(1.0)
    assert report["mean_auc"] == pytest.approx(1.0)


def test_single_class_label_is_skipped_not_averaged() -> None:
    truth = np.array([[0, 1], [1, 1], [0, 1], [1, 1]])
    scores = np.array([[0.2, 0.5], [0.7, 0.6], [0.3, 0.1], [0.9, 0.4]])
    report = score_splits(("A", "B"), truth, scores, truth, scores, bootstrap=10)
    assert report["skipped_labels"] == ["B"] and report["scored_labels"] == ["A"]
    assert report["mean_auc"] == pytest.approx(1.0)
    assert "auc_ci" in report["labels"]["A"] and len(report["mean_auc_ci"]) == 2


def test_bootstrap_interval_brackets_the_estimate(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, score = scored
    truth = np.stack([y, 1 - y], axis=1)
    scores = np.stack([score, 1 - score], axis=1)
    intervals = bootstrap_auc(truth, scores, 200, seed=1)
    low, high = intervals["label_0"]
    assert low < roc_auc(y, score) < high and high - low < 0.3
    assert intervals == bootstrap_auc(truth, scores, 200, seed=1)  # seeded, reproducible


def test_zero_shot_spec_ctrate4() -> None:
    spec = zero_shot_spec("ctrate4", ("lung", "heart", "esophagus", "aorta"))
    assert len(spec.labels) == 16
    assert "Medical material" not in spec.labels and "Lymphadenopathy" not in spec.labels
    index = spec.labels.index("Cardiomegaly")
    assert spec.anatomy_names[spec.anatomy_index[index]] == "heart"
    assert spec.prompts[index] == ("No cardiomegaly is seen.", "Cardiomegaly is seen.")
    assert spec.negative_rule == "plain"  # the public fVLM pair is the default
    assert ZeroShotSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    with pytest.raises(ValueError, match="differ"):
        zero_shot_spec("ctrate4", ("heart", "lung", "esophagus", "aorta"))


def test_zero_shot_negative_rules() -> None:
    spec = zero_shot_spec("ctrate4", ("lung", "heart", "esophagus", "aorta"))
    index = spec.labels.index("Mosaic attenuation pattern")
    assert spec.normal_prompts[index] == "Both lungs appear normal."  # kept whatever the rule, for `auto`
    assert ZeroShotSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    # a spec saved before the rule was recorded was evaluated with the normal-anchored negative
    legacy = {k: v for k, v in spec.to_json().items() if k != "negative_rule"}
    assert ZeroShotSpec.from_json(legacy).negative_rule == "with_normal"
    older = {k: v for k, v in legacy.items() if k != "normal_prompts"}
    assert ZeroShotSpec.from_json(older).normal_prompts == ()  # before normal descriptions: own negative
    with pytest.raises(ValueError, match="negative_rule"):
        spec.with_negative_rule("mean")

    vectors = {"n": [1.0, 0.0, 0.0], "p": [0.0, 1.0, 0.0], "normal": [0.0, 0.0, 1.0], "n2": [0.6, 0.8, 0.0]}

    class _Texts(torch.nn.Module):
        def encode_text(self, texts: list[str]) -> torch.Tensor:
            return torch.tensor([vectors[t] for t in texts])

    pairs = ZeroShotSpec(
        "x", ("a",), ("L1", "L2"), (0, 1), (0, 0), (("n", "p"), ("n2", "p")), normal_prompts=("normal", None)
    )
    plain = prompt_embeddings(_Texts(), pairs)  # type: ignore[arg-type]
    np.testing.assert_allclose(plain[0, 0], vectors["n"])  # plain: the label's own negative
    anchored = prompt_embeddings(_Texts(), pairs.with_negative_rule("with_normal"))  # type: ignore[arg-type]
    np.testing.assert_allclose(anchored[0, 0], np.array([1.0, 0.0, 1.0]) / np.sqrt(2.0), rtol=1e-6)
    np.testing.assert_allclose(anchored[0, 1], vectors["p"])
    np.testing.assert_allclose(anchored[1, 0], vectors["n2"])  # no normal description: the label's negative


def test_zero_shot_probability_is_softmax_over_the_prompt_pair() -> None:
    spec = ZeroShotSpec("x", ("a", "b"), ("L1", "L2"), (0, 1), (0, 1), (("n1", "p1"), ("n2", "p2")))
    anatomy = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]], dtype=np.float32)
    embeddings = Embeddings(
        ["s0", "s1"],
        anatomy,
        np.array([[0.6, 0.8], [0.6, 0.8]], dtype=np.float32),
        np.array([[True, True], [True, False]]),
        np.zeros((2, 18), dtype=np.int8),
    )
    prompts = np.array([[[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]], dtype=np.float32)  # (S, 2, D)
    probabilities, used_global = zero_shot_probabilities(embeddings, prompts, spec, logit_scale=10.0)
    expected_00 = np.exp(10.0) / (np.exp(10.0) + np.exp(0.0))
    assert probabilities[0, 0] == pytest.approx(expected_00)  # study 0 lung matches positive
    assert probabilities[1, 0] == pytest.approx(1 - expected_00)
    # study 1 has no anatomy b: scored on its global embedding, recorded as a fallback
    assert used_global.tolist() == [[False, False], [False, True]]
    g = np.array([0.6, 0.8])
    logits = 10.0 * np.array([g @ prompts[1, 0], g @ prompts[1, 1]])
    assert probabilities[1, 1] == pytest.approx(np.exp(logits[1]) / np.exp(logits).sum())


class _FakeImageModel(torch.nn.Module):
    """encode_image stand-in that returns anatomy k = one-hot(k + crop offset) (checks the aggregation)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def encode_image(self, volume: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = volume.shape[0]
        marker = volume.flatten(1)[:, 0]  # the test writes the crop's anatomy index here
        anatomy = torch.zeros(batch, 2, 4)
        for i in range(batch):
            anatomy[i, :, int(marker[i])] = 1.0
        return {
            "anatomy": anatomy,
            "global_": torch.nn.functional.one_hot(marker.long(), 4).float(),
            "anatomy_present": torch.ones(batch, 2, dtype=torch.bool),
        }


def test_embed_batches_takes_each_anatomy_from_its_own_crop() -> None:
    volume = torch.zeros(4, 1, 2, 2, 2)
    volume[:, 0, 0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    batch = {
        "volume": volume,
        "mask": torch.zeros(4, 2, 2, 2, dtype=torch.uint8),
        "labels": torch.zeros(4, 18, dtype=torch.int8),
        "study_id": ["a", "a", "b", "b"],
        "crop_anatomy": torch.tensor([0, 1, 0, 1]),
    }
    embeddings = embed_batches(_FakeImageModel(), [batch])
    assert embeddings.study_ids == ["a", "b"]
    np.testing.assert_array_equal(embeddings.anatomy[0], [[1, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(np.linalg.norm(embeddings.global_, axis=1), 1.0)


def test_roc_pngs_written(tmp_path: Path, scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, score = scored
    truth = np.stack([y, np.ones_like(y)], axis=1)  # second label single-class: no curve
    written = plot_roc_curves(("Lung nodule", "Cardiomegaly"), truth, np.stack([score, score], 1), tmp_path)
    names = sorted(p.name for p in written)
    assert names == ["roc_all.png", "roc_lung_nodule.png"]
    points = (tmp_path.parent / f"{tmp_path.name}_points" / "roc_lung_nodule.csv").read_text().splitlines()
    assert points[0] == "fpr,tpr" and points[1] == "0,0" and points[-1] == "1,1"
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


class _PromptTexts(torch.nn.Module):
    """Text tower stub: negated sentences -> n, the anatomy's normal sentence -> normal, others -> p."""

    vectors = {"n": [1.0, 0.0, 0.0], "p": [0.0, 1.0, 0.0], "normal": [0.0, 0.0, 1.0]}

    def __init__(self) -> None:
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(10.0))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        def kind(text: str) -> str:
            lowered = text.lower()
            if text == "normal" or "appear normal" in lowered:
                return "normal"
            negated = lowered.startswith(("no ", "not ", "there is no")) or " not " in lowered
            return "n" if negated or text == "n" else "p"

        return torch.tensor([self.vectors[kind(t)] for t in texts])


def _one_label_embeddings(rows: list[tuple[list[float], int]]) -> Embeddings:
    """N studies, one anatomy, label column 2 (Cardiomegaly) = the given truth."""
    labels = np.full((len(rows), 18), -1, dtype=np.int8)
    labels[:, 2] = [truth for _, truth in rows]
    anatomy = np.array([[vector] for vector, _ in rows], dtype=np.float32)
    return Embeddings(
        [f"s{i}" for i in range(len(rows))], anatomy, anatomy[:, 0], np.ones((len(rows), 1), bool), labels
    )


def test_auto_negative_rule_is_chosen_on_validation_only() -> None:
    from training.evaluation.evaluate import choose_negative_rule

    spec = ZeroShotSpec(
        "x", ("heart",), ("Cardiomegaly",), (2,), (0,), (("n", "p"),), normal_prompts=("normal",), negative_rule="plain"
    )
    near_negative_far_normal, normal_only = [0.8, 0.0, -0.6], [0.0, 0.0, 1.0]
    # on val the normal-anchored negative ranks the positive first and the plain pair inverts it ...
    val = _one_label_embeddings([(near_negative_far_normal, 1), (normal_only, 0)])
    model = _PromptTexts()
    chosen, record = choose_negative_rule(model, spec, val, "auto")  # type: ignore[arg-type]
    assert chosen.negative_rule == "with_normal" and record["rule"] == "with_normal"
    assert record["chosen_on"] == "val"
    assert record["val_mean_auc"] == {"plain": pytest.approx(0.0), "with_normal": pytest.approx(1.0)}
    # ... an explicit rule is taken as given, the legacy spec's own rule notwithstanding
    explicit, record = choose_negative_rule(model, spec.with_negative_rule("with_normal"), val, "plain")  # type: ignore[arg-type]
    assert explicit.negative_rule == "plain" and record == {"rule": "plain", "requested": "plain", "chosen_on": None}
    # a tie goes to the plain fVLM pair
    tie = _one_label_embeddings([(normal_only, 1), (normal_only, 0)])
    assert choose_negative_rule(model, spec, tie, "auto")[1]["rule"] == "plain"  # type: ignore[arg-type]


def test_prompt_set_spread_scores_every_set_on_the_same_embeddings() -> None:
    from core.anatomy_sets import load_prompt_sets
    from training.evaluation.evaluate import prompt_set_spread

    spec = zero_shot_spec("ctrate4", ("lung", "heart", "esophagus", "aorta"))
    heart = spec.labels.index("Cardiomegaly")
    spec = ZeroShotSpec("ctrate4", ("heart",), ("Cardiomegaly",), (2,), (0,), (spec.prompts[heart],))
    test = _one_label_embeddings([([0.0, 1.0, 0.0], 1), ([1.0, 0.0, 0.0], 0), ([0.6, 0.8, 0.0], 1)])
    val = _one_label_embeddings([([1.0, 0.0, 0.0], 1), ([0.0, 1.0, 0.0], 0)])
    spread = prompt_set_spread(_PromptTexts(), spec, val, test)  # type: ignore[arg-type]
    assert set(spread["sets"]) == set(load_prompt_sets()) and len(spread["sets"]) >= 3 and "fvlm" in spread["sets"]
    for entry in spread["sets"].values():  # every wording negates the same way for the stub text tower
        assert entry == {"test_mean_auc": pytest.approx(1.0), "val_mean_auc": pytest.approx(0.0)}
    assert spread["test_mean_auc_min"] == spread["test_mean_auc_mean"] == spread["test_mean_auc_max"] == 1.0
    assert spread["negative_rule"] == "plain"
