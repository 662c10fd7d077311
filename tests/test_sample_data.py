"""make_arith_traces on a tiny model: labelled files, the problem split, and resuming from the
journal of replies after an interruption."""

from __future__ import annotations

import json

import pytest

from core.data.sample_data import make_arith_traces
from core.data.traces import read_traces
from core.runtime.models import wrap_model
from tests.tiny_models import tiny_model, tiny_tokenizer

CHAT = "{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}w5 "


@pytest.fixture()
def loaded():
    return wrap_model(tiny_model("llama"), tiny_tokenizer(CHAT), name="tiny")


def test_split_by_problem_and_meta(loaded, tmp_path) -> None:
    summary = make_arith_traces(loaded, tmp_path / "a.jsonl", n_problems=6, samples=2,
                                max_new_tokens=8, batch_size=5, split_test=0.34)
    train = read_traces(tmp_path / "a_train.jsonl").traces
    test = read_traces(tmp_path / "a_test.jsonl").traces
    assert {t.problem_id for t in train}.isdisjoint({t.problem_id for t in test})
    assert len(train) + len(test) == summary.n_chains == 12 - summary.n_empty
    meta = json.loads((tmp_path / "a_test.meta.json").read_text())
    assert meta["schema_version"] == 1 and "telltale make-traces" in meta["regenerate"]
    assert not (tmp_path / "a.replies.jsonl").exists()


def test_interrupted_run_resumes_with_the_same_text(loaded, tmp_path, monkeypatch) -> None:
    make_arith_traces(loaded, tmp_path / "full.jsonl", n_problems=4, samples=2,
                      max_new_tokens=8, batch_size=3)
    full = (tmp_path / "full.jsonl").read_text()

    import core.data.sample_data as sd

    calls = {"n": 0}
    original = sd.sample_responses

    def interrupted(*args, **kwargs):
        on_batch = kwargs["on_batch"]

        def stop_after_two(first, batch):
            on_batch(first, batch)
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt

        return original(*args, **{**kwargs, "on_batch": stop_after_two})

    monkeypatch.setattr(sd, "sample_responses", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_arith_traces(loaded, tmp_path / "part.jsonl", n_problems=4, samples=2,
                          max_new_tokens=8, batch_size=3)
    journal = tmp_path / "part.replies.jsonl"
    assert len(journal.read_text().splitlines()) == 1 + 6  # header + two batches of 3
    monkeypatch.setattr(sd, "sample_responses", original)
    make_arith_traces(loaded, tmp_path / "part.jsonl", n_problems=4, samples=2,
                      max_new_tokens=8, batch_size=3)
    assert (tmp_path / "part.jsonl").read_text() == full
    with pytest.raises(ValueError, match="other settings"):
        journal.write_text(json.dumps({"arguments": {"seed": 99}}) + "\n")
        make_arith_traces(loaded, tmp_path / "part.jsonl", n_problems=4, samples=2,
                          max_new_tokens=8, batch_size=3)
