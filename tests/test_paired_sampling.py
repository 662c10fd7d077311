"""Gumbel-max sampling with one generator per trial: exact samples from softmax(logits / T) in the
top-p nucleus, the same draws for the same trial whatever the batch around it."""

from __future__ import annotations

import pytest
import torch

from core.sense.paired_sampling import GumbelSampler, nucleus, stable_seed, trial_seeds

LOGITS = torch.tensor([[2.0, 1.0, 0.5, -1.0, 0.0]])


def _frequencies(temperature: float, top_p: float, n: int = 4000) -> torch.Tensor:
    counts = torch.zeros(LOGITS.shape[-1])
    sampler = GumbelSampler(range(n), temperature, top_p)
    ids = torch.zeros(n, 1, dtype=torch.long)
    picks = sampler(ids, LOGITS.expand(n, -1).clone()).argmax(dim=-1)  # type: ignore[arg-type]
    counts += torch.bincount(picks, minlength=LOGITS.shape[-1])
    return counts / n


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_argmax_of_logits_plus_gumbel_is_a_softmax_sample(temperature: float) -> None:
    expected = (LOGITS[0] / temperature).softmax(-1)
    got = _frequencies(temperature, 1.0)
    # 4000 draws: a standard error of at most 0.008 per token
    assert torch.allclose(got, expected, atol=0.035), (got, expected)


def test_top_p_keeps_the_nucleus_by_hand() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = nucleus(logits, 0.7).isfinite()[0].tolist()
    assert kept == [True, True, False, False]
    assert nucleus(logits, 0.5).isfinite()[0].tolist() == [True, False, False, False]
    assert nucleus(logits, 0.01).isfinite()[0].tolist() == [True, False, False, False]
    assert torch.equal(nucleus(logits, 1.0), logits)
    shuffled = logits[:, [2, 0, 3, 1]]
    assert nucleus(shuffled, 0.7).isfinite()[0].tolist() == [False, True, False, True]
    # LOGITS: p = 0.563, 0.207, 0.126, 0.028, 0.076; the mass before the 4th most likely token
    # (0.896) passes 0.8, so tokens 0-2 stay, renormalised
    got = _frequencies(1.0, 0.8)
    assert got[3] == 0 and got[4] == 0
    assert torch.allclose(got[:3], LOGITS[0, :3].softmax(-1), atol=0.035)


def test_a_trial_draws_the_same_numbers_in_any_batch() -> None:
    scores = torch.randn(3, 11)
    ids = torch.zeros(3, 1, dtype=torch.long)
    together = GumbelSampler([7, 8, 9])
    first_steps = [together(ids, scores.clone()) for _ in range(3)]  # type: ignore[arg-type]
    alone = GumbelSampler([8])
    for step in range(3):
        torch.testing.assert_close(alone(ids[1:2], scores[1:2].clone()),  # type: ignore[arg-type]
                                   first_steps[step][1:2])
    with pytest.raises(ValueError, match="3 seeds for a batch of 1"):
        together(ids[:1], scores[:1])  # type: ignore[arg-type]


def test_trial_seeds_depend_on_the_seed_index_and_scope_only() -> None:
    assert trial_seeds(0, [0, 1]) == trial_seeds(0, [0, 1])
    assert trial_seeds(0, [1]) == trial_seeds(0, [0, 1])[1:]
    assert trial_seeds(0, [0]) != trial_seeds(1, [0])
    assert trial_seeds(0, [0], "prefill", 3) != trial_seeds(0, [0], "prefill", 4)
    assert stable_seed("a", 1) == stable_seed("a", 1) != stable_seed("a", 2)
    with pytest.raises(ValueError, match="temperature"):
        GumbelSampler([1], temperature=0)
