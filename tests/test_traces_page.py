"""The Traces page's answers, chain view and corpus view under `AppTest`: the answered share and
the accuracy with its shuffled-gold chance rate beside it, the steps back on track in the chain
view, and the text-only classifier and last-token probe with the probes' lead over them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.data.answers import trace_accuracy
from core.data.importers import import_traces
from tests.test_app import (  # noqa: F401 - tiny_model_dir is a fixture
    button,
    load_sidebar_model,
    start,
    texts,
    tiny_model_dir,
    tiny_traces,
    upload,
)


def chain(cid: str, problem: str, labels: list[int], answer: str | None, gold: str) -> dict:
    """A chain in Telltale's format whose prefix labels the reader derives (paper convention)."""
    steps = [{"text": f"{cid} step {t}", "label": label} for t, label in enumerate(labels)]
    return {"id": cid, "problem_id": problem, "prompt": f"Problem {problem}", "steps": steps,
            "answer": answer, "answered": answer is not None, "gold": gold,
            "is_correct": answer == gold}


# six problems, two chains each: 9 of 12 state an answer, 5 the right one; r0 breaks at step 1
# and ends right (back on track at steps 2 and 3)
CHAINS = [
    chain("r0", "p0", [0, 1, 0, 0], "14", "14"), chain("r1", "p0", [0, 0, 0], "14", "14"),
    chain("w0", "p1", [0, 1, 1], "8", "9"), chain("w1", "p1", [0, 0], None, "9"),
    chain("a0", "p2", [0, 0], "3", "3"), chain("a1", "p2", [0, 1], "4", "3"),
    chain("b0", "p3", [0, 0], "5", "5"), chain("b1", "p3", [1, 0], None, "5"),
    chain("c0", "p4", [0, 0], "9", "7"), chain("c1", "p4", [0, 0], "6", "7"),
    chain("d0", "p5", [0, 0], None, "6"), chain("d1", "p5", [0, 0], "6", "6"),
]
FILE = ("\n".join(json.dumps(c) for c in CHAINS) + "\n").encode()


def metrics(at: object) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}  # type: ignore[attr-defined]


def test_summary_puts_the_answered_share_and_chance_beside_the_accuracy() -> None:
    at = upload(start(), "answers.jsonl", FILE)
    assert not at.exception and not at.error
    found = trace_accuracy(import_traces(FILE).traces)
    shown = metrics(at)
    assert shown["answer stated"] == "75.0%" and shown["final answer right"] == "41.7%"
    assert shown["chance"] == f"{found.chance_mean:.1%} ± {found.chance_sd:.1%}"
    assert found.chance_sd > 0  # six problems: the shuffles differ
    sentence = next(c for c in texts(at.caption) if c.startswith("Of the 12 chains"))
    assert "9 state an answer (75.0%) and 5 state the right one (41.7%)" in sentence
    assert "the same answers scored against golds shuffled across problems" in sentence
    table = next(d.value for d in at.dataframe if "answered" in d.value.columns)
    assert table["answered"].sum() == 9


def test_without_golds_the_page_says_there_is_no_chance_rate() -> None:
    lines = [{k: v for k, v in c.items() if k != "gold"} for c in CHAINS[:4]]
    at = upload(start(), "nogold.jsonl", ("\n".join(map(json.dumps, lines)) + "\n").encode())
    assert not at.exception and not at.error
    assert "chance" not in metrics(at) and metrics(at)["final answer correct"] == "50.0%"
    assert any(c.startswith("No gold answers in this file") for c in texts(at.caption))


def test_chain_view_marks_the_steps_back_on_track_and_states_the_answer() -> None:
    at = upload(start(), "answers.jsonl", FILE)
    at.selectbox(key="traces_chain").select("r0").run()
    assert not at.exception
    steps = at.table[0].value
    assert steps["back on track"].tolist() == [False, False, True, True]
    assert steps["prefix"].tolist() == [0, 1, 0, 0]  # the paper's labels: recovered
    assert "**Steps** (4; hallucinated steps red, 2 step(s) back on track green)" in \
        texts(at.markdown)
    assert any(c.startswith("stated answer 14 · gold 14 · right") for c in texts(at.caption))
    at.selectbox(key="traces_chain").select("w1").run()
    assert not at.table[0].value["back on track"].any()  # a wrong chain never recovers
    assert any(c.startswith("no answer stated · gold 9 · counts as wrong")
               for c in texts(at.caption))


def test_corpus_shows_the_text_only_classifier_and_last_token_probe_with_leads(
        tiny_model_dir: Path) -> None:  # noqa: F811 - the fixture imported above
    at = load_sidebar_model(start(), str(tiny_model_dir))
    at = upload(at, "tiny.jsonl", tiny_traces())
    at.radio(key="probe_source").set_value("train").run()
    at.number_input(key="probe_train_layer").set_value(1)
    at.number_input(key="probe_train_epochs").set_value(2)
    button(at, "Train probe").click().run()
    button(at, "Score with this probe").click().run()
    assert not at.exception and not at.error
    shown = next(d for d in at.dataframe if "step_lead" in d.value.columns)
    config = json.loads(shown.proto.columns)  # what the browser gets: titles on every column
    assert {c: config[c]["label"] for c in ("step_auroc", "step_lead", "final_lead")} == {
        "step_auroc": "step AUROC (95% interval)", "step_lead": "probes' lead, step AUROC",
        "final_lead": "probes' lead, final AUROC"}
    rows = shown.value.set_index("scores")
    text = "text-only classifier (no hidden state)"
    assert {text, "last-token probe"} <= set(rows.index)

    def number(cell: str) -> float:
        return float(cell.split(" (")[0])

    for name in (text, "last-token probe"):  # the lead with its paired interval
        lead = rows.loc[name, "step_lead"]
        assert number(lead) == pytest.approx(number(rows.iloc[0]["step_auroc"])
                                             - number(rows.loc[name, "step_auroc"]), abs=0.0011)
        assert lead.count(" to ") == 1 and lead.endswith(")")
    sentences = [m for m in texts(at.markdown) if m.startswith("Probes' lead over the ")]
    assert [s.split(":")[0] for s in sentences] == [
        f"Probes' lead over the {text}", "Probes' lead over the last-token probe"]
    assert all("95% interval" in s for s in sentences)
    assert any("resamples of problems" in c for c in texts(at.caption))
    step_auroc = next(m for m in at.metric if m.label == "step AUROC")
    assert step_auroc.delta.endswith("over text-only")
    roc = json.loads(at.get("plotly_chart")[1].proto.spec)
    dashed = [t["name"] for t in roc["data"] if t.get("line", {}).get("dash") == "dash"]
    assert len(dashed) == 1 and dashed[0].startswith(text)
    # the chain chart marks the steps back on track of a chain that recovers
    traces = import_traces(tiny_traces()).traces
    recovered = next(t for t in traces if t.is_correct and 0 in t.prefix_labels[1:]
                     and 1 in t.prefix_labels)
    at.selectbox(key="traces_chain").select(recovered.id).run()
    assert not at.exception
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    back = next(t for t in chart["data"] if t.get("name") == "back on track")
    labels = recovered.prefix_labels
    assert back["x"] == [t for t in range(len(labels)) if labels[t] == 0 and 1 in labels[:t]]
