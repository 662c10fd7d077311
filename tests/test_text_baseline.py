"""The text-only baseline against scikit-learn (the oracle: the same vectorizers and logistic
regression fitted as one pipeline), its choice of C on validation data, and its place in the
probe file (numbers in safetensors, vocabulary in the sidecar, older files without it)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import FeatureUnion, make_pipeline

from core.diagnose.probes import (
    LinearProbe,
    ProbeBundle,
    ProbeMeta,
    probe_from_bytes,
    probe_to_bytes,
)
from core.diagnose.text_baseline import (
    TOKEN_PATTERN,
    TextBaseline,
    TextSettings,
    chain_so_far,
    choose_text_classifier,
    fit_text_classifier,
    train_text_baseline,
)

SETTINGS = TextSettings(min_df=1, max_features=5000, c_grid=(0.1, 1.0, 10.0))


def _texts(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Calculations; label 1 when the stated result is off by one (a word the text shows)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(1, 10, 2))
        wrong = bool(rng.random() < 0.4)
        result = a + b + (1 if wrong else 0)
        lead = "Wait, " if rng.random() < 0.3 else ""
        texts.append(f"{lead}{a} + {b} = {result}" + (" maybe" if wrong and rng.random() < 0.5
                                                      else ""))
        labels.append(int(wrong))
    return texts, np.array(labels)


def _oracle(texts: list[str], labels: np.ndarray, c: float) -> object:
    union = FeatureUnion([
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=1,
                                 max_features=5000, sublinear_tf=True,
                                 token_pattern=TOKEN_PATTERN)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=1,
                                 max_features=5000, sublinear_tf=True))])
    return make_pipeline(union, LogisticRegression(C=c, max_iter=1000)).fit(texts, labels)


def test_scores_equal_a_scikit_learn_pipeline() -> None:
    texts, labels = _texts(300, 0)
    model = fit_text_classifier(texts, labels, 1.0, SETTINGS)
    oracle = _oracle(texts, labels, 1.0)
    new, _ = _texts(50, 1)
    np.testing.assert_allclose(model.scores(new), oracle.predict_proba(new)[:, 1],  # type: ignore[attr-defined]
                               rtol=1e-6, atol=1e-8)
    assert model.converged and 0 < model.n_iter < SETTINGS.max_iter
    # single-character tokens ("7", "+", "=") are words here, unlike scikit-learn's default
    assert {"+", "="} <= set(model.blocks[0].vocabulary)


def test_c_is_chosen_by_validation_auroc() -> None:
    texts, labels = _texts(200, 2)
    val, val_labels = _texts(100, 3)
    chosen = choose_text_classifier(texts, labels, val, val_labels, SETTINGS)
    assert chosen is not None
    areas = {c: roc_auc_score(val_labels, fit_text_classifier(texts, labels, c, SETTINGS)
                              .scores(val)) for c in SETTINGS.c_grid}
    best = max(areas.values())
    assert chosen.c == min(c for c, area in areas.items() if area == best)
    assert choose_text_classifier(texts, np.zeros(200, dtype=int), val, val_labels) is None
    with pytest.raises(ValueError, match="single class"):
        fit_text_classifier(texts, np.ones(200), 1.0)


def test_chain_so_far_joins_steps_up_to_each() -> None:
    assert chain_so_far(["a = 1", "b = 2", "Answer: 3"]) == [
        "a = 1", "a = 1\nb = 2", "a = 1\nb = 2\nAnswer: 3"]
    assert chain_so_far([]) == []


@functools.cache
def _baseline() -> TextBaseline:
    chains, step_labels, prefix_labels = [], [], []
    texts, labels = _texts(240, 4)
    for lo in range(0, 240, 4):  # chains of four steps; the prefix goes bad at the first 1
        chains.append(texts[lo:lo + 4])
        step_labels.append(labels[lo:lo + 4].astype(float))
        prefix_labels.append(np.maximum.accumulate(labels[lo:lo + 4]).astype(float))
    step_labels[0][1] = np.nan  # an unknown label is left out, not read as 0
    baseline = train_text_baseline(chains, step_labels, prefix_labels,
                                   [i % 5 == 0 for i in range(len(chains))], SETTINGS)
    assert baseline is not None and baseline.step is not None and baseline.prefix is not None
    return baseline


def test_score_chains_scores_steps_and_the_chain_so_far() -> None:
    baseline = _baseline()
    chains = [["1 + 2 = 3", "3 + 4 = 8"], ["5 + 1 = 6"]]
    scored = baseline.score_chains(chains)
    assert baseline.step is not None and baseline.prefix is not None
    np.testing.assert_allclose(scored[0]["step"], baseline.step.scores(chains[0]))
    np.testing.assert_allclose(scored[0]["prefix"],
                               baseline.prefix.scores(["1 + 2 = 3", "1 + 2 = 3\n3 + 4 = 8"]))
    np.testing.assert_allclose(scored[1]["prefix"], baseline.prefix.scores(["5 + 1 = 6"]))
    assert baseline.score_chains([]) == []


def _bundle(text: TextBaseline | None) -> ProbeBundle:
    meta = ProbeMeta(model="m", model_name="m", hidden_size=4, layer=1, step_pooling="exp",
                     tracker_pooling="causal", baseline_pooling="prefix_mean", step_input=False,
                     threshold=0.5, step_threshold=0.5, data_hash="x")
    return ProbeBundle(meta=meta, tracker=LinearProbe(np.arange(4.0), 0.25), text=text)


def test_the_text_baseline_travels_in_the_probe_file_pair() -> None:
    baseline = _baseline()
    weights, sidecar = probe_to_bytes(_bundle(baseline))
    assert b"vocabulary" not in weights and b"text.step.coef" in weights
    back = probe_from_bytes(weights, sidecar)
    assert back.text is not None and back.text.step is not None and baseline.step is not None
    texts = ["2 + 2 = 5 maybe", "Wait, 3 + 3 = 6"]
    np.testing.assert_array_equal(back.text.step.scores(texts), baseline.step.scores(texts))
    assert back.text.settings == baseline.settings
    assert probe_from_bytes(*probe_to_bytes(_bundle(None))).text is None


@pytest.mark.parametrize("change, message", [
    (lambda s: s["text_baseline"]["step"]["blocks"][0]["vocabulary"].pop(), "idf weights"),
    (lambda s: s["text_baseline"]["step"]["blocks"][0].update(analyzer="bytes"), "analyzer"),
    (lambda s: s["text_baseline"]["prefix"].update(c=-1), "prefix.c"),
    (lambda s: s["text_baseline"].update(step=None, prefix=None), "neither"),
    (lambda s: s["text_baseline"]["settings"].pop("c_grid"), "settings"),
])
def test_a_broken_text_baseline_is_a_clear_error(change, message) -> None:
    weights, sidecar = probe_to_bytes(_bundle(_baseline()))
    data = json.loads(sidecar)
    change(data)
    with pytest.raises(ValueError, match=message):
        probe_from_bytes(weights, json.dumps(data).encode(), name="upload")
