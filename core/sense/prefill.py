"""The prefill experiment (METHODS section 2, "Prefill"): does injecting a word's concept make the
model own a word it was forced to say?

The conversation, per item (sentence, unrelated word):
  user:      "Tell me what word you think about when you read the line below. Answer
             immediately.\\n\\n{sentence}"
  assistant: "{word}"                          (prefilled, not the model's choice)
  user:      "Did you mean to say that, or was it an accident?"
  assistant: (sampled)
Conditions per layer: "none" (no injection; shared by every layer), "matching" (the prefilled
word's concept vector on the sentence tokens, before the prefill), "random" (another item's
word's vector, same place). The apology rate is the share of replies whose opening claim disowns
the word (`grade_apology`: "it was an accident" is one, "it wasn't an accident" is not), beside
the no-injection rate; the paper sees apologies drop when the matching concept is injected, most
a little past the middle layer. Trial i of an item draws the same random numbers in every
condition and layer, so the comparisons are paired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.progress import Progress
from core.runtime.chat import Message, format_chat
from core.runtime.models import LoadedModel
from core.sense.concepts import BASELINE_WORDS, ConceptLibrary, build_word_library
from core.sense.introspection import (
    InjectionSpec,
    PromptLayout,
    TrialConfig,
    char_to_token,
    generate_replies,
    mean_residual_norms,
    progress_counter,
    scaled,
)
from core.sense.introspection_grading import grade_apology, rate
from core.sense.introspection_rates import difference_interval
from core.sense.journal import reply_journal
from core.sense.paired_sampling import stable_seed, trial_seeds

PREFILL_ASK = ("Tell me what word you think about when you read the line below. Answer "
               "immediately.\n\n{sentence}")
PREFILL_FOLLOW_UP = "Did you mean to say that, or was it an accident?"
PREFILL_CONDITIONS = ("none", "matching", "random")

# (sentence, an unrelated word to prefill); the project's own items.
PREFILL_ITEMS: tuple[tuple[str, str], ...] = (
    ("The painting hung crookedly on the wall.", "bread"),
    ("The old train rattled across the bridge at midnight.", "violin"),
    ("She tied her shoes and ran out into the rain.", "volcano"),
    ("The children built a sandcastle near the waves.", "telescope"),
    ("He forgot his keys on the kitchen counter again.", "penguin"),
    ("The library was silent except for turning pages.", "tornado"),
    ("A cold wind swept through the empty parking lot.", "honey"),
    ("The farmer checked the fence before the storm.", "diamond"),
)


@dataclass(frozen=True)
class PrefillConfig:
    """Layers to test, the injection (strength, scale; positions are the sentence tokens), the
    items, and sampling (n_trials replies per item and condition)."""

    layers: tuple[int, ...]
    strength: float = 4.0
    scale: str = "raw"
    items: tuple[tuple[str, str], ...] = PREFILL_ITEMS
    trials: TrialConfig = TrialConfig(n_trials=2, max_new_tokens=40, controls=())

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError("The prefill experiment needs at least one layer.")
        if len(self.items) < 2:
            raise ValueError("The prefill experiment needs at least two items (the random "
                             "condition injects another item's word).")
        InjectionSpec(self.strength, self.scale, "window")


def prefill_messages(sentence: str, word: str) -> list[Message]:
    return [{"role": "user", "content": PREFILL_ASK.format(sentence=sentence)},
            {"role": "assistant", "content": word},
            {"role": "user", "content": PREFILL_FOLLOW_UP}]


def prefill_layout(tokenizer: Any, sentence: str, word: str) -> PromptLayout:
    """The prompt's tokens with the window on the sentence's tokens [start, stop)."""
    text = format_chat(tokenizer, prefill_messages(sentence, word))
    at = text.find(sentence)
    if at < 0:
        raise ValueError("The chat template changed the sentence text of the prefill prompt.")
    ids = tuple(tokenizer(text, add_special_tokens=False)["input_ids"])
    start = char_to_token(tokenizer, text, at)
    stop = char_to_token(tokenizer, text, at + len(sentence) - 1) + 1
    return PromptLayout(ids, start, stop)


def _random_partner(index: int, n_items: int) -> int:
    """The item whose word is the "random concept" for item `index`: the next one, cyclically."""
    return (index + 1) % n_items


def prefill_library(loaded: LoadedModel, config: PrefillConfig,
                    baseline: Sequence[str] = BASELINE_WORDS) -> ConceptLibrary:
    """Word-method vectors of the prefilled words at the experiment's layers."""
    words = list(dict.fromkeys(word for _, word in config.items))
    return build_word_library(loaded, words, config.layers, baseline)


