"""The Fine-tuning page's comparison: short fine-tuning runs of each method (SFT, EAFT, ...) on
the open file, over several seeds, each evaluated every few steps on held-out target data (what
it learned) and general data (what it forgot); the methods are compared where they made the same
progress on the target (`core.control.finetune.compare_methods`), with the spread over seeds and
|dtheta|. A press starts a background job (`control.state.start_compare` on the
`dashboard.common.jobs` board); the page follows it with a progress bar. Figures and tables:
`control.compare_charts`."""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from core.control.finetune import DEFAULT_METHODS as ADAMW_METHODS  # no lr-matched control
from core.control.finetune import CompareResult
from core.control.finetune_data import FinetuneExample
from dashboard.common import state
from dashboard.common.jobs import Job, board
from dashboard.common.runs import Run, with_model
from dashboard.common.state import NO_MODEL
from dashboard.common.widgets import FileChoice, choose_file, report_issues, table_download
from dashboard.control import compare_charts as cc
from dashboard.control import state as fs

GENERAL_SAMPLE_KEY = "finetune_general_sample"
GENERAL_UPLOAD_KEY = "finetune_general_upload"
METHODS_KEY = "finetune_methods"
STEPS_KEY = "finetune_steps"
EVAL_EVERY_KEY = "finetune_eval_every"
SEEDS_KEY = "finetune_seeds"
BATCH_KEY = "finetune_batch_size"
LORA_KEY = "finetune_lora"
MAX_EVAL_KEY = "finetune_max_eval"
LR_KEY = "finetune_lr"
COMPARE_KEY = "finetune_compare_request"  # session state: what "Start comparison" asked for
COMPARE_JOB_KEY = "finetune_compare_job"  # session state: the key of this session's latest run

GENERAL_SAMPLE = "finetune_general.jsonl"
DEFAULT_METHODS = ("sft", "eaft")
POLL_S = 0.5
LEARNING_RATES = ("default", "1e-5", "3e-5", "1e-4", "2e-4", "5e-4", "1e-3")
METHOD_HELP = ("sft: plain cross-entropy. eaft: each token weighted by H~^alpha. sft_kl: SFT plus "
               "KL to the frozen base. hard_mask: drop tokens below the 15th percentile of H~. "
               "Under AdamW a loss scale cancels, so SFT at a matched learning rate is no "
               "control: the methods are compared at matched target-loss reduction.")
GENERAL_CHOICE = FileChoice(
    "General file: what the model should not forget", GENERAL_SAMPLE_KEY,
    "Or upload a general file (JSONL)", GENERAL_UPLOAD_KEY, default=GENERAL_SAMPLE)
COMPARE = Run(COMPARE_KEY, "Start comparison", noun="comparison")


def compare_settings(file_hash: str, general_hash: str) -> fs.CompareRequest | None:
    """The run the inputs describe (the model is filled in by the press)."""
    peft = fs.has_peft()
    cols = st.columns([3, 1, 1])
    methods = cols[0].multiselect("Methods", list(ADAMW_METHODS), default=list(DEFAULT_METHODS),
                                  key=METHODS_KEY, help=METHOD_HELP)
    lr = cols[1].selectbox("Learning rate", LEARNING_RATES, key=LR_KEY,
                           help="default: 2e-4 with LoRA, 3e-5 without (AdamW, constant); the "
                                "README's runs: 1e-3 with LoRA")
    with cols[2]:
        st.write("")  # line the checkbox up with the inputs
        lora = st.checkbox("LoRA", value=peft, key=LORA_KEY, disabled=not peft,
                           help="train LoRA adapters (peft) instead of every weight"
                           if peft else "needs the peft package (pip install peft)")
    row = st.columns(5)
    steps = row[0].number_input("Steps", min_value=1, max_value=10_000, value=8, step=1,
                                 key=STEPS_KEY, help="training steps per method and seed")
    every = row[1].number_input("Evaluate every", min_value=1, max_value=10_000, value=2,
                                 step=1, key=EVAL_EVERY_KEY,
                                 help="steps between evaluations: the points of each curve")
    seeds = row[2].number_input("Seeds", min_value=1, max_value=20, value=3, step=1,
                                 key=SEEDS_KEY, help="each seed: its own held-out split, batch "
                                                     "order and LoRA start (shared by the "
                                                     "methods)")
    batch = row[3].number_input("Batch size", min_value=1, max_value=256, value=4, step=1,
                                 key=BATCH_KEY)
    max_eval = row[4].number_input("Eval examples", min_value=1, max_value=10_000, value=8,
                                    step=1, key=MAX_EVAL_KEY,
                                    help="at most this many held-out target and general "
                                         "examples are measured (greedy replies take time)")
    request = fs.CompareRequest(
        model=NO_MODEL, train_hash=file_hash,
        general_hash=general_hash, methods=tuple(str(m) for m in methods), steps=int(steps),
        batch_size=int(batch), lora=bool(lora and peft), max_eval=int(max_eval),
        lr=None if lr == "default" else float(str(lr)), repeats=int(seeds),
        eval_every=int(every))
    try:
        request.config()
    except ValueError as error:
        st.error(str(error))
        return None
    return request


def start_pressed(train: list[FinetuneExample], general: list[FinetuneExample]) -> None:
    """Start the run a press asked for, once its model is loaded; problems are one sentence."""
    taken = COMPARE.take(fs.CompareRequest.from_state)
    if taken is None:
        return
    request, loaded = taken
    if len(train) < 2:
        st.error("The comparison holds a quarter of the target examples out: it needs at "
                 "least two.")
        return
    try:
        job = fs.start_compare(request, loaded, train, general)
    except ValueError as error:
        st.error(str(error))
        return
    st.session_state[COMPARE_JOB_KEY] = job.key


