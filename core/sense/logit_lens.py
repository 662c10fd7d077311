"""Logit lens: read each layer's residual stream through the unembedding.

logits_l = lm_head(final_norm(h_l)) at the last prompt token of the trial conversation (where
the model starts its answer); for the concept's first token t: prob_l = softmax(logits_l)[t]
and rank_l = 1 + #{tokens with a larger logit} (1 = the top token). With an injection at layer L
the layers from L on change; the layers before it cannot.

The final norm is the module each family applies after its last block; applied to the last
block's output this gives exactly the model's own logits.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import pandas as pd
import torch
from torch import nn

from core.runtime.capture import record_residual
from core.runtime.inject import inject_residual
from core.runtime.models import LoadedModel
from core.sense.concepts import ConceptVector
from core.sense.introspection import (
    InjectionSpec,
    mean_residual_norms,
    padded_positions,
    scaled,
    trial_layout,
)

FINAL_NORM_PATHS: tuple[str, ...] = (
    "model.norm", "model.language_model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm", "transformer.norm_f",
)
PROJECT_OUT_PATHS: tuple[str, ...] = ("model.decoder.project_out",)  # OPT's optional projection


def _module_at(root: nn.Module, path: str) -> nn.Module | None:
    obj: Any = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm after the last block (None for a family without one we know)."""
    for path in FINAL_NORM_PATHS:
        found = _module_at(model, path)
        if found is not None:
            return found
    return None


@torch.no_grad()
def lens_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """lm_head(final_norm(hidden)) for residual vectors [..., hidden] -> [..., vocab]."""
    head = model.get_output_embeddings()  # type: ignore[operator]
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embedding to read through.")
    param = next(head.parameters())
    x = hidden.to(param.device, param.dtype)
    norm = final_norm(model)
    if norm is not None:
        x = norm(x)
    for path in PROJECT_OUT_PATHS:
        project = _module_at(model, path)
        if project is not None:
            x = project(x)
    return head(x).float()


def concept_token(tokenizer: Any, word: str) -> tuple[int, str]:
    """The first token of " {word}" (the word as it appears inside a sentence) and its text."""
    ids = tokenizer(" " + word.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"'{word}' encodes to no tokens.")
    return int(ids[0]), tokenizer.decode([ids[0]])


@torch.no_grad()
def logit_lens(loaded: LoadedModel, concept: ConceptVector, spec: InjectionSpec,
               word: str | None = None) -> pd.DataFrame:
    """Per layer and condition ("none", "injected"): prob and rank of the concept's first token
    at the last prompt token of the trial conversation. Columns: layer, condition, token,
    token_id, prob, rank."""
    text, layout = trial_layout(loaded.tokenizer)
    token_id, token_text = concept_token(loaded.tokenizer, word or concept.name)
    layers = list(range(loaded.n_layers))
    ids = torch.tensor([layout.input_ids], device=loaded.input_device)
    vector = concept.vector
    if spec.scale == "relative":
        mean_norm = mean_residual_norms(loaded, text, [concept.layer])[concept.layer]
        vector = scaled(vector, "relative", mean_norm)
    rows = []
    for condition in ("none", "injected"):
        with loaded.lock, ExitStack() as stack:
            if condition == "injected":  # registered first, so the recorder sees its push
                stack.enter_context(inject_residual(
                    loaded.model, concept.layer, vector, spec.strength,
                    padded_positions(spec.positions, [layout]), layer_path=loaded.layer_path))
            rec = stack.enter_context(record_residual(loaded.model, layers,
                                                      layer_path=loaded.layer_path))
            loaded.model(input_ids=ids, use_cache=False)
        last = torch.stack([rec.hidden[layer][0][0, -1] for layer in layers])
        logits = lens_logits(loaded.model, last)  # [layers, vocab]
        probs = logits.softmax(-1)
        target = logits[:, token_id]
        ranks = 1 + (logits > target[:, None]).sum(-1)
        for layer in layers:
            rows.append({"layer": layer, "condition": condition, "token": token_text,
                         "token_id": token_id, "prob": float(probs[layer, token_id]),
                         "rank": int(ranks[layer])})
    return pd.DataFrame(rows, columns=["layer", "condition", "token", "token_id", "prob",
                                       "rank"])
