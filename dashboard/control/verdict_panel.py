"""The Fine-tuning page's verdict before training: does EAFT suit this file
(`core.control.suitability`, on absolute cuts, whatever cuts the page's plane uses), and the
EAFT config fragment for LLaMA-Factory, Axolotl or TRL (`core.control.export`), shown and
downloadable, the same text `telltale eaft-stats --export` writes. No model call here: the scan
is done."""

from __future__ import annotations

import streamlit as st

from core.control.conflicts import ConflictScan
from core.control.eaft import LossConfig
from core.control.export import EXPORT_FORMATS, FILE_NAMES, trainer_fragment
from core.control.suitability import Suitability, suitability
from dashboard.common.widgets import download

TRAINER_KEY = "finetune_trainer"
TRAINER_TITLES = {"llamafactory": "LLaMA-Factory", "axolotl": "Axolotl", "trl": "TRL"}
VERDICT_BOXES = {"suits": st.success, "partly": st.warning, "does_not_suit": st.info}


def verdict_for_scan(scan: ConflictScan, alpha: float) -> Suitability | None:
    """The verdict on the scanned tokens, or None (with an error) when they cannot give one."""
    try:
        return suitability(scan.tokens, alpha=alpha)
    except ValueError as error:
        st.error(str(error))
        return None


def show_verdict(verdict: Suitability) -> None:
    """The verdict, the shares behind it and the cuts it uses."""
    head, _, rest = verdict.reason.partition(": ")  # "EAFT suits this file: 24% of ..."
    VERDICT_BOXES[verdict.verdict](f"**{head}:** {rest}")
    cols = st.columns(4)
    cols[0].metric("confident-conflict tokens", f"{verdict.conflict_token_share:.1%}",
                   help=f"of {verdict.n_tokens:,} response tokens")
    cols[1].metric("their share of the SFT loss", f"{verdict.conflict_loss_share:.1%}",
                   help="suits from 20%, partly from 10% (this project's rules of thumb)")
    cols[2].metric("uncertain tokens' share of the SFT loss",
                   f"{verdict.uncertain_loss_share:.1%}")
    cols[3].metric("conflicts' share of the gradient", f"{verdict.conflict_sft_grad_share:.0%}"
                   f" → {verdict.conflict_eaft_grad_share:.0%}", help="under SFT → under EAFT")
    st.caption(f"The verdict uses absolute cuts, the same for every file: confident conflict p ≤ "
               f"{verdict.p_cut:g} and H~ ≤ {verdict.h_cut:g}, uncertain H~ ≥ "
               f"{verdict.uncertain_cut:g} (the cuts below only redraw the plane). Same as "
               "`telltale eaft-stats --json` (`suitability`).")


def show_trainer_exports(verdict: Suitability, scan: ConflictScan, alpha: float, name: str,
                         stem: str) -> None:
    """The config fragment of the chosen trainer (with this scan's K, norm and alpha), and a
    download of it; a setting the trainer cannot express is a sentence instead."""
    st.markdown("**Train with EAFT elsewhere**")
    trainer = str(st.radio("Trainer", EXPORT_FORMATS, key=TRAINER_KEY, horizontal=True,
                           format_func=TRAINER_TITLES.get))
    config = LossConfig(kind="eaft", k=scan.k, alpha=alpha, norm=scan.norm)
    try:
        text = trainer_fragment(trainer, config, verdict, data=name)
    except ValueError as error:
        st.info(str(error))
        return
    suffix = FILE_NAMES[trainer].rsplit(".", 1)[-1]
    st.code(text, language="python" if suffix == "py" else "yaml")
    download(f"Download the {TRAINER_TITLES[trainer]} fragment", text,
             f"{stem}-{FILE_NAMES[trainer]}", "text/x-python" if suffix == "py"
             else "application/yaml", key=f"finetune_fragment_{trainer}")
    st.caption(f"K={scan.k}, alpha={alpha:g}, H normalised by "
               f"{'ln K' if scan.norm == 'lnk' else '3.0'}; the same text as `telltale "
               f"eaft-stats --data {name} --k {scan.k} --alpha {alpha:g} --norm {scan.norm} "
               f"--export {trainer}`.")


__all__ = ["TRAINER_KEY", "VERDICT_BOXES", "show_trainer_exports", "show_verdict",
           "verdict_for_scan"]
