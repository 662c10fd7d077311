"""Before training: does EAFT suit this fine-tuning file? A plain verdict from a conflict scan.

EAFT weights each token's loss by the model's normalised entropy H~ there. It protects what the
model knows where the SFT loss sits in *confident conflicts* (low p and low H~: the model is sure
of another token), by all but ignoring those tokens. Where a file's novelty shows as *uncertain*
tokens (high H~), EAFT's weight is largest exactly there, so it learns much what SFT learns and
has little to protect. (Under Adam a global scale of the loss cancels: what matters is where the
gate moves the weight, not its mean.) So the verdict rests on
    c = share of the summed SFT loss on confident conflicts,   u = the same on uncertain tokens
with absolute cuts, the ones the trainer logs (`core.control.eaft.DEFAULT_CONFLICT`: p <= 0.1
and H~ <= 0.2; uncertain H~ >= 0.5), so that a verdict means the same for every file (percentile
cuts are relative to the file: its bottom 15% of H~ always exists, conflict or not):
    c >= 0.20          "suits"          EAFT has conflicts to protect against
    0.10 <= c < 0.20   "partly"
    c < 0.10           "does_not_suit"  little to protect: expect EAFT to learn like SFT
These bounds are this project's rules of thumb, not the paper's.

Caveat in every verdict that suits: if the conflicts are what the file should teach (new facts,
a new notation), EAFT learns them slowly; mark them as new facts (the three-way gate) or use SFT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from core.control.conflicts import default_gates, summarise_conflicts
from core.control.eaft import DEFAULT_CONFLICT
from core.control.entropy import Thresholds

VERDICTS = ("suits", "partly", "does_not_suit")
SUITS_AT = 0.20
PARTLY_AT = 0.10


@dataclass(frozen=True)
class Suitability:
    """The verdict and the shares behind it (shares of tokens, of the summed SFT loss, and of
    the gradient pressure sum w |dCE/dz| under SFT and under EAFT)."""

    verdict: str
    reason: str
    n_tokens: int
    conflict_token_share: float
    conflict_loss_share: float
    uncertain_token_share: float
    uncertain_loss_share: float
    conflict_sft_grad_share: float
    conflict_eaft_grad_share: float
    p_cut: float
    h_cut: float
    uncertain_cut: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def verdict_for(conflict_loss_share: float) -> str:
    """"suits", "partly" or "does_not_suit" for a conflict share of the SFT loss."""
    if conflict_loss_share >= SUITS_AT:
        return "suits"
    if conflict_loss_share >= PARTLY_AT:
        return "partly"
    return "does_not_suit"


def _reason(verdict: str, c: float, u: float, tokens: float, sft_g: float,
            eaft_g: float) -> str:
    shares = (f"{c:.0%} of the SFT loss sits in confident conflicts ({tokens:.1%} of the "
              f"tokens: the model is sure of another token) and {u:.0%} in uncertain tokens")
    if verdict == "does_not_suit":
        return (f"EAFT has little to protect here: {shares}. EAFT weights the uncertain tokens "
                "most, so expect it to learn much what SFT learns, not to forget less.")
    opening = "EAFT suits this file" if verdict == "suits" else "EAFT partly suits this file"
    return (f"{opening}: {shares}. EAFT all but ignores the conflicts (their share of the "
            f"gradient pressure falls from {sft_g:.0%} under SFT to {eaft_g:.0%}), which is "
            "where SFT would overwrite what the model knows. If those conflicts are what the "
            "file should teach (new facts, a new notation), EAFT learns them slowly: mark them "
            "as new facts (the three-way gate) or use SFT.")


def suitability(tokens: pd.DataFrame, alpha: float = 1.0,
                thresholds: Thresholds = DEFAULT_CONFLICT) -> Suitability:
    """The verdict for a scan's token table (`core.control.conflicts.scan_conflicts(...).tokens`,
    or any frame with p, entropy_norm, ce, grad_norm and new_fact)."""
    summary = summarise_conflicts(tokens, thresholds, default_gates(alpha))
    shares = {name: {column: float(value) for column, value in row.items()}
              for name, row in summary.to_dict()["quadrants"].items()}
    conflict, uncertain = shares["confident_conflict"], shares["uncertain"]
    c, u = conflict["loss_share"], uncertain["loss_share"]
    verdict = verdict_for(c)
    return Suitability(
        verdict=verdict,
        reason=_reason(verdict, c, u, conflict["token_share"], conflict["sft_grad_share"],
                       conflict["eaft_grad_share"]),
        n_tokens=summary.n_tokens, conflict_token_share=conflict["token_share"],
        conflict_loss_share=c, uncertain_token_share=uncertain["token_share"],
        uncertain_loss_share=u, conflict_sft_grad_share=conflict["sft_grad_share"],
        conflict_eaft_grad_share=conflict["eaft_grad_share"], p_cut=summary.cuts.p,
        h_cut=summary.cuts.h, uncertain_cut=summary.cuts.uncertain)

__all__ = ["PARTLY_AT", "SUITS_AT", "VERDICTS", "Suitability", "suitability", "verdict_for"]
