"""The Introspection page under `streamlit.testing.v1.AppTest`: it renders without a model (a
note says how to get one), and on a tiny random model loaded through the sidebar it runs a
trial (replies side by side with grade marks, rates, every arm beside its chance, logit lens,
downloads), runs the confounds (generation-only, yes/no questions, a mismatched concept) and
relative strengths, keeps the result across reruns from the cache, runs a sweep and the prefill
experiment, and takes a contrastive pair. Session state holds only small plain values. e2e: one
trial on the default model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from core.sense.arms import ALL_CONTROLS, ARMS, MIN_NONE_TRIALS
from core.sense.introspection import InjectionSpec, TrialConfig
from dashboard.common.runs import FINISHED
from dashboard.sense import control_charts, page, prefill_panel, sweep_panel, trial_panel
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
    assert any(c.startswith("‖v‖ = ") and "effective magnitude" in c for c in texts(at.caption))
    assert any("no injection: false positives" in c and f"(n {MIN_NONE_TRIALS})" in c
               for c in texts(at.caption))
    titles = chart_titles(at)
    assert titles[0] == "Every arm beside its chance"
    assert titles[1].startswith("Rates per condition") and titles[2].startswith("Logit lens")
    lens = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert array(lens["data"][0]["x"]) == list(range(TINY_LAYERS))
    assert downloads(at) == ["Trials (CSV)", "Rates (CSV)", "Controls (CSV)", "Logit lens (CSV)",
                             "Rates figure (HTML)", "Controls figure (HTML)",
                             "Logit-lens figure (HTML)"]
    # from the next rerun, the strength's help knows ||v|| at the layer: the effective magnitude
    # and its ratio to the residual norm
    help_text = at.run().slider(key=trial_panel.STRENGTH_KEY).help
    assert "‖v‖ = " in help_text and "mean residual norm = " in help_text
    assert "strength 4: effective magnitude " in help_text
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


def test_trial_with_the_confounds_shows_each_arm_beside_its_chance(tiny_model_dir: Path) -> None:
    at = small_trial(with_model(str(tiny_model_dir)), n_trials=2, tokens=3)
    at.radio(key=trial_panel.SCALE_KEY).set_value("relative").run()
    relative = at.slider(key=trial_panel.strength_key("relative"))
    assert (relative.min, relative.max, relative.value) == (0.0, 4.0, 0.5)
    assert "the strength is the ratio to the residual norm" in relative.help
    at.multiselect(key="intro_trial_controls").set_value(list(ALL_CONTROLS)).run()
    assert at.selectbox(key=trial_panel.PARTNER_KEY).value == "bread"  # not the concept asked
    # 2 trials of the concept and each of 6 injected controls (random, negated, generation-only,
    # yes/no, named, mismatch); the floor for no injection and for the plain yes/no questions
    n_replies = 7 * 2 + 2 * MIN_NONE_TRIALS
    assert any(f"{n_replies} replies of up to 3 tokens" in c for c in texts(at.caption))
    button(at, "Run trial").click().run()
    assert not at.exception and not at.error
    controls = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert controls["layout"]["title"]["text"] == "Every arm beside its chance"
    labels = [x.split("<br>")[0] for x in controls["data"][0]["x"]]
    assert labels == [control_charts.ARM_SHORT[a] for a in (
        "injected", "random", "negated", "generation_only", "yes_no", "named")]
    assert f"(n {MIN_NONE_TRIALS})" in controls["layout"]["title"]["subtitle"]["text"]
    table = next(d.value for d in at.dataframe if "reference" in d.value.columns)
    assert set(table["control"]) == set(ARMS)
    assert table.loc[table["control"] == "injected", "relative_magnitude"].iloc[0] == \
        pytest.approx(0.5)
    cards = html_bodies(at)
    assert len([b for b in cards if "says yes" in b]) == 2  # yes/no with and without injection
    assert len([b for b in cards if "names the concept" in b]) == 7
    assert any("strength **0.5** (relative)" in c for c in texts(at.caption))


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
    assert chart_titles(at) == ["Injected concept", "Detection: the concept against the controls",
                                "The confounds"]
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


def test_sweep_over_relative_strengths_with_the_confounds(tiny_model_dir: Path) -> None:
    at = small_trial(with_model(str(tiny_model_dir)))
    at.radio(key=sweep_panel.SWEEP_SCALE_KEY).set_value("relative").run()
    strengths = at.multiselect(key=sweep_panel.strengths_key("relative"))
    assert strengths.value == [0.25, 0.5, 1.0] and 16.0 not in strengths.options
    strengths.set_value([0.5])
    at.multiselect(key=sweep_panel.SWEEP_CONCEPTS_KEY).set_value(["w20"])
    at.multiselect(key=sweep_panel.SWEEP_LAYERS_KEY).set_value([2])
    at.number_input(key="intro_sweep_n_trials").set_value(1)
    at.number_input(key="intro_sweep_max_new_tokens").set_value(3)
    at.multiselect(key="intro_sweep_controls").set_value(list(ALL_CONTROLS)).run()
    assert at.selectbox(key=sweep_panel.SWEEP_PARTNER_KEY).value == "bread"
    button(at, "Run sweep").click().run()
    assert not at.exception and not at.error
    assert chart_titles(at)[-1] == "The confounds"
    confounds = json.loads(at.get("plotly_chart")[-1].proto.spec)
    assert f"(n {MIN_NONE_TRIALS})" in confounds["layout"]["title"]["subtitle"]["text"]
    summary = next(d.value for d in at.dataframe if "net" in d.value.columns)
    assert list(summary.columns[:5]) == sweep_panel.UNIT_COLUMNS
    assert summary["relative_magnitude"].tolist() == pytest.approx([0.5])
    arms = next(d.value for d in at.dataframe if "reference" in d.value.columns)
    assert set(arms["control"]) == set(ARMS)
    assert arms.loc[arms["control"] == "mismatch", "injected"].iloc[0] == "bread"
    assert {"Controls table (CSV)", "Confounds (HTML)"} <= set(downloads(at))


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
    mismatch = TrialConfig(n_trials=3, controls=("none", "mismatch"))
    paired = istate.TrialRequest(model, caps, 7, InjectionSpec(2.0), mismatch,
                                 istate.ConceptChoice.word("ocean"))
    assert istate.TrialRequest.from_state(json.loads(json.dumps(paired.to_state()))) == paired
    with pytest.raises(ValueError, match="needs a second concept"):
        istate.TrialRequest(model, caps, 7, InjectionSpec(2.0), mismatch)
    with pytest.raises(ValueError, match="must differ"):
        istate.TrialRequest(model, caps, 7, InjectionSpec(2.0), mismatch, caps)
    with pytest.raises(ValueError, match="generation-only"):
        istate.TrialRequest(model, caps, 7, InjectionSpec(2.0, positions="generated"),
                            TrialConfig(controls=("generation_only",)))
    sweep = istate.SweepRequest(model, (istate.ConceptChoice.word("bread"), caps), (5, 10),
                                (1.0, 2.0))
    assert istate.SweepRequest.from_state(json.loads(json.dumps(sweep.to_state()))) == sweep
    one = istate.SweepRequest(model, (caps,), (5,), (0.5,), "relative", trials=mismatch,
                              partner=istate.ConceptChoice.word("ocean"))
    assert istate.SweepRequest.from_state(json.loads(json.dumps(one.to_state()))) == one
    assert one.sweep_config().partner == "ocean"
    assert sweep.injected_partner is None  # two concepts: each one's partner is the next
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
    lens = json.loads(at.get("plotly_chart")[2].proto.spec)
    assert array(lens["data"][0]["x"]) == list(range(30))
    assert "' bread'" in lens["layout"]["title"]["text"]
    rates = next(d.value for d in at.dataframe if "detection_lo" in d.value.columns)
    assert list(rates["condition"]) == ["injected", "none", "random", "negated"]
    n = dict(zip(rates["condition"], rates["n"], strict=True))
    assert n["injected"] == n["random"] == n["negated"] == 1 and n["none"] >= 1
    assert_plain_session_state(at)
