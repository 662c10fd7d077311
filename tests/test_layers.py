"""Finding decoder blocks and reading layer indices, checked against each family's known layout."""

from __future__ import annotations

import operator

import pytest
import torch
from torch import nn

from core.runtime.capture import record_residual
from core.runtime.layers import (
    KNOWN_LAYER_PATHS,
    decoder_layers,
    n_layers,
    parse_layers,
    resolve_layer,
    resolve_layers,
)
from tests.tiny_models import FAMILIES, LAYERS, random_batch, tiny_model

# Where each family keeps its blocks, written out by hand from the transformers modeling files.
EXPECTED_PATH = {
    "llama": "model.layers",
    "qwen2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "opt": "model.decoder.layers",
}


# ------------------------------------------------------------------ decoder_layers


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_layers_finds_the_blocks_of_every_family(family: str) -> None:
    model = tiny_model(family)
    expected = operator.attrgetter(EXPECTED_PATH[family])(model)
    found = decoder_layers(model)
    assert found is expected
    assert len(found) == LAYERS
    assert n_layers(model) == LAYERS


class _CustomStack(nn.Module):
    """An architecture the search does not know: its blocks live at `trunk.blocks`."""

    def __init__(self, blocks: nn.ModuleList) -> None:
        super().__init__()
        self.trunk = nn.Module()
        self.trunk.blocks = blocks


def test_layer_path_override_finds_a_custom_stack_and_hooks_it() -> None:
    inner = tiny_model("llama")
    custom = _CustomStack(inner.model.layers)
    with pytest.raises(ValueError):
        decoder_layers(custom)  # not at any known path
    found = decoder_layers(custom, layer_path="trunk.blocks")
    assert found is inner.model.layers
    assert n_layers(custom, layer_path="trunk.blocks") == LAYERS

    batch = random_batch()
    with record_residual(custom, [1], layer_path="trunk.blocks") as rec:
        out = inner(**batch, output_hidden_states=True)
    assert torch.equal(rec.hidden[1][0], out.hidden_states[2])


def test_unknown_model_raises_naming_every_path_tried() -> None:
    class Bare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(ValueError) as err:
        decoder_layers(Bare())
    message = str(err.value)
    assert "Bare" in message
    for path in KNOWN_LAYER_PATHS:
        assert path in message
    assert "layer_path" in message


def test_wrong_override_path_raises_naming_it() -> None:
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="model.blocks"):
        decoder_layers(model, layer_path="model.blocks")


def test_empty_or_non_list_path_is_not_taken_for_blocks() -> None:
    holder = nn.Module()
    holder.layers = nn.ModuleList()  # empty
    with pytest.raises(ValueError):
        decoder_layers(holder)
    model = tiny_model("llama")
    with pytest.raises(ValueError):
        decoder_layers(model, layer_path="model.norm")  # a module, not a ModuleList


# ------------------------------------------------------------------ resolve_layer(s)


@pytest.mark.parametrize(("index", "expected"), [(0, 0), (3, 3), (-1, 3), (-4, 0), (-2, 2)])
def test_resolve_layer_counts_negatives_from_the_end(index: int, expected: int) -> None:
    assert resolve_layer(index, 4) == expected


@pytest.mark.parametrize("index", [4, 5, -5, -100])
def test_resolve_layer_out_of_range_raises(index: int) -> None:
    with pytest.raises(ValueError, match=str(index)):
        resolve_layer(index, 4)


def test_resolve_layers_keeps_order_and_drops_repeats() -> None:
    assert resolve_layers([2, -1, 0, 3, -2], 4) == [2, 3, 0]


# ------------------------------------------------------------------ parse_layers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8,15", [8, 15]),
        (" 8 , 15 ", [8, 15]),
        ("-1", [29]),
        ("0-3", [0, 1, 2, 3]),
        ("28-29", [28, 29]),
        ("-3--1", [27, 28, 29]),
        ("0-2,5,-1", [0, 1, 2, 5, 29]),
        ("5,5,4-6", [5, 4, 6]),
        ("all", list(range(30))),
        (" all ", list(range(30))),
    ],
)
def test_parse_layers_reads_lists_ranges_and_all(text: str, expected: list[int]) -> None:
    assert parse_layers(text, 30) == expected


@pytest.mark.parametrize("text", ["junk", "8;15", "1.5", "a-3", "0-x", "30", "-31", "0-30"])
def test_parse_layers_rejects_junk_and_out_of_range(text: str) -> None:
    with pytest.raises(ValueError):
        parse_layers(text, 30)


@pytest.mark.parametrize("text", ["", " , ", "5-3"])
def test_parse_layers_rejects_selections_that_select_nothing(text: str) -> None:
    with pytest.raises(ValueError):
        parse_layers(text, 30)
