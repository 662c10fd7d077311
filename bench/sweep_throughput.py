"""Introspection-trial throughput on the default model: the same injected trials sampled as one
batch against one at a time, in one run.

Both sides run `run_trials` with the same concept, layer, strength and sampling settings (no
controls, so only the injected condition is timed); only `batch_size` differs. Every trial draws
its own random numbers, so both sides should write the same replies (up to float noise under
padding): the bench says whether they did. Prints the time and trials per second of both, then
the ratio batched/sequential last.

    python bench/sweep_throughput.py [--trials 8] [--max-new-tokens 40] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.runtime.models import load_model  # noqa: E402
from core.sense.concepts import build_word_library  # noqa: E402
from core.sense.introspection import InjectionSpec, TrialConfig, run_trials  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--concept", default="bread")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--strength", type=float, default=4.0)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: leave as is)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    concept = build_word_library(loaded, [args.concept], [args.layer]).vector(
        args.concept, args.layer)
    spec = InjectionSpec(args.strength)

    def timed(batch_size: int) -> tuple[float, list[str]]:
        config = TrialConfig(n_trials=args.trials, max_new_tokens=args.max_new_tokens,
                             batch_size=batch_size, controls=())
        start = time.perf_counter()
        run = run_trials(loaded, concept, spec, config)
        return time.perf_counter() - start, list(run.trials["reply"])

    run_trials(  # warm-up
        loaded, concept, spec, TrialConfig(n_trials=1, max_new_tokens=2, controls=()))
    t_seq, seq = timed(1)
    t_batch, batch = timed(args.trials)
    n_seq, n_batch = len(seq), len(batch)
    print(f"model {loaded.name}, concept '{args.concept}' at layer {args.layer}, strength "
          f"{args.strength}, {args.trials} trials of up to {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} torch threads")
    print(f"one at a time:  {t_seq:7.2f} s  ({n_seq / t_seq:.3f} trials/s)")
    print(f"batched ({args.trials}):    {t_batch:7.2f} s  ({n_batch / t_batch:.3f} trials/s)")
    same = sum(a == b for a, b in zip(seq, batch, strict=True))
    print(f"same replies batched and one at a time: {same} of {n_seq}")
    print(f"throughput ratio batched/one-at-a-time: {(n_batch / t_batch) / (n_seq / t_seq):.2f}")


if __name__ == "__main__":
    main()
