"""Inputs the Introspection page's panels share: how to inject (positions, scale), the sampling
and controls of the trials, the concept the mismatch control injects, layers by depth, and the
note shown beside results whose settings have changed since they ran."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.sense.arms import ALL_CONTROLS, CONTROLS
from core.sense.concepts import ALL_TARGET_WORDS
from core.sense.introspection import TrialConfig
from dashboard.common.runs import Request
from dashboard.sense.control_charts import CONTROL_HELP, CONTROL_TITLES
from dashboard.sense.requests import ConceptChoice

POSITION_HELP = {
    "window": "window: from the blank line before the question to the end, generated tokens "
              "included (the paper's)",
    "all": "all: every position of the prompt and the reply",
    "generated": "generated: only the tokens the model writes",
}
SCALE_HELP = {
    "raw": "raw: strength x v (the paper's; ‖v‖ grows with depth)",
    "relative": "relative: strength x the layer's mean residual norm, along v",
}


def choose_sampling(prefix: str, n_trials: int, max_new_tokens: int,
                    with_controls: bool = True) -> TrialConfig | None:
    """Trials per condition, reply length, temperature, seed, batch and controls (the CLI's
    defaults); None with a warning for a bad combination."""
    with st.expander("Sampling and controls" if with_controls else "Sampling"):
        cols = st.columns(5)
        values: dict[str, Any] = {
            "n_trials": int(cols[0].number_input(
                "Trials per condition" if with_controls else "Replies per item", 1, 200,
                n_trials, 1, key=f"{prefix}_n_trials")),
            "max_new_tokens": int(cols[1].number_input("Max new tokens", 1, 1000,
                                                       max_new_tokens, 8,
                                                       key=f"{prefix}_max_new_tokens")),
            "temperature": float(cols[2].number_input(
                "Temperature", 0.05, 2.0, 1.0, 0.05, key=f"{prefix}_temperature",
                help="Trials are sampled; 1.0 is the paper's setting.")),
            "seed": int(cols[3].number_input("Seed", 0, 2**31 - 1, 0, 1, key=f"{prefix}_seed")),
            "batch_size": int(cols[4].number_input("Batch size", 1, 64, 8, 1,
                                                   key=f"{prefix}_batch_size",
                                                   help="Replies sampled at once.")),
            "controls": (),
        }
        if with_controls:
            values["controls"] = tuple(st.multiselect(
                "Controls", list(ALL_CONTROLS), default=list(CONTROLS), key=f"{prefix}_controls",
                format_func=CONTROL_TITLES.__getitem__,
                help="Without controls no rate means anything. " + CONTROL_HELP))
    try:
        return TrialConfig(**values)
    except ValueError as error:
        st.warning(str(error))
        return None


def choose_partner(key: str, asked: list[str]) -> ConceptChoice | None:
    """The concept the mismatch control injects while the model is asked about another: one of
    the target words not asked about (None when every word is taken)."""
    offered = [w for w in ALL_TARGET_WORDS if w not in asked]
    if not offered:
        return None
    word = st.selectbox("Mismatched concept", offered, key=key,
                        help="The mismatch control asks 'Do you detect an injected thought "
                             "about A?' while this concept is injected (rescaled to A's norm), "
                             "beside the same question with A injected.")
    return ConceptChoice.word(str(word))


def depth_layers(n_layers: int, fractions: tuple[float, ...]) -> list[int]:
    """Layers at these fractions of the model's depth (distinct, in range)."""
    return sorted({min(n_layers - 1, max(0, round(f * n_layers))) for f in fractions})


def stale_note(shown: Request, current: Request | None, what: str) -> None:
    """A note when the results shown ran with other settings than the inputs now describe."""
    if current is not None and shown.to_state() != current.to_state():
        st.caption(f"The settings above have changed since this run: press **{what}** to run "
                   "them. Shown: the last run's results.")
