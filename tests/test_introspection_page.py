"""The Introspection page under `streamlit.testing.v1.AppTest`: it renders without a model (a
note says how to get one), and on a tiny random model loaded through the sidebar it runs a
trial (replies side by side with grade marks, rates, logit lens, downloads), keeps the result
across reruns from the cache, runs a sweep and the prefill experiment, and takes a contrastive
pair. Session state holds only small plain values. e2e: one trial on the default model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core.sense.arms import MIN_NONE_TRIALS
from core.sense.introspection import InjectionSpec, TrialConfig
from dashboard.common.runs import FINISHED
from dashboard.sense import page, prefill_panel, sweep_panel, trial_panel
from dashboard.sense import state as istate

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 120
RUN_TIMEOUT = 500  # loads the default model (~30 s on a busy machine), builds a vector, samples
CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")
TINY_LAYERS = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with a word-level tokenizer ("w3".."w96"), saved as a local folder
    the sidebar loads in a second."""
    from tests.tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama-intro")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(CHAT).save_pretrained(folder)
    return folder


def open_page() -> AppTest:
    """The app on its Introspection page (AppTest.switch_page only knows file pages, so the run
    is pointed at the hash st.navigation registered for the url_path)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    pages = at._registered_pages  # noqa: SLF001 - no public switch for callable pages
    at._page_hash = next(h for h, info in pages.items()
                         if info.get("url_pathname") == "introspection")
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Introspection"]
    return at


def with_model(spec: str) -> AppTest:
    at = open_page()
    at.sidebar.text_input[0].input(spec)
    at.sidebar.button[0].click().run()
    assert not at.exception and not at.sidebar.error
    return at


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def button(at: AppTest, label: str) -> Any:
    return next(b for b in at.button if b.label == label)


def html_bodies(at: AppTest) -> list[str]:
    return [str(h.proto.body) for h in at.get("html")]


def chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def array(value: Any) -> list[Any]:
    """A plotly array from a figure's JSON: a list, or {"dtype", "bdata"} (base64 binary)."""
    if isinstance(value, dict):
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"]).tolist()
    return list(value)


def downloads(at: AppTest) -> list[str]:
    return [b.label for b in at.get("download_button")]


def small_trial(at: AppTest, word: str = "w20", n_trials: int = 2, tokens: int = 4) -> AppTest:
    at.radio(key=page.SOURCE_KEY).set_value("own").run()
    at.text_input(key=page.OWN_WORD_KEY).input(word).run()
    at.number_input(key="intro_trial_n_trials").set_value(n_trials)
    at.number_input(key="intro_trial_max_new_tokens").set_value(tokens)
    at.slider(key=trial_panel.LAYER_KEY).set_value(2)
    return at.run()


def assert_plain_session_state(at: AppTest) -> None:
    for key in (istate.TRIAL_KEY, istate.SWEEP_KEY, istate.PREFILL_KEY):
        if key in at.session_state:
            json.dumps(at.session_state[key])  # small plain values only


def test_page_renders_without_a_model() -> None:
    at = open_page()
    assert not at.error
    assert any("No model loaded yet" in i for i in texts(at.info))
    assert any("20%" in m and "paper's numbers, not this tool's" in m
               for m in texts(at.markdown))
    assert sorted(b.label for b in at.button) == ["Load model", "Load the sidebar's model"]
    assert not at.get("plotly_chart") and not at.tabs


