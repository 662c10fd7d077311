"""EAFT overhead on the default model: one training step (forward, loss, backward, AdamW) with the
EAFT loss against the same step with plain cross-entropy (Hugging Face's causal-LM loss), on the
same batch, in one run; then the peak memory of the token statistics computed in chunks against
all at once, on one long sequence.

Memory is the peak of bytes held by tensors that torch operators created inside the measured
call (a TorchDispatchMode that adds each new storage's size and subtracts it when the storage is
freed); the input logits are not counted, nor scratch memory a kernel frees before it returns.
Times are process CPU time (what the step costs, steady when other jobs share the cores) and wall
time. Prints the step times, the loss alone, the memory figures, and the time ratio EAFT/CE last
(target: at most 1.05).

    python bench/eaft_overhead.py [--batch 4] [--repeats 3] [--long 2048] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.control.eaft import eaft_loss  # noqa: E402
from core.control.entropy import token_stats  # noqa: E402
from core.control.finetune_data import collate, encode_examples  # noqa: E402
from core.control.finetune_samples import target_examples  # noqa: E402
from core.runtime.models import load_model  # noqa: E402


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of storages created by operators inside the mode and still alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[tuple[int, int], int] = {}
        self.current = 0
        self.peak = 0

    def _free(self, key: tuple[int, int]) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor):
                storage = item.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key[0] and key not in self.live:
                    self.live[key] = key[1]
                    self.current += key[1]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out


def hf_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """What `transformers` computes for a causal LM: upcast, shift, mean CE ignoring -100."""
    logits = logits.float()
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                           labels[:, 1:].reshape(-1), ignore_index=-100)


def step_seconds(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 batch: dict[str, torch.Tensor], eaft: bool) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one training step."""
    wall, cpu = time.perf_counter(), time.process_time()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   use_cache=False).logits
    loss = (eaft_loss(logits, batch["labels"]) if eaft
            else hf_causal_lm_loss(logits, batch["labels"]))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - wall, time.process_time() - cpu


def loss_seconds(logits: torch.Tensor, labels: torch.Tensor, eaft: bool) -> float:
    """Process CPU seconds of the loss alone, forward and backward, on fixed logits."""
    leaf = logits.detach().requires_grad_(True)
    cpu = time.process_time()
    loss = eaft_loss(leaf, labels) if eaft else hf_causal_lm_loss(leaf, labels)
    loss.backward()
    return time.process_time() - cpu


def peak_stats_bytes(logits: torch.Tensor, labels: torch.Tensor, chunk: int | None) -> int:
    tracker = LiveTensorBytes()
    with tracker:
        token_stats(logits, labels, chunk=chunk)
    return tracker.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of each loss")
    parser.add_argument("--long", type=int, default=2048, help="tokens of the long sequence")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: "
                                                                   "torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    model = copy.deepcopy(loaded.model)
    model.requires_grad_(True)
    model.train()
    encoded, _ = encode_examples(loaded.tokenizer, target_examples(args.batch, seed=1))
    batch = collate(encoded, loaded.tokenizer.pad_token_id or 0, with_new_facts=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    step_seconds(model, optimizer, batch, eaft=False)  # warm-up both paths
    step_seconds(model, optimizer, batch, eaft=True)
    ce_steps, eaft_steps = [], []
    for _ in range(args.repeats):  # interleaved, so machine load hits both alike
        ce_steps.append(step_seconds(model, optimizer, batch, eaft=False))
        eaft_steps.append(step_seconds(model, optimizer, batch, eaft=True))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
    ce_loss = [loss_seconds(logits, batch["labels"], False) for _ in range(5)]
    eaft_loss_cpu = [loss_seconds(logits, batch["labels"], True) for _ in range(5)]
    n_tokens = int(batch["attention_mask"].sum())
    n_targets = int((batch["labels"][:, 1:] != -100).sum())

    vocab = int(model.config.vocab_size)
    gen = torch.Generator().manual_seed(0)
    long_logits = torch.randn(1, args.long, vocab, generator=gen, dtype=torch.bfloat16)
    long_labels = torch.randint(0, vocab, (1, args.long), generator=gen)
    chunked = peak_stats_bytes(long_logits, long_labels, args.chunk)
    whole = peak_stats_bytes(long_logits, long_labels, None)

    def median(values: list[tuple[float, float]], index: int) -> float:
        return statistics.median(v[index] for v in values)

    print(f"model {loaded.name}, batch {args.batch} x {batch['input_ids'].shape[1]} tokens "
          f"({n_tokens} real, {n_targets} trained), AdamW, median of {args.repeats} steps, "
          f"{torch.get_num_threads()} threads")
    for name, steps in (("cross-entropy", ce_steps), ("EAFT (K=20)  ", eaft_steps)):
        print(f"train step, {name}: CPU {median(steps, 1):7.3f} s, wall {median(steps, 0):7.3f} s"
              f"   (wall of each: {', '.join(f'{w:.2f}' for w, _ in steps)})")
    print(f"loss alone (forward + backward on the same logits), CPU median of 5: cross-entropy "
          f"{statistics.median(ce_loss) * 1000:.1f} ms, EAFT "
          f"{statistics.median(eaft_loss_cpu) * 1000:.1f} ms")
    print(f"token statistics on one {args.long}-token sequence, vocab {vocab}, bf16 logits "
          f"({long_logits.numel() * 2 / 2**20:.0f} MiB, not counted); peak bytes of tensors "
          "alive at once, tracked per operator (TorchDispatchMode):")
    print(f"  chunked ({args.chunk} positions): {chunked / 2**20:8.1f} MiB")
    print(f"  unchunked:                {whole / 2**20:8.1f} MiB (ratio {chunked / whole:.3f})")
    print(f"wall-time ratio EAFT/CE: {median(eaft_steps, 0) / median(ce_steps, 0):.3f}")
    print(f"time ratio EAFT/CE (process CPU time, steady under machine load): "
          f"{median(eaft_steps, 1) / median(ce_steps, 1):.3f}")


if __name__ == "__main__":
    main()