def follow(job: Job[Any]) -> None:
    """A progress bar while the run works (in its job; a rerun finds it again)."""
    bar = st.progress(0.0, text="Starting the comparison ...")
    while job.running:
        if job.total:
            bar.progress(min(job.done / job.total, 1.0),
                         text=f"Training and measuring: {job.done} of {job.total} "
                              "(steps and evaluations)")
        time.sleep(POLL_S)
    bar.empty()


def show_matched(result: CompareResult) -> None:
    """Forgetting at the matched target-loss reduction: per method over seeds, and each method
    minus SFT seed by seed."""
    if not result.levels:
        st.warning("No reduction of the held-out target loss is reached by every run (some "
                   "method never lowered it), so there is no matched comparison: train longer "
                   "or at a higher learning rate. The curves show each run.")
        return
    for level in result.levels:
        st.markdown(f"**At {level:.1%} reduction of the held-out target loss** (the most every "
                    "run reached): forgetting is the change from the base model, mean ± sd "
                    "[min, max] over seeds")
        shown = cc.summary_table(result.summary)
        st.dataframe(shown[shown["level"] == level].drop(columns="level"), hide_index=True)
        if not result.differences.empty:
            paired = cc.differences_table(result.differences)
            st.dataframe(paired[paired["level"] == level].drop(columns="level"),
                         hide_index=True)
    st.caption("Below 0 in the second table: the method forgot less than SFT in the same seed "
               "(same held-out split, batches and LoRA start). Matching on progress, not on "
               "steps or learning rate: under AdamW a loss scale cancels, so EAFT's gate "
               "changes where the update goes, not its size.")


def show_comparison(job: Job[Any], stem: str) -> None:
    if job.error:
        st.error(job.error)
        return
    if job.stop_requested and job.result is None:
        st.warning("The comparison was stopped before the end: press the button to run it "
                   "again.")
        return
    result, request = job.result, job.request
    if not isinstance(result, CompareResult) or not isinstance(request, fs.CompareRequest):
        return
    config = result.config
    st.caption(f"{len(config.methods)} method(s) x {config.repeats} seed(s), {config.steps} "
               f"step(s) of batch {config.batch_size}{', LoRA' if config.lora else ''}, "
               f"lr {config.learning_rate:g} (AdamW, constant), evaluated after steps "
               f"{', '.join(str(s) for s in config.evaluation_steps)} on at most "
               f"{config.max_eval} held-out target and general example(s). Loss: mean CE of "
               "the response tokens; accuracy: share of greedy replies giving the answer.")
    show_matched(result)
    st.plotly_chart(cc.forgetting_figure(result.curves, result.matched, result.levels),
                    key="finetune_compare_chart")
    st.caption("Each line is one run (a method and a seed), a point per evaluation; the "
               "diamonds mark where each run reached the matched reduction (dotted line). At "
               "the same progress on the target, lower is less forgetting.")
    with st.expander("After the last step (every seed)"):
        final = result.final
        st.dataframe(final, hide_index=True, column_config={
            "lr": st.column_config.NumberColumn("lr", format="%.1e"),
            "mean_gate": st.column_config.NumberColumn("mean gate", format="%.3f"),
            **{c: st.column_config.NumberColumn(c, format="%.3f") for c in final.columns
               if c.endswith("_loss")},
            **{c: st.column_config.NumberColumn(c, format="percent") for c in final.columns
               if c.endswith("_acc")},
            "d_theta": st.column_config.NumberColumn("|dtheta|", format="%.4f"),
            "train_seconds": st.column_config.NumberColumn("train s", format="%.1f")})
    cols = st.columns(3)
    table_download("Download the comparison (CSV)", final, f"{stem}-compare.csv",
                   where=cols[0])
    table_download("Download the curves (CSV)", result.curves, f"{stem}-curves.csv",
                   where=cols[1])
    table_download("Download the matched runs (CSV)", result.matched, f"{stem}-matched.csv",
                   where=cols[2])


def compare_section(file_hash: str, train: list[FinetuneExample], stem: str) -> None:
    st.subheader("SFT against EAFT: does the gate protect the model?")
    st.caption("Fine-tune copies of the model on this file with each method and seed (per seed "
               "the same held-out split, batches and LoRA start), evaluate every few steps on "
               "held-out target data (what it learned) and general data (what it forgot), and "
               "compare the methods where they made the same progress on the target. On a CPU "
               "allow a minute or two per method and seed.")
    general_file = choose_file(fs.finetune_samples(), GENERAL_CHOICE)
    if general_file is None:
        st.info("Upload a general file to compare against.")
        return
    general_name, general_data = general_file
    general_load = fs.read_finetune_file(general_data, general_name)
    report_issues(general_name, general_load.issues, general_load.n_skipped,
                  len(general_load.examples), "example")
    if not general_load.examples:
        st.info(f"{general_name} holds no valid example.")
        return
    request = compare_settings(file_hash, state.content_hash(general_data))
    start_pressed(train, general_load.examples)
    job = board().get(st.session_state.get(COMPARE_JOB_KEY))
    running = job is not None and job.running
    COMPARE.button(None if request is None or running else with_model(request))
    if job is None:
        return
    if job.running:
        st.button("Stop", key="finetune_compare_stop", on_click=job.stop,
                  help="End the comparison after the step in progress.")
        st.caption("The comparison goes on in the background while you use other pages; "
                   "**Stop** ends it.")
        follow(job)
        st.rerun()  # once, at the end: the button and the table reflect the finished run
    show_comparison(job, stem)