def test_trial_on_a_tiny_model_shows_replies_marks_lens_and_downloads(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = istate.run_trials
    monkeypatch.setattr(istate, "run_trials", lambda *a, **k: calls.append(1) or real(*a, **k))
    at = small_trial(with_model(str(tiny_model_dir)))
    assert [t.label for t in at.tabs] == ["Single trial", "Sweep", "Prefill"]
    assert at.slider(key=trial_panel.LAYER_KEY).max == TINY_LAYERS - 1
    # 2 trials of the concept and of each injected control, the no-injection arm's floor
    n_replies = 3 * 2 + max(MIN_NONE_TRIALS, 2)
    assert any(f"{n_replies} replies of up to 4 tokens" in c for c in texts(at.caption))
    button(at, "Run trial").click().run()
    assert not at.exception and not at.error
    assert [m.label for m in at.metric] == ["detection", "identification", "false positives",
                                            "net score", "coherence"]
    cards = [b for b in html_bodies(at) if "names the concept" in b]
    assert len(cards) == 4  # injected, none, random, negated
    assert any("'w20' (word method) at layer **2**, strength **4**" in c
               for c in texts(at.caption))
    assert any(c.startswith("‖v‖ = ") for c in texts(at.caption))
    titles = chart_titles(at)
    assert titles[0].startswith("Rates per condition") and titles[1].startswith("Logit lens")
    lens = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert array(lens["data"][0]["x"]) == list(range(TINY_LAYERS))
    assert downloads(at)[:5] == ["Trials (CSV)", "Rates (CSV)", "Rates figure (HTML)",
                                 "Logit lens (CSV)", "Logit-lens figure (HTML)"]
    assert at.session_state[istate.TRIAL_KEY]["status"] == FINISHED
    assert_plain_session_state(at)
    assert len(calls) == 1

    # a rerun shows the same result from the cache; changed settings keep it, with a note
    at.selectbox(key=trial_panel.TRIAL_SHOWN_KEY).select(1).run()
    at.slider(key=trial_panel.STRENGTH_KEY).set_value(2.0).run()
    assert not at.exception and len(calls) == 1
    assert not at.get("progress")  # the bars the cache replays end empty
    assert any("settings above have changed" in c for c in texts(at.caption))
    assert len([b for b in html_bodies(at) if "names the concept" in b]) == 4


def test_sweep_and_prefill_on_a_tiny_model(tiny_model_dir: Path) -> None:
    at = small_trial(with_model(str(tiny_model_dir)))
    at.multiselect(key=sweep_panel.SWEEP_CONCEPTS_KEY).set_value(["w20", "bread"])
    at.multiselect(key=sweep_panel.SWEEP_LAYERS_KEY).set_value([1, 2])
    at.multiselect(key=sweep_panel.SWEEP_STRENGTHS_KEY).set_value([1.0, 4.0])
    at.number_input(key="intro_sweep_n_trials").set_value(1)
    at.number_input(key="intro_sweep_max_new_tokens").set_value(3)
    at.run()
    # 1 trial x 2 layers x 2 strengths x 2 concepts x 3 injected arms, + no injection once
    n_replies = 2 * 2 * 2 * 3 + max(MIN_NONE_TRIALS, 1)
    assert any(c.startswith(f"{n_replies} replies of up to 3 tokens") for c in texts(at.caption))
    button(at, "Run sweep").click().run()
    assert not at.exception and not at.error
    assert chart_titles(at) == ["Injected concept", "Detection: the concept against the controls"]
    shown = at.selectbox(key=sweep_panel.SWEEP_SHOWN_KEY)
    assert shown.options == [sweep_panel.ALL_MEAN, "w20", "bread"]
    summary = next(d.value for d in at.dataframe if "net" in d.value.columns)
    assert len(summary) == 8 and set(summary["concept"]) == {"w20", "bread"}
    assert {"Summary (CSV)", "Trials (CSV)", "Heatmaps (HTML)", "Controls (HTML)"} <= set(
        downloads(at))
    at.text_input(key=page.OWN_WORD_KEY).input("w21").run()  # the sweep follows the concept
    assert at.multiselect(key=sweep_panel.SWEEP_CONCEPTS_KEY).value == ["w21", "bread"]
    assert any("settings above have changed" in c for c in texts(at.caption))

    at.multiselect(key=prefill_panel.PREFILL_LAYERS_KEY).set_value([1])
    at.number_input(key="intro_prefill_n_trials").set_value(1)
    at.number_input(key="intro_prefill_max_new_tokens").set_value(3)
    at.run()
    button(at, "Run prefill").click().run()
    assert not at.exception and not at.error
    assert chart_titles(at)[-1].startswith("Prefill: how often the model disowns")
    rates = next(d.value for d in at.dataframe if "apology" in d.value.columns)
    assert list(rates["condition"]) == ["none", "matching", "random"]
    assert {"Apology rates (CSV)", "Replies (CSV)", "Bar chart (HTML)"} <= set(downloads(at))
    assert_plain_session_state(at)


def test_contrastive_pair_and_incomplete_concepts(tiny_model_dir: Path) -> None:
    at = open_page()
    at.sidebar.text_input[0].input(str(tiny_model_dir))
    button(at, "Load the sidebar's model").click().run()  # the page's own load button
    assert not at.exception and any("hidden size" in c for c in texts(at.caption))
    at.radio(key=page.SOURCE_KEY).set_value("own").run()
    assert button(at, "Run trial").disabled  # no word typed yet
    at.radio(key=page.SOURCE_KEY).set_value("pair").run()
    assert any("Contrastive: the mean activation over 6 positive" in c
               for c in texts(at.caption))
    at.checkbox(key=page.PAIR_CAPS_KEY).uncheck().run()
    assert button(at, "Run trial").disabled  # no prompts typed yet
    at.text_area(key=page.PAIR_POSITIVE_KEY).input("w30 w31\nw32").run()
    at.text_area(key=page.PAIR_NEGATIVE_KEY).input("w40 w41").run()
    at.text_input(key=page.PAIR_NAME_KEY).input("w30").run()
    at.number_input(key="intro_trial_n_trials").set_value(1)
    at.number_input(key="intro_trial_max_new_tokens").set_value(3)
    button(at, "Run trial").click().run()
    assert not at.exception and not at.error
    assert any("'w30' (contrastive: 2 positive, 1 negative prompts)" in c
               for c in texts(at.caption))


def test_requests_round_trip_through_plain_values() -> None:
    model = ("default", "auto", "auto")
    caps = istate.ConceptChoice.caps("all caps", ["Hi there", " "])
    assert caps.positive == ("HI THERE",) and caps.negative == ("Hi there",)
    trial = istate.TrialRequest(model, caps, 7, InjectionSpec(2.0, "relative", "all"),
                                TrialConfig(n_trials=3, controls=("none",)))
    plain = json.loads(json.dumps(trial.to_state()))
    assert istate.TrialRequest.from_state(plain) == trial
    sweep = istate.SweepRequest(model, (istate.ConceptChoice.word("bread"), caps), (5, 10),
                                (1.0, 2.0))
    assert istate.SweepRequest.from_state(json.loads(json.dumps(sweep.to_state()))) == sweep
    prefill = istate.PrefillRequest(model, (10, 15), 16.0)
    assert istate.PrefillRequest.from_state(json.loads(json.dumps(prefill.to_state()))) == prefill
    assert istate.TrialRequest.from_state({"model": model}) is None
    with pytest.raises(ValueError, match="share a name"):
        istate.SweepRequest(model, (istate.ConceptChoice.word("bread"),) * 2, (5,), (1.0,))
    with pytest.raises(ValueError, match="needs at least one positive"):
        istate.ConceptChoice("pair", "contrastive", ("a",), ())


@pytest.mark.e2e
def test_single_trial_on_the_default_model() -> None:
    at = with_model("default")
    assert any("SmolLM2" in m for m in texts(at.sidebar.markdown))  # the model card
    assert at.slider(key=trial_panel.LAYER_KEY).value == 20  # two-thirds of 30 layers
    at.number_input(key="intro_trial_n_trials").set_value(1)
    at.number_input(key="intro_trial_max_new_tokens").set_value(16)
    at.run()
    button(at, "Run trial").click().run(timeout=RUN_TIMEOUT)
    assert not at.exception and not at.error
    assert len([b for b in html_bodies(at) if "names the concept" in b]) == 4
    lens = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert array(lens["data"][0]["x"]) == list(range(30))
    assert "' bread'" in lens["layout"]["title"]["text"]
    rates = next(d.value for d in at.dataframe if "detection_lo" in d.value.columns)
    assert list(rates["condition"]) == ["injected", "none", "random", "negated"]
    n = dict(zip(rates["condition"], rates["n"], strict=True))
    assert n["injected"] == n["random"] == n["negated"] == 1 and n["none"] >= 1
    assert_plain_session_state(at)
