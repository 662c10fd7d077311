"""Tiny random causal LMs of several families, built in the test (no download)."""

from __future__ import annotations

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    OPTConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

VOCAB = 97
HIDDEN = 32
LAYERS = 4


def tiny_config(family: str):
    common = {"vocab_size": VOCAB}
    if family == "llama":
        return LlamaConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=256, **common)
    if family == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=4, n_positions=256,
                          bos_token_id=0, eos_token_id=0, **common)
    if family == "gpt_neox":
        return GPTNeoXConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=LAYERS,
                             num_attention_heads=4, max_position_embeddings=256, **common)
    if family == "opt":
        return OPTConfig(hidden_size=HIDDEN, ffn_dim=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, max_position_embeddings=256,
                         word_embed_proj_dim=HIDDEN, **common)
    raise ValueError(family)


FAMILIES = ("llama", "qwen2", "gpt2", "gpt_neox", "opt")


def tiny_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    model.eval()
    return model


def random_batch(batch: int = 2, seq: int = 12, seed: int = 1, pad_last: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last:
        mask[-1, -pad_last:] = 0
    return {"input_ids": ids, "attention_mask": mask}


# A word-level tokenizer over the tiny vocabulary: ids 0-2 are special, "w3".."w96" are words.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def tiny_tokenizer(chat_template: str | None = None, with_eos: bool = True):
    """A fast tokenizer for the tiny models, built in the test (no download).

    "w5 w7" encodes to [5, 7]; `chat_template` (a Jinja string) is attached when given.
    """
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), VOCAB)})
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    specials = {"unk_token": "<unk>", "bos_token": "<s>"}
    if with_eos:
        specials["eos_token"] = "</s>"
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
