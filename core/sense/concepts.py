"""Concept vectors: directions in the residual stream that stand for a word or an idea.

Two recipes (METHODS section 2, "Concept vector"):
- word: v_l(word) = h_l("Tell me about {word}") - mean over baseline words b of
  h_l("Tell me about {b}"), where h_l is block l's output at the last prompt token of the chat
  prompt (the token right before the assistant's reply).
- contrastive: v_l = mean over positive prompts p of h_l(p) - mean over negative prompts n of
  h_l(n), e.g. ALL-CAPS text against the same text in normal case.

A `ConceptLibrary` holds vectors for several concepts at several layers, built in one batched pass
(one forward per batch of prompts records every chosen layer). Libraries and single vectors are
saved as safetensors plus a JSON sidecar, both written atomically; the sidecar names the model and
hidden size, and loading for another model is an error.

    library = build_word_library(loaded, ["bread", "ocean"])        # every layer
    vector = library.vector("bread", layer=15)                       # a ConceptVector
    save_library(library, "concepts/")
    library = load_library("concepts/", loaded)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.data.atomic import atomic_write_bytes, atomic_write_text
from core.progress import Progress
from core.runtime.capture import record_residual
from core.runtime.chat import user_prompt
from core.runtime.layers import resolve_layers
from core.runtime.models import LoadedModel

WORD_TEMPLATE = "Tell me about {word}"
LAST_PROMPT_TOKEN = "last_prompt_token"
METHODS = ("word", "contrastive")
FORMAT = "telltale-concepts/1"
LIBRARY_TENSORS = "concepts.safetensors"
LIBRARY_SIDECAR = "concepts.json"

# The project's own word lists. Targets span four kinds; baseline words are everyday nouns that
# are none of the targets, so their mean is a neutral "some word" reference point.
TARGET_WORDS: Mapping[str, tuple[str, ...]] = {
    "concrete": ("bread", "ocean", "guitar", "volcano", "dog", "diamond", "candle", "telescope",
                 "umbrella", "honey", "satellite", "tornado", "piano", "spider", "castle"),
    "abstract": ("justice", "betrayal", "freedom", "nostalgia", "curiosity", "peace", "fear",
                 "secrecy", "infinity", "gratitude", "shame", "harmony", "chaos", "patience",
                 "loneliness"),
    "people": ("Einstein", "Shakespeare", "Cleopatra", "Napoleon", "Beethoven", "Gandhi",
               "Picasso", "Mozart", "Darwin", "Newton"),
    "places": ("Paris", "Tokyo", "Egypt", "Antarctica", "Venice", "Sahara", "Brazil", "Iceland",
               "Moscow", "Himalayas"),
}
ALL_TARGET_WORDS: tuple[str, ...] = tuple(w for words in TARGET_WORDS.values() for w in words)

BASELINE_WORDS: tuple[str, ...] = (
    "table", "chair", "window", "door", "paper", "river", "mountain", "car", "bicycle", "apple",
    "book", "pencil", "shoe", "shirt", "cup", "bottle", "phone", "clock", "lamp", "bridge",
    "road", "tree", "flower", "grass", "stone", "cloud", "rain", "snow", "wind", "fire",
    "kitchen", "garden", "school", "office", "hospital", "train", "airplane", "boat", "ship",
    "horse", "cat", "bird", "fish", "cow", "sheep", "rabbit", "lion", "tiger", "elephant",
    "monkey", "carrot", "potato", "cheese", "butter", "milk", "coffee", "tea", "sugar", "salt",
    "rice", "soup", "cake", "orange", "banana", "grape", "lemon", "tomato", "onion", "egg",
    "knife", "fork", "spoon", "plate", "bowl", "bed", "pillow", "blanket", "mirror", "carpet",
    "wall", "roof", "floor", "stairs", "key", "lock", "box", "bag", "hat", "coat", "glove",
    "ring", "watch", "camera", "computer", "television", "radio", "letter", "map", "coin",
    "hammer",
)

LAYERS_ALL: tuple[int, ...] = ()  # pass to a builder for "every layer"


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"Concept method must be one of {', '.join(METHODS)}, not {method!r}.")
    return method


@dataclass(frozen=True)
class ConceptRecipe:
    """How a concept vector was made: word method (positive = (word,), negative = baseline words)
    or contrastive (positive and negative prompts)."""

    name: str
    method: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]

    def __post_init__(self) -> None:
        check_method(self.method)
        if not self.name.strip():
            raise ValueError("A concept needs a non-empty name.")
        if not self.positive or not self.negative:
            raise ValueError(f"Concept '{self.name}' needs at least one positive and one "
                             "negative prompt (or baseline word).")


@dataclass(frozen=True, eq=False)
class ConceptVector:
    """One concept at one layer: `vector` is a float32 CPU tensor [hidden]."""

    recipe: ConceptRecipe
    vector: torch.Tensor
    model: str
    layer: int
    position: str = LAST_PROMPT_TOKEN

    def __post_init__(self) -> None:
        if self.vector.ndim != 1:
            raise ValueError(f"A concept vector must be 1-D, got shape {tuple(self.vector.shape)}.")
        if not bool(torch.isfinite(self.vector).all()):
            raise ValueError(f"Concept vector '{self.recipe.name}' has non-finite values.")

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def norm(self) -> float:
        return float(self.vector.norm())

    @property
    def hidden_size(self) -> int:
        return int(self.vector.shape[0])


@dataclass(frozen=True, eq=False)
class ConceptLibrary:
    """Concept vectors for several concepts at the same layers of one model.

    vectors[name] is a float32 CPU tensor [len(layers), hidden]; recipes[name] says how it was made.
    """

    model: str
    hidden_size: int
    layers: tuple[int, ...]
    recipes: Mapping[str, ConceptRecipe]
    vectors: Mapping[str, torch.Tensor]
    position: str = LAST_PROMPT_TOKEN

    def __post_init__(self) -> None:
        if set(self.recipes) != set(self.vectors):
            raise ValueError("A concept library needs one recipe per vector.")
        for name, tensor in self.vectors.items():
            if tuple(tensor.shape) != (len(self.layers), self.hidden_size):
                raise ValueError(f"Concept '{name}' has shape {tuple(tensor.shape)}, expected "
                                 f"({len(self.layers)}, {self.hidden_size}).")

    @property
    def concepts(self) -> list[str]:
        return list(self.vectors)

    def vector(self, name: str, layer: int) -> ConceptVector:
        """The vector of concept `name` at `layer`; KeyError names what the library holds."""
        if name not in self.vectors:
            raise KeyError(f"Concept '{name}' is not in this library (it holds "
                           f"{', '.join(self.vectors) or 'nothing'}).")
        if layer not in self.layers:
            raise KeyError(f"Layer {layer} is not in this library (it holds layers "
                           f"{', '.join(map(str, self.layers))}).")
        row = self.layers.index(layer)
        return ConceptVector(self.recipes[name], self.vectors[name][row].clone(), self.model,
                             layer, self.position)

    def norms(self, name: str) -> list[float]:
        """||v_l|| for each layer of the library, in order."""
        return [float(x) for x in self.vectors[name].norm(dim=-1)]

    def merge(self, other: ConceptLibrary) -> ConceptLibrary:
        """Both libraries' concepts (same model and layers); `other` wins on a repeated name."""
        if (other.model, other.hidden_size, other.layers) != (self.model, self.hidden_size,
                                                               self.layers):
            raise ValueError("Only libraries of the same model and layers can be merged.")
        return ConceptLibrary(self.model, self.hidden_size, self.layers,
                              {**self.recipes, **other.recipes}, {**self.vectors, **other.vectors},
                              self.position)


