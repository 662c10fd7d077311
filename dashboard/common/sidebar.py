"""The sidebar every page shares: choose and load a model, and show its card.

The model loads when the user presses "Load model" (or when a page's run asks for one, see
`request_model` and `dashboard.common.runs`), never on a plain page view, so opening the app is
instant.
"""

from __future__ import annotations

import streamlit as st

from core.runtime.models import DEFAULT_SPEC, DEVICES, DTYPES, LoadedModel
from dashboard.common.state import (
    ModelChoice,
    get_model,
    listening_beyond_this_machine,
    load_error_sentence,
    model_choice,
    set_model_choice,
    unload_model,
)

SPEC_KEY = "sidebar_model_spec"
DEVICE_KEY = "sidebar_model_device"
DTYPE_KEY = "sidebar_model_dtype"
ERROR_KEY = "sidebar_model_error"  # the last load failure, shown until the next attempt

SPEC_HELP = ("'default' is the embedded SmolLM2-135M-Instruct (no download). Also: a hub id "
             "such as Qwen/Qwen2.5-0.5B-Instruct, a local model folder, or a .gguf file.")


EXPOSED_WARNING = (
    "This server listens beyond this machine: anyone who can reach its port can load models "
    "and read files the server can read. Start it with `make run` (127.0.0.1) unless you mean "
    "that.")


def format_count(n: int) -> str:
    """134515008 -> '134.5 M'; 1_540_000_000 -> '1.54 B'."""
    if n >= 1_000_000_000:
        return f"{n / 1e9:.2f} B"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M"
    return f"{n:,}"


def typed_choice() -> ModelChoice:
    """The model described by the sidebar inputs right now (may differ from the loaded one)."""
    spec = str(st.session_state.get(SPEC_KEY, DEFAULT_SPEC)).strip()
    return ModelChoice(spec or DEFAULT_SPEC, st.session_state.get(DEVICE_KEY, "auto"),
                       st.session_state.get(DTYPE_KEY, "auto"))


def request_model() -> ModelChoice:
    """Make the sidebar's current inputs the session's model (it loads on this or the next run)
    and return it."""
    st.session_state.pop(ERROR_KEY, None)
    choice = typed_choice()
    set_model_choice(choice)
    return choice


def load_pressed() -> None:
    """on_click of "Load model" (and of a page's own load button)."""
    request_model()


def model_card(loaded: LoadedModel) -> None:
    """Name, size and placement of the loaded model."""
    with st.container(border=True):
        st.markdown(f"**{loaded.name}**")
        st.markdown(
            f"- layers: **{loaded.n_layers}**\n"
            f"- hidden size: **{loaded.hidden_size}**\n"
            f"- parameters: **{format_count(loaded.n_params)}**\n"
            f"- dtype: **{loaded.dtype}** on **{loaded.device}**\n"
            f"- loaded in **{loaded.load_seconds:.1f} s**")


def render_model_sidebar() -> LoadedModel | None:
    """Draw the model inputs and card; load the chosen model (cached). Returns it, or None."""
    with st.sidebar:
        if listening_beyond_this_machine():
            st.warning(EXPOSED_WARNING)
        st.header("Model")
        st.text_input("Model", value=DEFAULT_SPEC, key=SPEC_KEY, help=SPEC_HELP)
        left, right = st.columns(2)
        left.selectbox("Device", DEVICES, key=DEVICE_KEY,
                       help="auto: a CUDA GPU, then Apple mps, then the CPU.")
        right.selectbox("Dtype", list(DTYPES), key=DTYPE_KEY,
                        help="auto: bfloat16 on a GPU that supports it, float32 on the CPU.")
        st.button("Load model", type="primary", width="stretch", on_click=load_pressed)
        choice = model_choice()
        if choice is None:
            if ERROR_KEY in st.session_state:
                st.error(st.session_state[ERROR_KEY])
            st.caption("No model loaded yet. Press **Load model**; pages that need a model "
                       "load it themselves.")
            return None
        try:
            with st.spinner(f"Loading {choice.spec} ..."):
                loaded = get_model(*choice.as_tuple())
        except Exception as error:  # noqa: BLE001 - any failure is one sentence, no traceback
            st.session_state[ERROR_KEY] = load_error_sentence(choice.spec, error)
            set_model_choice(None)
            st.error(st.session_state[ERROR_KEY])
            return None
        model_card(loaded)
        st.button("Unload model", width="stretch", on_click=unload_model,
                  help="Free the model's memory (for every session of this server; the next "
                       "run loads it again).")
        if typed_choice() != choice:
            st.caption("The inputs above differ from the loaded model: press **Load model** "
                       "to switch.")
        return loaded
