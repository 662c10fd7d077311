"""Probe training and scoring speed on 20,000 steps of features of the default model's width.

By default the features are synthetic (Gaussian, hidden size 576, chains of 4-12 steps with a
planted hallucination direction), so the figure measures the training code, not a capture; pass
--capture DIR (a `telltale capture` or `telltale train --capture` folder) to time real
captured features instead: its chains are taken in order and repeated until --steps are
reached (a folder with more steps is cut there). Prints the time to fit the step probe (LBFGS
with the strong-Wolfe line search, and whether it converged), the prefix tracker (20 epochs),
the text-only classifier (TF-IDF + logistic regression, one C, on synthetic calculation lines,
one per step), and scoring throughput, last.

    python bench/probe_training.py [--steps 20000] [--capture DIR --layer L]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.diagnose.probes import ChainFeatures, TrackerConfig, fit_logistic, train_tracker  # noqa: E402
from core.diagnose.text_baseline import fit_text_classifier  # noqa: E402


def synthetic_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Calculation lines like a chain's steps; label 1 when the stated result is off."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(2, 60, n), rng.integers(2, 20, n)
    wrong = rng.random(n) < 0.3
    texts = [f"{x} + {y} = {x + y + int(w) * int(rng.choice([-2, -1, 1, 2]))}"
             for x, y, w in zip(a, b, wrong, strict=True)]
    return texts, wrong.astype(int)


def synthetic(n_steps: int, hidden: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=hidden)
    chains, total = [], 0
    while total < n_steps:
        steps = int(rng.integers(4, 13))
        onset = int(rng.integers(0, steps + 4))
        prefix = (np.arange(steps) >= onset).astype(float)
        x = rng.normal(size=(steps, hidden)) + np.outer(prefix, direction) * 0.3
        chains.append((x.astype(np.float32), prefix))
        total += steps
    return chains


def from_capture(folder: str, layer: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from core.diagnose.evaluation import chain_groups
    from core.diagnose.feature_store import load_capture

    cap = load_capture(folder)
    feats = cap.matrix(layer, "exp")
    labels = cap.index["prefix_label"].astype(float).to_numpy()
    return [(feats[rows], labels[rows]) for rows in chain_groups(cap.index).values()]


def repeat_to(chains: list[tuple[np.ndarray, np.ndarray]], n_steps: int
              ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The chains in order, cycled, until they hold at least `n_steps` steps."""
    out, total = [], 0
    while total < n_steps:
        chain = chains[len(out) % len(chains)]
        out.append(chain)
        total += len(chain[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--capture", default=None)
    parser.add_argument("--layer", type=int, default=15)
    args = parser.parse_args()
    chains = (repeat_to(from_capture(args.capture, args.layer), args.steps) if args.capture
              else synthetic(args.steps, args.hidden))
    x = np.concatenate([c[0] for c in chains])
    y = np.concatenate([c[1] for c in chains])
    print(f"{len(x)} steps in {len(chains)} chains, hidden size {x.shape[1]} "
          f"({'captured' if args.capture else 'synthetic'} features)")
    start = time.perf_counter()
    step_probe = fit_logistic(x, y)
    t_step = time.perf_counter() - start
    start = time.perf_counter()
    step_scores = [step_probe.scores(c[0]) for c in chains]
    t_score = time.perf_counter() - start
    tracker_chains = [ChainFeatures(c[0], s, c[1]) for c, s in zip(chains, step_scores,
                                                                   strict=True)]
    start = time.perf_counter()
    tracker = train_tracker(tracker_chains, TrackerConfig())
    t_tracker = time.perf_counter() - start
    start = time.perf_counter()
    for c in chains:
        tracker.scores(c[0])
    t_score += time.perf_counter() - start
    texts, text_labels = synthetic_texts(len(x))
    start = time.perf_counter()
    text_model = fit_text_classifier(texts, text_labels, c=1.0)
    t_text = time.perf_counter() - start
    fit = step_probe.fit
    assert fit is not None
    print(f"step probe fit (LBFGS strong Wolfe, at most 100 iterations): {t_step:.2f} s "
          f"({fit.n_iter} iterations, {'converged' if fit.converged else 'NOT converged'})")
    print(f"prefix tracker fit (BCE start + 20 epochs): {t_tracker:.2f} s")
    print(f"text-only classifier fit ({len(texts):,} texts, "
          f"{sum(len(b.vocabulary) for b in text_model.blocks):,} n-grams): {t_text:.2f} s")
    print(f"scoring both probes: {len(x) / t_score:,.0f} steps/s")


if __name__ == "__main__":
    main()
