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

from dashboard import state

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
TIMEOUT = 120
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


def test_no_pages_folder_beside_the_app_and_unique_urls() -> None:
    from dashboard.app import PAGES

    # a pages/ folder beside app.py would switch Streamlit to its file-per-page mode
    assert not (Path(APP).parent / "pages").exists()
    urls = [page.url_path for page in PAGES]
    assert len(set(urls)) == len(urls)


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
    samples = state.sample_files()
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
    request = state.SignalsRequest(("default", "cpu", "float32"), "abc", ("lines", None),
                                   ("a", "b"))
    stored = request.to_state()
    assert json.loads(json.dumps(stored)) == stored  # plain values only
    assert state.SignalsRequest.from_state(stored) == request
    assert state.SignalsRequest.from_state({"model": 3}) is None
    assert state.SignalsRequest.from_state(None) is None


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
    assert [p.name for p in state.sample_files(tmp_path)] == ["a.jsonl", "b.jsonl"]
    assert state.sample_files(tmp_path / "missing") == []


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
