"""Capture overhead on the default model: a teacher-forced forward with pooled capture of two layers
against the same forward without hooks, over the same batches, in one run.

Prints the time of both, then the memory the recordings keep (pooled step vectors against every
token's vector), and the time ratio last (target: at most 1.05).

    python bench/capture_overhead.py [--traces sample_traces/arith_small.jsonl] [--chains 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data.traces import read_traces  # noqa: E402
from core.diagnose.encode import encode_trace  # noqa: E402
from core.diagnose.step_forward import pad_batch  # noqa: E402
from core.runtime.capture import record_residual  # noqa: E402
from core.runtime.models import load_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--traces", default="sample_traces/arith_small.jsonl")
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--layers", default="8,15")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    loaded = load_model(args.model)
    traces = read_traces(Path(args.traces)).traces
    if len(traces) < args.chains:
        traces = (traces * (args.chains // max(len(traces), 1) + 1))
    traces = traces[: args.chains]
    encoded = [encode_trace(loaded.tokenizer, t) for t in traces]
    layers = [int(x) for x in args.layers.split(",")]
    batches = [encoded[i : i + args.batch_size] for i in range(0, len(encoded), args.batch_size)]
    pad = loaded.tokenizer.pad_token_id or 0
    model = loaded.model

    def plain(batch: list) -> float:
        inputs = pad_batch(batch, pad)
        start = time.perf_counter()
        with torch.no_grad():
            model(**inputs, use_cache=False)
        return time.perf_counter() - start

    def captured(batch: list, pooled: bool) -> tuple[float, int]:
        inputs = pad_batch(batch, pad)
        spans = [list(e.step_spans) for e in batch] if pooled else None
        start = time.perf_counter()
        with torch.no_grad(), record_residual(model, layers, spans=spans,
                                              poolings=("exp",)) as rec:
            model(**inputs, use_cache=False)
        elapsed = time.perf_counter() - start
        kept = sum(t.numel() * t.element_size() for ts in rec.pooled.values() for t in ts)
        kept += sum(t.numel() * t.element_size() for ts in rec.hidden.values() for t in ts)
        return elapsed, kept

    plain(batches[0])  # warm-up
    captured(batches[0], True)
    plain_times, capture_times = [], []
    pooled_bytes = full_bytes = 0
    for repeat in range(args.repeats):
        t_plain = t_capture = 0.0
        for batch in batches:
            t_plain += plain(batch)
            seconds, kept = captured(batch, True)
            t_capture += seconds
            if repeat == 0:
                pooled_bytes += kept
                full_bytes += captured(batch, False)[1]
        plain_times.append(t_plain)
        capture_times.append(t_capture)
    n_tokens = sum(e.n_tokens for e in encoded)
    n_steps = sum(len(e.step_spans) for e in encoded)
    t_p, t_c = statistics.median(plain_times), statistics.median(capture_times)
    print(f"model {loaded.name}, {len(encoded)} chains, {n_steps} steps, {n_tokens} tokens, "
          f"layers {layers}, batch {args.batch_size}, median of {args.repeats} passes")
    print(f"forward without hooks:      {t_p:.3f} s ({n_tokens / t_p:,.0f} tokens/s)")
    print(f"forward with pooled capture: {t_c:.3f} s ({n_tokens / t_c:,.0f} tokens/s)")
    print(f"kept by all-token capture:  {full_bytes / 2**20:.2f} MiB")
    print(f"kept by pooled capture:     {pooled_bytes / 2**20:.2f} MiB "
          f"(ratio {pooled_bytes / full_bytes:.4f})")
    print(f"time ratio capture/plain:   {t_c / t_p:.3f}")


if __name__ == "__main__":
    main()