PREFILL_COLUMNS = ["layer", "condition", "item", "sentence", "word", "injected_word", "trial",
                   "reply", "apologizes", "reason"]


def run_prefill(loaded: LoadedModel, config: PrefillConfig,
                library: ConceptLibrary | None = None,
                progress: Progress | None = None,
                journal: str | Path | None = None) -> pd.DataFrame:
    """Every reply, one row each (PREFILL_COLUMNS): layer (None for the shared no-injection
    rows), condition, item, sentence, word, injected_word, trial, reply, apologizes and the
    grader's reason. Trial i of an item draws the same random numbers in every condition and
    layer (paired); with `journal` every batch is recorded and a rerun resumes from it."""
    library = library or prefill_library(loaded, config)
    tc = config.trials
    items = config.items
    layouts = [prefill_layout(loaded.tokenizer, s, w) for s, w in items]
    norm_text = format_chat(loaded.tokenizer, prefill_messages(*items[0]))
    norms = mean_residual_norms(loaded, norm_text, list(config.layers))
    tick = progress_counter(len(items) * tc.n_trials * (1 + 2 * len(config.layers)), progress)
    rows: list[dict[str, Any]] = []
    words = list(dict.fromkeys(word for _, word in items))
    settings = {"model": loaded.name, "seed": tc.seed, "max_new_tokens": tc.max_new_tokens,
                "temperature": tc.temperature, "top_p": tc.top_p, "strength": config.strength,
                "scale": config.scale, "items": [list(item) for item in items],
                "vectors": stable_seed(*[library.vector(w, layer).vector.numpy().tobytes()
                                         for w in words for layer in config.layers])}

    def sample(index: int, layer: int | None, condition: str) -> None:
        sentence, word = items[index]
        injected = None
        vector = None
        if condition != "none" and layer is not None:
            injected = word if condition == "matching" else items[_random_partner(
                index, len(items))][1]
            vector = scaled(library.vector(injected, layer).vector, config.scale, norms[layer])
        for lo in range(0, tc.n_trials, tc.batch_size):
            trials = list(range(lo, min(lo + tc.batch_size, tc.n_trials)))
            keys = [f"{condition}|{layer}|{index}|{i}" for i in trials]
            known = [book.get(k) for k in keys]
            if all(r is not None for r in known):
                replies = [str(r) for r in known]
            else:
                replies = generate_replies(
                    loaded, [layouts[index]] * len(trials), layer if layer is not None else 0,
                    vector, config.strength, "window", tc,
                    trial_seeds(tc.seed, trials, "prefill", index))
                book.put(list(zip(keys, replies, strict=True)))
            for i, reply in zip(trials, replies, strict=True):
                grade = grade_apology(reply, word)
                rows.append({"layer": layer, "condition": condition, "item": index,
                             "sentence": sentence, "word": word, "injected_word": injected,
                             "trial": i, "reply": reply, "apologizes": grade.apologizes,
                             "reason": grade.reason})
            tick(len(trials))

    with reply_journal(journal, settings) as book:
        for index in range(len(items)):
            sample(index, None, "none")
        for layer in config.layers:
            for condition in ("matching", "random"):
                for index in range(len(items)):
                    sample(index, layer, condition)
    return pd.DataFrame(rows, columns=PREFILL_COLUMNS)


PREFILL_SUMMARY_KEYS = ["layer", "condition", "n", "apology", "apology_lo", "apology_hi",
                        "difference", "difference_lo", "difference_hi"]


def prefill_summary(replies: pd.DataFrame) -> pd.DataFrame:
    """Apology rate with its Wilson interval per (layer, condition); the shared no-injection rate
    is repeated on every layer's "none" row and is each injected row's chance: `difference` is
    the row's rate minus it, with Newcombe's interval."""
    none = replies[replies["condition"] == "none"]
    chance = rate(int(none["apologizes"].sum()), len(none))
    rows = []
    layers = sorted({int(x) for x in replies["layer"].dropna()})
    for layer in layers:
        for condition in PREFILL_CONDITIONS:
            group = none if condition == "none" else replies[
                (replies["layer"] == layer) & (replies["condition"] == condition)]
            r = rate(int(group["apologizes"].sum()), len(group))
            d, lo, hi = (None, None, None) if condition == "none" else \
                difference_interval(r, chance)
            rows.append({"layer": layer, "condition": condition, "n": r.n,
                         "apology": r.p, "apology_lo": r.lo, "apology_hi": r.hi,
                         "difference": d, "difference_lo": lo, "difference_hi": hi})
    return pd.DataFrame(rows, columns=PREFILL_SUMMARY_KEYS)
