"""Find the decoder blocks of any Hugging Face causal LM, in one place.

Every family keeps its stack of blocks at a different attribute path. `decoder_layers` tries the
known paths in order; `layer_path=` overrides the search for families it does not know.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

# Attribute paths, from the top-level *ForCausalLM module, of the decoder-block list.
KNOWN_LAYER_PATHS: tuple[str, ...] = (
    "model.layers",  # Llama, Qwen2/3, Mistral, Gemma, Phi-3, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava-style)
    "transformer.h",  # GPT-2, Falcon, GPT-J, Bloom
    "gpt_neox.layers",  # GPT-NeoX, Pythia
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
    "layers",  # a bare decoder stack
)


def _get_path(root: nn.Module, path: str) -> object | None:
    obj: object = root
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def decoder_layers(model: nn.Module, layer_path: str | None = None) -> nn.ModuleList:
    """The model's decoder blocks, in order.

    `layer_path` (e.g. "model.layers") overrides the search. Raises ValueError naming the paths
    tried when none fits.
    """
    paths = (layer_path,) if layer_path else KNOWN_LAYER_PATHS
    for path in paths:
        found = _get_path(model, path)
        if isinstance(found, nn.ModuleList) and len(found) > 0:
            return found
    tried = ", ".join(paths)
    raise ValueError(
        f"Could not find the decoder blocks of {type(model).__name__} (tried {tried}); "
        "pass layer_path='attribute.path.to.blocks' for this architecture."
    )


def n_layers(model: nn.Module, layer_path: str | None = None) -> int:
    """Number of decoder blocks."""
    return len(decoder_layers(model, layer_path))


def resolve_layer(index: int, total: int) -> int:
    """Turn a possibly negative block index into 0..total-1; ValueError when out of range."""
    resolved = index + total if index < 0 else index
    if not 0 <= resolved < total:
        raise ValueError(f"Layer {index} is out of range for a model with {total} blocks "
                         f"(use 0..{total - 1} or -{total}..-1).")
    return resolved


def resolve_layers(indices: Sequence[int], total: int) -> list[int]:
    """Resolve several indices, keeping the caller's order and dropping repeats."""
    out: list[int] = []
    for index in indices:
        resolved = resolve_layer(index, total)
        if resolved not in out:
            out.append(resolved)
    return out


def parse_layers(text: str, total: int) -> list[int]:
    """Parse a user's layer list: "8,15", "-1", "0-29" (inclusive range) or "all".

    ValueError for junk, a reversed range, or a selection that names no layer.
    """
    text = text.strip()
    if text == "all":
        return list(range(total))
    out: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:  # a range; a leading '-' is a negative index
                cut = part.index("-", 1)
                lo = resolve_layer(int(part[:cut]), total)
                hi = resolve_layer(int(part[cut + 1 :]), total)
                if hi < lo:
                    raise ValueError(f"Layer range '{part}' runs backwards; write it low-high.")
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
        except ValueError as err:
            if "Layer" in str(err):
                raise
            raise ValueError(f"Layer '{part}' is not an integer or a range "
                             "(expected e.g. 8,15 or 0-29 or all).") from None
    if not out:
        raise ValueError(f"'{text}' names no layer (expected e.g. 8,15 or 0-29 or all).")
    return resolve_layers(out, total)