# ------------------------------------------------------------------ activations


def word_prompt(tokenizer: Any, word: str) -> str:
    """The chat prompt "Tell me about {word}", ready for the assistant's reply."""
    return user_prompt(tokenizer, WORD_TEMPLATE.format(word=word))


def _right_padded(tokenizer: Any, texts: Sequence[str],
                  device: torch.device) -> tuple[dict[str, torch.Tensor], list[int]]:
    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    lengths = [len(ids) for ids in encoded]
    if min(lengths) == 0:
        raise ValueError("A prompt encodes to no tokens.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(texts), max(lengths)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(encoded):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}, lengths


@torch.no_grad()
def last_token_activations(loaded: LoadedModel, prompts: Sequence[str], layers: Sequence[int],
                           batch_size: int = 16, progress: Progress | None = None) -> torch.Tensor:
    """Block outputs at the last token of each prompt: float32 CPU [len(layers), n_prompts, hidden].

    Prompts are right-padded (real tokens never see the padding); one forward per batch records
    every chosen layer, pooled on the fly to the last token so memory does not grow with length.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    chosen = resolve_layers(layers, loaded.n_layers)
    out = torch.empty(len(chosen), len(prompts), loaded.hidden_size)
    for lo in range(0, len(prompts), batch_size):
        chunk = prompts[lo : lo + batch_size]
        batch, lengths = _right_padded(loaded.tokenizer, chunk, loaded.input_device)
        spans = [[(0, n)] for n in lengths]
        with loaded.lock, record_residual(loaded.model, chosen, spans=spans, poolings=("last",),
                                          layer_path=loaded.layer_path) as rec:
            loaded.model(**batch, use_cache=False)
        for i, layer in enumerate(chosen):
            out[i, lo : lo + len(chunk)] = torch.cat(rec.pooled[(layer, "last")], dim=0)
        if progress:
            progress(min(lo + batch_size, len(prompts)), len(prompts))
    return out


def _layers_or_all(loaded: LoadedModel, layers: Sequence[int]) -> list[int]:
    return resolve_layers(layers, loaded.n_layers) if layers else list(range(loaded.n_layers))


def build_word_library(loaded: LoadedModel, words: Sequence[str],
                       layers: Sequence[int] = LAYERS_ALL,
                       baseline: Sequence[str] = BASELINE_WORDS, batch_size: int = 16,
                       progress: Progress | None = None) -> ConceptLibrary:
    """Word-method vectors for `words` at `layers` (empty: every layer), in one batched pass.

    v_l(w) = h_l(prompt(w)) - (1/|B|) sum_{b in B} h_l(prompt(b)), h_l at the last prompt token.
    """
    words = [w.strip() for w in words]
    if not words or any(not w for w in words):
        raise ValueError("Give at least one non-empty concept word.")
    if len(set(words)) != len(words):
        raise ValueError("Concept words must not repeat.")
    if not baseline:
        raise ValueError("The word method needs at least one baseline word.")
    chosen = _layers_or_all(loaded, layers)
    prompts = [word_prompt(loaded.tokenizer, w) for w in [*words, *baseline]]
    acts = last_token_activations(loaded, prompts, chosen, batch_size, progress)
    base_mean = acts[:, len(words) :].mean(dim=1)  # [layers, hidden]
    recipes = {w: ConceptRecipe(w, "word", (w,), tuple(baseline)) for w in words}
    vectors = {w: (acts[:, i] - base_mean).contiguous() for i, w in enumerate(words)}
    return ConceptLibrary(loaded.name, loaded.hidden_size, tuple(chosen), recipes, vectors)


def build_contrastive_library(loaded: LoadedModel, name: str, positive: Sequence[str],
                              negative: Sequence[str], layers: Sequence[int] = LAYERS_ALL,
                              batch_size: int = 16, chat: bool = True,
                              progress: Progress | None = None) -> ConceptLibrary:
    """A contrastive concept: v_l = mean_p h_l(p) - mean_n h_l(n) at the last prompt token.

    With `chat` each text is a user turn in the chat template (as for the word method);
    without, the raw text is fed as it is.
    """
    positive = [p for p in positive if p.strip()]
    negative = [n for n in negative if n.strip()]
    if not positive or not negative:
        raise ValueError(f"Contrastive concept '{name}' needs at least one positive and one "
                         "negative prompt.")
    chosen = _layers_or_all(loaded, layers)
    texts = [*positive, *negative]
    prompts = [user_prompt(loaded.tokenizer, t) for t in texts] if chat else texts
    acts = last_token_activations(loaded, prompts, chosen, batch_size, progress)
    vector = acts[:, : len(positive)].mean(dim=1) - acts[:, len(positive) :].mean(dim=1)
    recipe = ConceptRecipe(name, "contrastive", tuple(positive), tuple(negative))
    return ConceptLibrary(loaded.name, loaded.hidden_size, tuple(chosen), {name: recipe},
                          {name: vector.contiguous()})


def caps_pairs(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ALL-CAPS contrast: (texts in upper case, the same texts as given)."""
    return [t.upper() for t in texts], list(texts)


def random_like(vector: torch.Tensor, seed: int) -> torch.Tensor:
    """A random Gaussian direction with the same norm as `vector` (a matched-norm control)."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(vector.shape[0], generator=gen, dtype=torch.float32)
    return direction / direction.norm() * float(vector.float().norm())


# ------------------------------------------------------------------ files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_model(meta: Mapping[str, Any], loaded: LoadedModel | None, where: str | Path) -> None:
    """ValueError when saved vectors were built for another model or hidden size."""
    if loaded is None:
        return
    if int(meta["hidden_size"]) != loaded.hidden_size or meta["model"] != loaded.name:
        raise ValueError(
            f"The concept vectors in {where} were built for model '{meta['model']}' (hidden size "
            f"{meta['hidden_size']}), not '{loaded.name}' (hidden size {loaded.hidden_size}); "
            f"rebuild them with `telltale concept --model ...` for this model.")
    layers = meta["layers"] if "layers" in meta else [meta["layer"]]
    too_deep = [layer for layer in layers if not 0 <= int(layer) < loaded.n_layers]
    if too_deep:
        raise ValueError(f"The concept vectors in {where} use layers {too_deep} that "
                         f"'{loaded.name}' ({loaded.n_layers} blocks) does not have.")


def _recipe_json(recipe: ConceptRecipe) -> dict[str, Any]:
    return {"method": recipe.method, "words": list(recipe.positive),
            "negatives": list(recipe.negative)}


def _recipe_from(name: str, data: Mapping[str, Any]) -> ConceptRecipe:
    return ConceptRecipe(name, data["method"], tuple(data["words"]), tuple(data["negatives"]))


_SIDECAR_TYPES: dict[str, type | tuple[type, ...]] = {
    "model": str, "hidden_size": int, "layer": int, "layers": list, "name": str,
    "method": str, "words": list, "negatives": list, "position": str, "tensors_sha256": str,
    "norm": (int, float), "concepts": dict}


_VECTOR_FIELDS = ("model", "hidden_size", "layer", "name", "method", "words", "negatives",
                  "tensors_sha256")
_LIBRARY_FIELDS = ("model", "hidden_size", "layers", "concepts", "tensors_sha256")


def _read_sidecar(path: Path, required: Sequence[str]) -> dict[str, Any]:
    """The JSON sidecar of a vector or library with its `required` fields, types checked;
    ValueError naming the file and the field for anything else."""
    if not path.is_file():
        raise FileNotFoundError(f"Concept sidecar {path} does not exist.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}).") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a Telltale concept file (format {FORMAT}).")
    _check_fields(meta, path, required)
    return meta


def _check_fields(meta: Mapping[str, Any], path: Path, required: Sequence[str]) -> None:
    for name, kind in _SIDECAR_TYPES.items():
        value = meta.get(name)
        if value is None and name not in required:
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}, field '{name}': expected "
                             f"{'a number' if isinstance(kind, tuple) else kind.__name__}, got "
                             f"{json.dumps(value)[:60]}.")
    if meta["hidden_size"] < 1:
        raise ValueError(f"{path}, field 'hidden_size': must be positive.")
    layers = meta.get("layers", [meta.get("layer")])
    if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in layers):
        raise ValueError(f"{path}, field 'layers': expected layer numbers (0 or more).")
    for name in ("words", "negatives"):
        if name in meta and not all(isinstance(w, str) for w in meta[name]):
            raise ValueError(f"{path}, field '{name}': expected a list of strings.")


def _load_tensors(path: Path, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise FileNotFoundError(f"Concept tensors {path} do not exist.")
    if _sha256(path) != meta.get("tensors_sha256"):
        raise ValueError(f"{path} does not match its sidecar (checksum differs); the pair was "
                         "written by different runs, rebuild the concepts.")
    return {k: v.float() for k, v in load_file(str(path)).items()}


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> str:
    from safetensors.torch import save

    data = save({k: v.detach().float().cpu().contiguous() for k, v in tensors.items()})
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def save_library(library: ConceptLibrary, folder: str | Path) -> Path:
    """Write `concepts.safetensors` (one [layers, hidden] tensor per concept) and `concepts.json`
    (model, hidden size, layers, position, and per concept: method, words, negatives, norms).

    Each file is replaced atomically; the sidecar, written last, holds the tensors' checksum, so
    a pair from different runs is detected on load.
    """
    out = Path(folder)
    sha = _save_tensors(dict(library.vectors), out / LIBRARY_TENSORS)
    meta = {
        "format": FORMAT, "model": library.model, "hidden_size": library.hidden_size,
        "layers": list(library.layers), "position": library.position, "tensors_sha256": sha,
        "concepts": {name: {**_recipe_json(library.recipes[name]),
                            "norms": library.norms(name)} for name in library.concepts},
    }
    atomic_write_text(out / LIBRARY_SIDECAR, json.dumps(meta, indent=1) + "\n")
    return out


def load_library(folder: str | Path, loaded: LoadedModel | None = None) -> ConceptLibrary:
    """Read a library written by `save_library`; with `loaded`, check it is for that model."""
    where = Path(folder)
    meta = _read_sidecar(where / LIBRARY_SIDECAR, _LIBRARY_FIELDS)
    check_model(meta, loaded, where)
    tensors = _load_tensors(where / LIBRARY_TENSORS, meta)
    names = list(meta["concepts"])
    if set(names) != set(tensors):
        raise ValueError(f"{where}: the sidecar and the tensors list different concepts.")
    try:
        recipes = {n: _recipe_from(n, meta["concepts"][n]) for n in names}
        return ConceptLibrary(meta["model"], int(meta["hidden_size"]), tuple(meta["layers"]),
                              recipes, {n: tensors[n] for n in names},
                              meta.get("position", LAST_PROMPT_TOKEN))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{where / LIBRARY_SIDECAR} does not describe its vectors: "
                         f"{err}.") from None


def _pair_paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    if base.suffix in (".safetensors", ".json"):
        base = base.with_suffix("")
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def save_concept(vector: ConceptVector, path: str | Path) -> tuple[Path, Path]:
    """Write one vector as PATH.safetensors + PATH.json (model, hidden size, layer, position,
    method, words, negatives, norm); returns both paths."""
    tensors_path, sidecar = _pair_paths(path)
    sha = _save_tensors({"vector": vector.vector}, tensors_path)
    meta = {"format": FORMAT, "name": vector.name, "model": vector.model,
            "hidden_size": vector.hidden_size, "layer": vector.layer, "position": vector.position,
            **_recipe_json(vector.recipe), "norm": vector.norm, "tensors_sha256": sha}
    atomic_write_text(sidecar, json.dumps(meta, indent=1) + "\n")
    return tensors_path, sidecar


def load_concept(path: str | Path, loaded: LoadedModel | None = None) -> ConceptVector:
    """Read a vector written by `save_concept`; with `loaded`, check it is for that model."""
    tensors_path, sidecar = _pair_paths(path)
    meta = _read_sidecar(sidecar, _VECTOR_FIELDS)
    check_model(meta, loaded, sidecar)
    tensor = _load_tensors(tensors_path, meta).get("vector")
    if tensor is None or tensor.shape != (int(meta["hidden_size"]),):
        raise ValueError(f"{tensors_path} does not hold one vector of the size its sidecar says "
                         f"({meta['hidden_size']}).")
    try:
        return ConceptVector(_recipe_from(meta["name"], meta), tensor, meta["model"],
                             int(meta["layer"]), meta.get("position", LAST_PROMPT_TOKEN))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{sidecar} does not describe its vector: {err}.") from None
