"""Monitoring overhead on the default model: Hugging Face `generate` against the monitored loop in
watch mode, same prompts, seeds and number of new tokens, in one run; then, for backtracking,
the tokens processed per retry against the step length (they must not grow with the prefix).

The probe's weights do not change the cost, so a probe of the model's width with random weights
is used unless --probe names one. Both arms are warmed up once untimed, and which arm goes first
alternates from prompt to prompt, so neither pays the first call or the drift of a shared
machine alone. Both sample with temperature 0.7 and top-p 0.95, each its own way: `generate`
sorts the whole vocabulary every token, the monitor ranks the top 256 first (the same tokens
kept; see `core.diagnose.monitor.nucleus`), which pays for much of what the hooks and the
extra forward of the last token cost. Prints tokens per second of both and the ratio last
(target: monitored at most 1.05 times plain in time per token).

    python bench/monitor_overhead.py [--prompts 4] [--tokens 64] [--probe NAME] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.arith import cot_prompt, generate_problems  # noqa: E402
from core.diagnose.monitor import MonitorConfig, run_monitor  # noqa: E402
from core.diagnose.probes import LinearProbe, ProbeBundle, ProbeMeta, load_probe  # noqa: E402
from core.runtime.chat import user_prompt  # noqa: E402
from core.runtime.models import load_model  # noqa: E402


def random_probe(hidden: int, layer: int, threshold: float) -> ProbeBundle:
    rng = np.random.default_rng(0)
    meta = ProbeMeta(model="default", model_name="bench", hidden_size=hidden, layer=layer,
                     step_pooling="exp", tracker_pooling="causal",
                     baseline_pooling="prefix_mean", step_input=False, threshold=threshold,
                     step_threshold=0.5, data_hash="bench")
    return ProbeBundle(meta=meta, step=LinearProbe(rng.normal(size=hidden), 0.0),
                       tracker=LinearProbe(rng.normal(size=hidden), 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--probe", default=None)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice; 1 is steadier on a "
                             "shared CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    bundle = (load_probe(args.probe) if args.probe
              else random_probe(loaded.hidden_size, loaded.n_layers // 2, 0.5))
    questions = [cot_prompt(p) for p in generate_problems(args.prompts, seed=1000)]
    tok, model = loaded.tokenizer, cast(Any, loaded.model)

    def plain(question: str, seed: int, tokens: int) -> int:
        ids = tok(user_prompt(tok, question), return_tensors="pt", add_special_tokens=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=tokens, min_new_tokens=tokens,
                                 do_sample=True, temperature=0.7, top_p=0.95,
                                 pad_token_id=tok.pad_token_id)
        return int(out.shape[1] - ids["input_ids"].shape[1])

    def monitored(question: str, seed: int, tokens: int) -> int:
        config = MonitorConfig(mode="watch", max_new_tokens=tokens, min_new_tokens=tokens,
                               seed=seed, temperature=0.7, top_p=0.95)
        return run_monitor(loaded, bundle, question, config).tokens_processed

    plain(questions[0], 0, 4), monitored(questions[0], 0, 4)  # warm-up, untimed
    times = {"plain": 0.0, "monitored": 0.0}
    counts = {"plain": 0, "monitored": 0}
    arms = {"plain": plain, "monitored": monitored}
    for seed, question in enumerate(questions):
        order = ["plain", "monitored"] if seed % 2 == 0 else ["monitored", "plain"]
        for arm in order:
            start = time.perf_counter()
            counts[arm] += arms[arm](question, seed, args.tokens)
            times[arm] += time.perf_counter() - start
    plain_tokens, monitored_tokens = counts["plain"], counts["monitored"]
    plain_time, monitored_time = times["plain"], times["monitored"]
    per_plain, per_monitored = plain_time / plain_tokens, monitored_time / monitored_tokens
    print(f"plain generate:   {plain_tokens} tokens, {1 / per_plain:.1f} tokens/s")
    print(f"monitored (watch): {monitored_tokens} tokens, {1 / per_monitored:.1f} tokens/s")
    # backtracking: every retry re-processes its own step only, whatever the prefix length
    low = random_probe(loaded.hidden_size, loaded.n_layers // 2, 0.0)  # every step alarms
    result = run_monitor(loaded, low, questions[0], MonitorConfig(
        mode="backtrack", max_new_tokens=args.tokens, retries=1, max_backtracks=4))
    extra = result.tokens_processed - result.tokens_generated
    steps = sum(s.n_tokens for s in result.discarded)
    print(f"backtracking: {len(result.discarded)} retries, {extra} extra tokens processed for "
          f"{steps} tokens of discarded steps (ratio {extra / max(steps, 1):.2f}; the prefix is "
          "never re-encoded)")
    print(f"{len(questions)} prompts x {args.tokens} tokens, {torch.get_num_threads()} threads")
    print(f"time per token, monitored / plain: {per_monitored / per_plain:.3f}")


if __name__ == "__main__":
    main()
