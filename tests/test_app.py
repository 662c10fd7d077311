"""The Streamlit app under `streamlit.testing.v1.AppTest`: it starts, reads good and bad trace
files without an exception, reports a model that cannot load as one sentence, and (e2e, on the
default model) computes and plots per-step signals."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1.element_tree import Button

from dashboard.common import state
from dashboard.diagnose import trace_state

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 120
MAX_MODULE_LINES = 300  # a module longer than this is two nouns: split it
COMPUTE_TIMEOUT = 400  # the model loads in ~15-20 s alone, several times that on a busy machine

# Three valid chains (two with step lists and labels, one as a response string) and two bad lines.
GOOD_LINES = [
    {"id": "p1-c0", "problem_id": "p1", "prompt": "Tom has $3 and earns $4, then doubles it.",
     "steps": [{"text": "3 + 4 = 7", "label": 0, "prefix_label": 0},
               {"text": "7 * 2 = 15", "label": 1, "prefix_label": 1},
               {"text": "Answer: 15", "label": 0, "prefix_label": 1}],
     "answer": "15", "gold": "14", "is_correct": False, "source": "hand"},
    {"id": "p1-c1", "problem_id": "p1", "prompt": "Tom has $3 and earns $4, then doubles it.",
     "steps": [{"text": "3 + 4 = 7", "label": 0}, {"text": "7 * 2 = 14", "label": 0},
               {"text": "Answer: 14", "label": 0}],
     "answer": "14", "gold": "14", "is_correct": True, "source": "hand"},
    {"id": "p2-c0", "problem_id": "p2", "prompt": "What is 5 plus 6?",
     "response": "5 + 6 = 11\nAnswer: 11", "is_correct": True},
]
BAD_LINES = ['{"id": "bad", "prompt": "x", "steps": [{"text": "a", "label": 7}]}', "not json"]
MIXED_FILE = ("\n".join([json.dumps(line) for line in GOOD_LINES] + BAD_LINES) + "\n").encode()


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def upload(at: AppTest, name: str, data: bytes) -> AppTest:
    at.file_uploader(key="traces_upload").upload(name, data, "application/json")
    at.run()
    return at


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def problems(at: AppTest) -> list[tuple[int, str, str]]:
    """The rows (line, field, problem) of the table in the "Problems in ..." expander."""
    box = next(e for e in at.expander if e.label.startswith("Problems in"))
    table = box.dataframe[0].value
    return list(zip(table["line"], table["field"], table["problem"], strict=True))


def chain_tables(at: AppTest) -> list[pd.DataFrame]:
    """The chain tables on the page (the problem table has other columns)."""
    return [d.value for d in at.dataframe if "hallucinated_rate" in d.value.columns]


def button(at: AppTest, label: str) -> Button:
    return next(b for b in at.button if b.label == label)


def test_app_starts_with_traces_page_and_model_sidebar() -> None:
    at = start()
    assert texts(at.title) == ["Traces"]
    spec = at.sidebar.text_input[0]
    assert spec.label == "Model" and spec.value == "default"
    assert [b.label for b in at.sidebar.button] == ["Load model"]
    assert {s.label for s in at.sidebar.selectbox} == {"Device", "Dtype"}
    assert any("No model loaded" in c for c in texts(at.sidebar.caption))
    at.run()  # a second run still draws the frame (sidebar) and the page
    assert texts(at.title) == ["Traces"] and len(at.sidebar.button) == 1


def test_the_dashboard_is_one_folder_per_layer_of_short_modules() -> None:
    dashboard = Path(APP).parent
    # a pages/ folder beside app.py would switch Streamlit to its file-per-page mode
    assert not (dashboard / "pages").exists() and not (dashboard / "views").exists()
    assert {p.name for p in dashboard.iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "common", "diagnose", "sense", "control"}
    lengths = {str(p.relative_to(dashboard)): len(p.read_text(encoding="utf-8").splitlines())
               for p in dashboard.rglob("*.py")}
    assert len(lengths) > 30
    assert {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES} == {}


def test_pure_chart_modules_load_neither_streamlit_nor_torch() -> None:
    import subprocess
    import sys

    modules = ["dashboard.common.charts", "dashboard.diagnose.trace_charts",
               "dashboard.diagnose.probe_charts", "dashboard.diagnose.corpus_charts",
               "dashboard.diagnose.live_charts", "dashboard.sense.charts",
               "dashboard.sense.replies", "dashboard.control.charts",
               "dashboard.control.plane_charts"]
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
            "print(sorted({'streamlit', 'torch'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(APP).parents[1])
    assert out.stdout.strip() == "[]"


def test_mixed_upload_loads_valid_chains_and_lists_problems() -> None:
    at = upload(start(), "mixed.jsonl", MIXED_FILE)
    assert not at.exception
    assert texts(at.warning) == ["2 problem(s) in mixed.jsonl: 2 line(s) skipped, "
                                 "3 valid chain(s) loaded."]
    listed = problems(at)
    assert [(line, field) for line, field, _ in listed] == [(4, "steps[0].label"), (5, "")]
    assert listed[0][2] == "label must be 0, 1 or null, got 7"
    assert listed[1][2].startswith("invalid JSON")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["chains"] == "3" and metrics["steps"] == "8"
    assert metrics["labelled steps"] == "6"
    assert metrics["hallucinated-step rate"] == f"{1 / 6:.1%}"
    chains = chain_tables(at)[0]
    assert chains["id"].tolist() == ["p1-c0", "p1-c1", "p2-c0"]
    assert chains["hallucinated_rate"].tolist()[:2] == pytest.approx([1 / 3, 0.0])
    assert [b.label for b in at.download_button] == ["Download the chain table (CSV)"]


def test_selecting_a_chain_shows_its_labelled_steps() -> None:
    at = upload(start(), "mixed.jsonl", MIXED_FILE)
    at.selectbox(key="traces_chain").select("p1-c0").run()
    steps = at.table[0].value
    assert steps["text"].tolist() == ["3 + 4 = 7", "7 * 2 = 15", "Answer: 15"]
    assert steps["label"].tolist() == ["correct", "hallucinated", "correct"]
    assert "Tom has $3" in texts(at.text)[0]
    at.selectbox(key="traces_chain").select("p2-c0").run()
    steps = at.table[0].value
    assert steps["text"].tolist() == ["5 + 6 = 11", "Answer: 11"]  # split into lines
    assert steps["label"].tolist() == ["unlabelled", "unlabelled"]


@pytest.mark.parametrize("name, data, expected", [
    ("garbage.jsonl", bytes(range(256)) * 8, "problem(s) in garbage.jsonl"),
    ("latin1.jsonl", '{"id": "x", "prompt": "caf\u00e9"}\n'.encode("latin-1"),
     "problem(s) in latin1.jsonl"),
    ("array.jsonl", b"[1, 2, 3]\n", "problem(s) in array.jsonl"),
])
def test_bad_uploads_report_problems_not_exceptions(name: str, data: bytes,
                                                    expected: str) -> None:
    at = upload(start(), name, data)
    assert not at.exception
    assert any(expected in w for w in texts(at.warning))
    assert problems(at)[0][:2] == (1, "")  # line 1 is not a trace at all
    assert any("holds no valid chain" in i for i in texts(at.info))
    assert not chain_tables(at)  # no chain table for a file without chains


def test_empty_upload_says_there_is_nothing() -> None:
    at = upload(start(), "empty.jsonl", b"")
    assert not at.exception and not at.warning
    assert any("empty.jsonl holds no valid chain (0 line(s) read)" in i for i in texts(at.info))


def test_sample_file_loads() -> None:
    samples = trace_state.sample_files()
    if not samples:
        pytest.skip("no sample_traces/*.jsonl yet (make sample-traces)")
    at = start()
    at.selectbox(key="traces_sample").select(samples[0].name).run()
    assert not at.exception
    assert int(next(m.value for m in at.metric if m.label == "chains")) > 0
    assert not at.error


def test_model_that_cannot_load_shows_one_sentence(tmp_path: Path) -> None:
    at = start()
    missing = str(tmp_path / "no-such-model.gguf")
    at.sidebar.text_input[0].input(missing)
    at.sidebar.button[0].click().run()
    assert not at.exception
    errors = texts(at.sidebar.error)
    assert len(errors) == 1 and errors[0].startswith(f"Could not load the GGUF file {missing}")
    assert "Traceback" not in errors[0]
    at.run()  # the sentence stays until the next attempt; no model is held
    assert texts(at.sidebar.error) == errors and state.MODEL_CHOICE_KEY not in at.session_state


def test_signals_request_round_trips_through_session_state() -> None:
    request = trace_state.SignalsRequest(("default", "cpu", "float32"), "abc", ("lines", None),
                                   ("a", "b"))
    stored = request.to_state()
    assert json.loads(json.dumps(stored)) == stored  # plain values only
    assert trace_state.SignalsRequest.from_state(stored) == request
    assert trace_state.SignalsRequest.from_state({"model": 3}) is None
    assert trace_state.SignalsRequest.from_state(None) is None


def test_model_choice_checks_its_fields() -> None:
    assert state.ModelChoice().as_tuple() == ("default", "auto", "auto")
    with pytest.raises(ValueError, match="device"):
        state.ModelChoice("default", "tpu", "auto")
    with pytest.raises(ValueError, match="dtype"):
        state.ModelChoice("default", "cpu", "int3")
    with pytest.raises(ValueError, match="Type a model"):
        state.ModelChoice("  ")


def test_content_hash_and_sample_files(tmp_path: Path) -> None:
    assert state.content_hash(b"abc") == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"[:16]
    (tmp_path / "b.jsonl").write_text("{}\n")
    (tmp_path / "a.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in trace_state.sample_files(tmp_path)] == ["a.jsonl", "b.jsonl"]
    assert trace_state.sample_files(tmp_path / "missing") == []


@pytest.mark.e2e
def test_compute_signals_on_default_model_plots_marked_steps() -> None:
    at = upload(start(), "mixed.jsonl", MIXED_FILE)
    at.selectbox(key="traces_chain").select("p1-c0").run()
    button(at, "Compute signals").click().run(timeout=COMPUTE_TIMEOUT)  # load model, score
    assert not at.exception and not at.error
    assert any("SmolLM2" in m for m in texts(at.sidebar.markdown))  # the model card
    charts = at.get("plotly_chart")
    assert len(charts) >= 1
    figure = json.loads(charts[0].proto.spec)
    bars = {t["name"]: t for t in figure["data"] if t["type"] == "bar"}
    assert bars["hallucinated step"]["x"] == [1]  # step "7 * 2 = 15" is labelled 1
    assert bars["correct step"]["x"] == [0, 2]
    assert all(y > 0 for y in bars["correct step"]["y"] + bars["hallucinated step"]["y"])
    assert "7 * 2 = 15" in bars["hallucinated step"]["customdata"][0]
    assert [b.label for b in at.download_button] == [
        "Download the chain table (CSV)", "Download the signal table (CSV)"]
    for key, value in at.session_state.items():  # small plain values only: no model, no table
        if key != "traces_upload":
            json.dumps(value)
    at.selectbox(key="traces_signal").select("min_prob").run()  # from the cache, no rescoring
    assert not at.exception
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    probs = [y for t in figure["data"] if t["type"] == "bar" for y in t["y"]]
    assert probs and all(0 < p <= 1 for p in probs)


# ---------------------------------------------------------------------------- probe view

from core.data.importers import import_traces  # noqa: E402
from dashboard.diagnose import corpus_charts, probe_panels, train_state  # noqa: E402
from dashboard.diagnose import probe_state as dstate  # noqa: E402

CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")


def tiny_traces(n: int = 16) -> bytes:
    """Chains in the tiny tokenizer's words (w6..w89), two per problem, one bad step each."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        bad = int(rng.integers(1, 4))
        steps = [{"text": " ".join(f"w{int(x)}" for x in rng.integers(6, 90, 3)),
                  "label": int(t == bad)} for t in range(int(rng.integers(3, 6)))]
        lines.append(json.dumps({"id": f"c{i}", "problem_id": f"p{i // 2}",
                                 "prompt": f"w{10 + i % 7} w11", "steps": steps,
                                 "is_correct": bool(i % 3)}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a local model folder: the sidebar loads it in a second."""
    from tests.tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(CHAT).save_pretrained(folder)
    return folder


def load_sidebar_model(at: AppTest, spec: str) -> AppTest:
    at.sidebar.text_input[0].input(spec)
    at.sidebar.button[0].click().run()
    assert not at.exception and not at.sidebar.error
    return at


def probe_files(folder: Path, hidden: int, layer: int, name: str = "probe") -> tuple[bytes, bytes]:
    """A probe pair with random weights for a model of hidden size `hidden`."""
    import numpy as np

    from core.diagnose.probes import LinearProbe, ProbeBundle, ProbeMeta, save_probe

    rng = np.random.default_rng(0)
    meta = ProbeMeta(model="default", model_name="test", hidden_size=hidden, layer=layer,
                     step_pooling="exp", tracker_pooling="causal",
                     baseline_pooling="prefix_mean", step_input=False, threshold=0.5,
                     step_threshold=0.5, data_hash="h")
    bundle = ProbeBundle(meta=meta, tracker=LinearProbe(rng.normal(size=hidden) * 4, 0.0),
                         step=LinearProbe(rng.normal(size=hidden) * 4, 0.0))
    weights, sidecar = save_probe(folder / name, bundle)
    return weights.read_bytes(), sidecar.read_bytes()


def upload_probe(at: AppTest, weights: bytes, sidecar: bytes) -> AppTest:
    at.radio(key="probe_source").set_value("upload").run()
    at.file_uploader(key="probe_upload_weights").upload("p.safetensors", weights,
                                                        "application/octet-stream")
    at.file_uploader(key="probe_upload_sidecar").upload("p.json", sidecar, "application/json")
    return at.run()


def step_headers(at: AppTest) -> list[str]:
    return [m for m in texts(at.markdown) if m.startswith("**Step ")]


def test_without_shipped_probes_the_page_offers_upload_and_train(monkeypatch) -> None:
    monkeypatch.setattr(dstate, "shipped_probes", lambda folder=None: [])
    at = upload(start(), "mixed.jsonl", MIXED_FILE)
    assert not at.exception
    assert at.radio(key="probe_source").options == ["upload a probe",
                                                     "train one here on this file"]
    assert any("No probe ships" in c for c in texts(at.caption))
    assert any("Upload both files" in i for i in texts(at.info))


def test_shipped_probe_is_offered_first_with_its_card() -> None:
    if not dstate.shipped_probes():
        pytest.skip("no probe in sample_traces/probes/ (make default-probe)")
    at = upload(start(), "mixed.jsonl", MIXED_FILE)
    assert not at.exception
    assert at.radio(key="probe_source").value == "shipped"
    assert any("SmolLM2-135M-Instruct" in c and "layer" in c for c in texts(at.caption))


@pytest.mark.parametrize("case, expected", [
    ("garbage weights", "p.safetensors is not a Telltale probe's weights file"),
    ("list sidecar", "Probe sidecar p.json must be a JSON object"),
    ("sidecar without fields", "Probe sidecar p.json is not valid"),
    ("sidecar not JSON", "Probe sidecar p.json is not valid JSON"),
])
def test_bad_probe_upload_shows_an_error_not_an_exception(case: str, expected: str,
                                                          tmp_path: Path) -> None:
    weights, sidecar = probe_files(tmp_path, 32, 1)
    weights, sidecar = {"garbage weights": (b"not a safetensors file", sidecar),
                        "list sidecar": (weights, b"[1, 2]"),
                        "sidecar without fields": (weights, b'{"model": "m"}'),
                        "sidecar not JSON": (weights, b"\xff{")}[case]
    at = upload_probe(upload(start(), "mixed.jsonl", MIXED_FILE), weights, sidecar)
    assert not at.exception
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith(expected), errors
    assert "Traceback" not in errors[0] and "/tmp" not in errors[0]
    assert not [b for b in at.button if b.label == "Score with this probe"]


def test_a_good_probe_upload_shows_its_card(tmp_path: Path) -> None:
    at = upload_probe(upload(start(), "mixed.jsonl", MIXED_FILE), *probe_files(tmp_path, 32, 1))
    assert not at.exception and not at.error
    card = next(c for c in texts(at.caption) if c.startswith("**p**"))
    assert "hidden size 32" in card and "layer **1**" in card
    assert "alarm threshold **0.500**" in card
    assert button(at, "Score with this probe")
    assert any("Press **Score with this probe**" in i for i in texts(at.info))


def test_unknown_file_shape_is_an_error_and_other_formats_load() -> None:
    at = upload(start(), "odd.jsonl", b'{"arguments": {"seed": 1}}\n')
    assert not at.exception
    assert texts(at.error)[0].startswith("Cannot tell the trace format from the first record")
    gsm8k = json.dumps({"question": "Tom has 3 apples and gets 4 more. How many?",
                        "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}) + "\n"
    at = upload(start(), "gsm.jsonl", gsm8k.encode())
    assert not at.exception and not at.error
    at.selectbox(key="traces_chain").select_index(0).run()
    assert at.table[0].value["text"].tolist() == ["3 + 4 = 7"]


def test_shipped_probes_need_their_sidecar(tmp_path: Path) -> None:
    (tmp_path / "b.safetensors").write_bytes(b"w")
    (tmp_path / "b.json").write_text("{}")
    (tmp_path / "a.safetensors").write_bytes(b"w")  # no sidecar: not offered
    assert [p.name for p in dstate.shipped_probes(tmp_path)] == ["b.safetensors"]
    assert dstate.shipped_probes(tmp_path / "missing") == []
    probe = dstate.read_probe_file(tmp_path / "b.safetensors")
    assert (probe.name, probe.weights, probe.sidecar) == ("b", b"w", b"{}")
    assert probe.hash != dstate.ProbeFile("b", b"w", b"{ }").hash


def test_probe_requests_round_trip_through_session_state() -> None:
    score = dstate.ScoreRequest(("default", "cpu", "auto"), "f", ("auto", "lines", None), "p")
    assert json.loads(json.dumps(score.to_state())) == score.to_state()
    assert dstate.ScoreRequest.from_state(score.to_state()) == score
    assert dstate.ScoreRequest.from_state({"model": []}) is None
    train = train_state.TrainRequest(("default", "cpu", "auto"), "f", ("auto", "regex", "^x"),
                                     "4-8", True, 3, "exp3", True)
    assert json.loads(json.dumps(train.to_state())) == train.to_state()
    assert train_state.TrainRequest.from_state(train.to_state()) == train
    assert train_state.TrainRequest.from_state("junk") is None


def test_decide_focus_follows_the_newest_selection() -> None:
    seen = {"table": "[]", "chart": "null", "chain": "a"}
    row, bar = ("[3]", ["b", 2]), ("[\"a\", 1]", ["a", 1])
    nothing_t, nothing_c = ("[]", None), ("null", None)
    assert probe_panels.decide_focus(seen, row, nothing_c, "a", None) == ["b", 2]
    assert probe_panels.decide_focus(seen, nothing_t, bar, "a", None) == ["a", 1]
    assert probe_panels.decide_focus(seen, row, bar, "a", None) == ["b", 2]  # table first
    # nothing new: the focus stays; another chain picked: it clears
    assert probe_panels.decide_focus(seen, nothing_t, nothing_c, "a", ["a", 4]) == ["a", 4]
    assert probe_panels.decide_focus(seen, nothing_t, nothing_c, "c", ["a", 4]) is None
    # a selection seen before does not take the focus back
    seen_row = {**seen, "table": "[3]"}
    assert probe_panels.decide_focus(seen_row, row, nothing_c, "a", ["a", 4]) == ["a", 4]


def test_train_score_and_inspect_on_a_tiny_model(tiny_model_dir: Path) -> None:
    at = load_sidebar_model(start(), str(tiny_model_dir))
    at = upload(at, "tiny.jsonl", tiny_traces())
    at.radio(key="probe_source").set_value("train").run()
    at.number_input(key="probe_train_layer").set_value(1)
    at.number_input(key="probe_train_epochs").set_value(2)
    button(at, "Train probe").click().run()
    assert not at.exception and not at.error
    assert texts(at.success)[0].startswith("Trained tiny-L1 on ")
    labels = [b.label for b in at.download_button]
    assert "Download the trained probe weights (.safetensors)" in labels
    assert any(c.startswith("**tiny-L1**: step probe + prefix tracker") for c in texts(at.caption))

    button(at, "Score with this probe").click().run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["chains scored"] == "16" and metrics["steps scored"] == metrics["steps"]
    flagged_table = next(d for d in at.dataframe if (d.key or "").startswith("probe_flagged_"))
    flagged = flagged_table.value
    assert len(flagged) == int(metrics["flagged steps"]) > 0
    assert flagged["step_score"].is_monotonic_decreasing
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    chain = at.selectbox(key="traces_chain").value
    bars = next(t for t in chart["data"] if t.get("name") == "step score")
    n_steps = {t.id: t.n_steps for t in import_traces(tiny_traces()).traces}
    assert bars["x"] == list(range(n_steps[chain]))
    assert step_headers(at) and step_headers(at)[0].endswith(
        "(click a bar to inspect another step)")
    assert len(at.get("html")) == 1  # the token heat map
    corpus = next(d.value for d in at.dataframe if "step_auroc" in d.value.columns)
    assert corpus["scores"].tolist()[0].startswith("probes") and len(corpus) >= 6
    assert set(corpus["scores"]) <= set(corpus_charts.SCORER_TITLES.values())  # every one named
    for label in ("Download the scored chains (JSONL)", "Download the metrics (JSON)",
                  "Download the metrics (CSV)", "Download this chart (HTML)",
                  "Download the ROC curves (HTML)"):
        assert label in [b.label for b in at.download_button]

    # a flagged step of another chain: the chain picker follows, the inspector shows it
    other = flagged[flagged["trace_id"] != chain].iloc[0]
    row = int(flagged.index[flagged["trace_id"] != chain][0])
    at.session_state[flagged_table.key] = {"selection": {"rows": [row], "columns": [],
                                                         "cells": []}}
    at.run()
    assert not at.exception
    assert at.selectbox(key="traces_chain").value == other["trace_id"]
    assert step_headers(at)[0].startswith(f"**Step {other['step']} of chain {other['trace_id']}**")
    # a click on a bar of the chart inspects that step
    key = flagged_table.key.replace("probe_flagged_", "probe_chart_") + f"_{other['trace_id']}"
    at.session_state[key] = {"selection": {
        "points": [{"customdata": [other["trace_id"], 0, "text"], "x": 0, "y": 0.1}],
        "point_indices": [0], "box": [], "lasso": []}}
    at.run()
    assert not at.exception
    assert step_headers(at)[0].startswith(f"**Step 0 of chain {other['trace_id']}**")
    for name, value in at.session_state.items():  # small plain values only
        if not str(name).startswith(("traces_upload", "probe_flagged_", "probe_chart_")):
            json.dumps(value)


def test_probe_for_another_model_is_an_error_when_scoring(tiny_model_dir: Path,
                                                          tmp_path: Path) -> None:
    at = load_sidebar_model(start(), str(tiny_model_dir))
    at = upload_probe(upload(at, "tiny.jsonl", tiny_traces(4)), *probe_files(tmp_path, 64, 1))
    button(at, "Score with this probe").click().run()
    assert not at.exception
    errors = texts(at.error)
    assert len(errors) == 1 and "hidden size 64" in errors[0] and "hidden size 32" in errors[0]


def test_training_on_unusable_data_is_one_sentence(tiny_model_dir: Path) -> None:
    one_problem = b"".join(line + b"\n" for line in tiny_traces(2).splitlines())
    at = load_sidebar_model(start(), str(tiny_model_dir))
    at = upload(at, "one.jsonl", one_problem)
    at.radio(key="probe_source").set_value("train").run()
    button(at, "Train probe").click().run()
    assert not at.exception
    assert texts(at.error) == ["Training failed: Need chains of at least two problems to hold "
                               "some out for validation."]


@pytest.mark.e2e
def test_score_with_a_probe_on_the_default_model(tmp_path: Path) -> None:
    at = upload(start(), "mixed.jsonl", MIXED_FILE)
    at = upload_probe(at, *probe_files(tmp_path, 576, 15))
    button(at, "Score with this probe").click().run(timeout=COMPUTE_TIMEOUT)
    assert not at.exception and not at.error
    assert any("SmolLM2" in m for m in texts(at.sidebar.markdown))
    at.selectbox(key="traces_chain").select("p1-c0").run(timeout=COMPUTE_TIMEOUT)
    assert not at.exception and not at.error
    figure = json.loads(at.get("plotly_chart")[0].proto.spec)
    bars = next(t for t in figure["data"] if t.get("name") == "step score")
    assert bars["x"] == [0, 1, 2] and all(0 <= y <= 1 for y in bars["y"])
    assert "7 * 2 = 15" in bars["customdata"][1][2]
    marked = next(t for t in figure["data"] if t.get("name") == "labelled hallucinated")
    assert marked["x"] == [1]
    assert len(at.get("html")) == 1  # the token heat map of the inspected step
    assert {m.label: m.value for m in at.metric}["chains scored"] == "3"
