"""The text-only baseline: a classifier that reads the words, never a hidden state.

It answers the question a reviewer asks first of a probe: does the hidden state know more
than the text? Two classifiers, trained on the same training chains as the probes:

- step level: the step's own text -> its step label;
- prefix level: the chain's text so far (the response's steps up to and including t, joined
  by newlines) -> its prefix label; its score at the last step is the final-level score.

Each is TF-IDF over word unigrams and bigrams and character 2-5-grams (within word
boundaries; sublinear term frequency, each block L2-normalised), then logistic regression
(scikit-learn, lbfgs). The regularisation C is chosen on the validation chains by AUROC, as
the probes' layer is. Words are runs of letters, runs of digits, or single symbols, so "7",
"+" and "=" are tokens (scikit-learn's default pattern drops one-character tokens).

In a probe file the numbers (idf weights, coefficients, intercept) go in the safetensors file
and the vocabularies and settings in the JSON sidecar; nothing is pickled.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from core.diagnose.metrics import auroc

TOKEN_PATTERN = r"[A-Za-z]+|\d+|[^\sA-Za-z\d]"
LEVELS = ("step", "prefix")


@dataclass(frozen=True)
class TextSettings:
    """How the text-only classifiers are built (stored in the probe sidecar)."""

    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: int = 2  # an n-gram must occur in two training texts
    max_features: int = 20_000  # per block (word, char), the most frequent kept
    c_grid: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)
    max_iter: int = 1000

    def __post_init__(self) -> None:
        if not self.c_grid or any(c <= 0 for c in self.c_grid):
            raise ValueError("c_grid needs at least one positive C.")
        if self.min_df < 1 or self.max_features < 1 or self.max_iter < 1:
            raise ValueError("min_df, max_features and max_iter must be at least 1.")


@dataclass(frozen=True, eq=False)
class TfidfBlock:
    """One fitted TF-IDF block: analyzer ("word" or "char_wb"), n-gram range, vocabulary in
    column order and its idf weights."""

    analyzer: str
    ngram_range: tuple[int, int]
    vocabulary: tuple[str, ...]
    idf: np.ndarray

    @cached_property
    def vectorizer(self) -> TfidfVectorizer:
        """A scikit-learn vectorizer equal to the fitted one (fixed vocabulary, set idf)."""
        vectorizer = _vectorizer(self.analyzer, self.ngram_range, min_df=1, max_features=None,
                                 vocabulary={term: i for i, term in enumerate(self.vocabulary)})
        vectorizer.idf_ = self.idf
        return vectorizer

    def transform(self, texts: Sequence[str]) -> sp.csr_matrix:
        return self.vectorizer.transform(list(texts))


def _vectorizer(analyzer: str, ngram_range: tuple[int, int], min_df: int,
                max_features: int | None,
                vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    return TfidfVectorizer(analyzer=analyzer, ngram_range=ngram_range, min_df=min_df,
                           max_features=max_features, vocabulary=vocabulary, lowercase=True,
                           sublinear_tf=True, dtype=np.float64,
                           token_pattern=TOKEN_PATTERN if analyzer == "word" else None)


@dataclass(frozen=True, eq=False)
class TextClassifier:
    """sigmoid(coef . [tfidf blocks] + intercept) over a text."""

    blocks: tuple[TfidfBlock, ...]
    coef: np.ndarray
    intercept: float
    c: float
    converged: bool = True
    n_iter: int = 0

    def features(self, texts: Sequence[str]) -> sp.csr_matrix:
        return sp.hstack([block.transform(texts) for block in self.blocks], format="csr")

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities in [0, 1], one per text."""
        if not len(texts):
            return np.zeros(0)
        logits = self.features(texts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def fit_text_classifier(texts: Sequence[str], labels: Sequence[int] | np.ndarray, c: float,
                        settings: TextSettings = TextSettings()) -> TextClassifier:
    """TF-IDF blocks fitted on `texts`, then L2 logistic regression with inverse strength c."""
    y = np.asarray(labels, dtype=int)
    if len(np.unique(y)) < 2:
        raise ValueError("Training labels hold a single class; a classifier needs both 0 and 1.")
    blocks, matrices = [], []
    for analyzer, ngrams in (("word", settings.word_ngrams), ("char_wb", settings.char_ngrams)):
        vectorizer = _vectorizer(analyzer, ngrams, settings.min_df, settings.max_features)
        try:
            matrices.append(vectorizer.fit_transform(list(texts)))
        except ValueError:  # no n-gram occurs min_df times: this block has nothing to say
            continue
        vocabulary = tuple(vectorizer.get_feature_names_out().tolist())
        blocks.append(TfidfBlock(analyzer, ngrams, vocabulary, vectorizer.idf_.copy()))
    if not blocks:
        raise ValueError("The training texts share no word or character n-gram.")
    model = LogisticRegression(C=c, max_iter=settings.max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # recorded in `converged` instead
        model.fit(sp.hstack(matrices, format="csr"), y)
    n_iter = int(np.max(model.n_iter_))
    return TextClassifier(tuple(blocks), model.coef_[0].astype(np.float64).copy(),
                          float(model.intercept_[0]), float(c), n_iter < settings.max_iter,
                          n_iter)


def choose_text_classifier(train_texts: Sequence[str], train_labels: np.ndarray,
                           val_texts: Sequence[str], val_labels: np.ndarray,
                           settings: TextSettings = TextSettings()) -> TextClassifier | None:
    """The classifier whose C (from settings.c_grid) ranks the validation texts best (AUROC;
    ties to the smaller C); None when the training labels hold one class. With one class in
    the validation labels the first C of the grid is kept."""
    if len(np.unique(train_labels)) < 2:
        return None
    best: tuple[float, TextClassifier] | None = None
    for c in sorted(settings.c_grid):
        model = fit_text_classifier(train_texts, train_labels, c, settings)
        area = auroc(val_labels, model.scores(val_texts)) if len(val_texts) else None
        score = -np.inf if area is None else area
        if best is None or score > best[0]:
            best = (score, model)
    assert best is not None
    return best[1]


def chain_so_far(step_texts: Sequence[str]) -> list[str]:
    """The text of the chain up to and including each step: the step texts joined by newlines."""
    out, joined = [], ""
    for index, text in enumerate(step_texts):
        joined = text if index == 0 else f"{joined}\n{text}"
        out.append(joined)
    return out


@dataclass(frozen=True, eq=False)
class TextBaseline:
    """The two text-only classifiers of a probe file (either may be missing when its labels
    held one class)."""

    step: TextClassifier | None
    prefix: TextClassifier | None
    settings: TextSettings = field(default_factory=TextSettings)

    def score_chains(self, chains: Sequence[Sequence[str]]
                     ) -> list[dict[str, np.ndarray]]:
        """{"step": scores of each step's text, "prefix": scores of the chain so far} per chain
        (a key is missing when its classifier is), scoring all chains in one pass."""
        if not chains:
            return []
        sizes = [len(texts) for texts in chains]
        cuts = np.cumsum(sizes)[:-1]
        out: list[dict[str, np.ndarray]] = [{} for _ in chains]
        for level, model in (("step", self.step), ("prefix", self.prefix)):
            if model is None:
                continue
            texts = [t for chain in chains for t in (chain if level == "step"
                                                     else chain_so_far(chain))]
            for scores, entry in zip(np.split(model.scores(texts), cuts), out, strict=True):
                entry[level] = scores
        return out


def train_text_baseline(step_texts: Sequence[Sequence[str]], step_labels: Sequence[np.ndarray],
                        prefix_labels: Sequence[np.ndarray], is_val: Sequence[bool],
                        settings: TextSettings = TextSettings()) -> TextBaseline | None:
    """Fit both classifiers on the chains with is_val False, choose C on the others. Steps
    with an unknown (NaN) label are left out of that level; None when neither level can be
    fitted."""
    fitted: dict[str, TextClassifier | None] = {}
    for level, labels in (("step", step_labels), ("prefix", prefix_labels)):
        parts: dict[bool, tuple[list[str], list[float]]] = {False: ([], []), True: ([], [])}
        for texts, y, val in zip(step_texts, labels, is_val, strict=True):
            inputs = list(texts) if level == "step" else chain_so_far(texts)
            for text, label in zip(inputs, y, strict=True):
                if not np.isnan(label):
                    parts[bool(val)][0].append(text)
                    parts[bool(val)][1].append(label)
        (train_x, train_y), (val_x, val_y) = parts[False], parts[True]
        fitted[level] = (choose_text_classifier(train_x, np.asarray(train_y, dtype=int), val_x,
                                                np.asarray(val_y, dtype=int), settings)
                         if train_x else None)
    if fitted["step"] is None and fitted["prefix"] is None:
        return None
    return TextBaseline(fitted["step"], fitted["prefix"], settings)


# ---------------------------------------------------------------------------------- files


def text_baseline_to_parts(baseline: TextBaseline
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors for the safetensors file, the sidecar's "text_baseline" object)."""
    tensors: dict[str, torch.Tensor] = {}
    sidecar: dict[str, Any] = {"settings": {
        "word_ngrams": list(baseline.settings.word_ngrams),
        "char_ngrams": list(baseline.settings.char_ngrams),
        "min_df": baseline.settings.min_df, "max_features": baseline.settings.max_features,
        "c_grid": list(baseline.settings.c_grid), "max_iter": baseline.settings.max_iter,
        "token_pattern": TOKEN_PATTERN}}
    for level in LEVELS:
        model: TextClassifier | None = getattr(baseline, level)
        if model is None:
            continue
        for number, block in enumerate(model.blocks):
            tensors[f"text.{level}.idf.{number}"] = torch.from_numpy(
                np.ascontiguousarray(block.idf, dtype=np.float64))
        tensors[f"text.{level}.coef"] = torch.from_numpy(np.ascontiguousarray(model.coef))
        tensors[f"text.{level}.intercept"] = torch.tensor([model.intercept], dtype=torch.float64)
        sidecar[level] = {
            "c": model.c, "converged": model.converged, "n_iter": model.n_iter,
            "blocks": [{"analyzer": b.analyzer, "ngram_range": list(b.ngram_range),
                        "vocabulary": list(b.vocabulary)} for b in model.blocks]}
    return tensors, sidecar


def _settings_from(raw: Any, where: str) -> TextSettings:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}.settings: expected an object.")
    try:
        return TextSettings(word_ngrams=tuple(raw["word_ngrams"]),
                            char_ngrams=tuple(raw["char_ngrams"]),
                            min_df=int(raw["min_df"]), max_features=int(raw["max_features"]),
                            c_grid=tuple(float(c) for c in raw["c_grid"]),
                            max_iter=int(raw["max_iter"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where}.settings is not valid ({err}).") from None


def _block_from(raw: Any, idf: torch.Tensor | None, where: str) -> TfidfBlock:
    if not isinstance(raw, dict) or raw.get("analyzer") not in ("word", "char_wb"):
        raise ValueError(f"{where}: expected an object with analyzer 'word' or 'char_wb'.")
    vocabulary, ngrams = raw.get("vocabulary"), raw.get("ngram_range")
    if not isinstance(vocabulary, list) or not all(isinstance(t, str) for t in vocabulary) \
            or len(set(vocabulary)) != len(vocabulary):
        raise ValueError(f"{where}.vocabulary: expected a list of distinct strings.")
    if not (isinstance(ngrams, list) and len(ngrams) == 2
            and all(isinstance(n, int) and n >= 1 for n in ngrams) and ngrams[0] <= ngrams[1]):
        raise ValueError(f"{where}.ngram_range: expected [low, high] with 1 <= low <= high.")
    if idf is None or idf.dtype != torch.float64 or tuple(idf.shape) != (len(vocabulary),) \
            or not torch.isfinite(idf).all():
        raise ValueError(f"{where}: the weights file needs {len(vocabulary)} finite float64 idf "
                         "weights for this vocabulary.")
    return TfidfBlock(raw["analyzer"], (ngrams[0], ngrams[1]), tuple(vocabulary),
                      idf.numpy().copy())


def text_baseline_from_parts(tensors: dict[str, torch.Tensor], sidecar: Any,
                             name: str) -> TextBaseline:
    """The text baseline from a probe file's tensors and its sidecar's "text_baseline" object;
    ValueError naming the file and the field for anything inconsistent."""
    where = f"Probe sidecar {name}.json, field 'text_baseline'"
    if not isinstance(sidecar, dict):
        raise ValueError(f"{where}: expected an object.")
    settings = _settings_from(sidecar.get("settings"), where)
    models: dict[str, TextClassifier | None] = {}
    for level in LEVELS:
        raw = sidecar.get(level)
        if raw is None:
            models[level] = None
            continue
        if not isinstance(raw, dict) or not isinstance(raw.get("blocks"), list) \
                or not raw["blocks"]:
            raise ValueError(f"{where}.{level}: expected an object with a list of blocks.")
        blocks = tuple(_block_from(b, tensors.get(f"text.{level}.idf.{i}"),
                                   f"{where}.{level}.blocks[{i}]")
                       for i, b in enumerate(raw["blocks"]))
        coef, intercept = tensors.get(f"text.{level}.coef"), tensors.get(
            f"text.{level}.intercept")
        width = sum(len(b.vocabulary) for b in blocks)
        if coef is None or intercept is None or tuple(coef.shape) != (width,) \
                or tuple(intercept.shape) != (1,) or not torch.isfinite(coef).all() \
                or not torch.isfinite(intercept).all():
            raise ValueError(f"Probe {name}.safetensors: the text baseline's {level} "
                             f"classifier needs {width} finite coefficients and one intercept.")
        c = raw.get("c")
        if not isinstance(c, int | float) or isinstance(c, bool) or c <= 0:
            raise ValueError(f"{where}.{level}.c: expected a positive number.")
        models[level] = TextClassifier(blocks, coef.numpy().astype(np.float64),
                                       float(intercept[0]), float(c),
                                       bool(raw.get("converged", True)),
                                       int(raw.get("n_iter", 0)))
    if models["step"] is None and models["prefix"] is None:
        raise ValueError(f"{where}: holds neither a step nor a prefix classifier.")
    return TextBaseline(models["step"], models["prefix"], settings)
