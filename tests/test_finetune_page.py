"""The Fine-tuning page under `streamlit.testing.v1.AppTest`: it renders without a model (a note
says the scan loads one), reports bad uploads as a list of lines and fields instead of an
exception, scans a file on a tiny model (the plane holds every response token, the cuts decide
the conflicts), runs a short comparison to its table, and (e2e, on the default model) finds the
swapped capital as a confident conflict whose model top token is the real capital. Also the
small records of `dashboard.control.state`."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.control.eaft import LossConfig
from core.control.export import trainer_fragment
from core.control.suitability import suitability
from dashboard.common.jobs import Board, Job
from dashboard.common.runs import with_model
from dashboard.control import compare_panel, scan_panel, token_panel, verdict_panel
from dashboard.control import page as finetune
from dashboard.control import state as fs

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
SAMPLES = Path(__file__).resolve().parents[1] / "sample_traces"
TIMEOUT = 120
E2E_TIMEOUT = 500  # loads the default model (~15-20 s alone, more on a busy machine) and scans
CHAT = ("{% for m in messages %}w3 {{ m['content'] }} w4 {% endfor %}"
        "{% if add_generation_prompt %}w5 {% endif %}")


def open_page() -> AppTest:
    """The app on its Fine-tuning page. AppTest.switch_page only knows file pages, so the run is
    pointed at the hash st.navigation registered for the url_path "fine-tuning"."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    pages = at._registered_pages  # noqa: SLF001 - no public switch for callable pages
    at._page_hash = next(h for h, info in pages.items()
                         if info.get("url_pathname") == "fine-tuning")
    at.run()
    assert not at.exception
    assert [t.value for t in at.title] == ["Fine-tuning"]
    return at


def texts(elements: object) -> list[str]:
    return [str(e.value) for e in elements]  # type: ignore[attr-defined]


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: str(m.value) for m in at.metric}


def upload(at: AppTest, name: str, data: bytes, key: str = finetune.UPLOAD_KEY) -> AppTest:
    at.file_uploader(key=key).upload(name, data, "application/json")
    return at.run()


def problems(at: AppTest, name: str) -> list[tuple[int, str, str]]:
    box = next(e for e in at.expander if e.label == f"Problems in {name}")
    table = box.dataframe[0].value
    return list(zip(table["line"], table["field"], table["problem"], strict=True))


def jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(row) for row in rows) + "\n").encode()


# ---------------------------------------------------------------------------- without a model


def test_page_renders_without_a_model() -> None:
    at = open_page()
    assert not at.error
    assert any("Press **Scan tokens**" in i and "No model is loaded yet" in i
               for i in texts(at.info))
    assert any("No model loaded" in c for c in texts(at.sidebar.caption))
    assert not at.get("plotly_chart")  # nothing scanned
    labels = [b.label for b in at.button]
    assert "Scan tokens" in labels and "Start comparison" in labels
    if fs.finetune_samples():  # the first sample is shown: its examples are counted
        first = fs.finetune_samples()[0]
        lines = [line for line in first.read_text().splitlines() if line.strip()]
        assert metrics(at)["examples"] == str(len(lines))
    for key, value in at.session_state.items():  # small plain values only
        if key not in (finetune.UPLOAD_KEY, compare_panel.GENERAL_UPLOAD_KEY):
            json.dumps(value)


def test_a_newly_chosen_file_is_scanned_whole() -> None:
    """"Examples to scan" starts at all the examples of each file chosen, not at the count of the
    file chosen before (a shorter one would cut the scan short)."""
    at = upload(open_page(), "two.jsonl", jsonl([{"prompt": "a", "completion": "b"}] * 2))
    box = next(n for n in at.number_input if n.label == "Examples to scan")
    assert box.value == 2
    at = upload(at, "five.jsonl", jsonl([{"prompt": "a", "completion": str(i)}
                                         for i in range(5)]))
    assert not at.exception
    box = next(n for n in at.number_input if n.label == "Examples to scan")
    assert box.value == 5 and metrics(at)["examples"] == "5"


MIXED = (b'{"prompt": "Hi", "completion": "Hello."}\n'
         b'{"prompt": 3, "completion": "x"}\n'
         b"not json\n"
         b'{"messages": [{"role": "user", "content": "q"}]}\n'
         b'{"prompt": "a", "completion": "b", "new_facts": ["zzz"]}\n')


def test_mixed_upload_lists_each_bad_line_and_field() -> None:
    at = upload(open_page(), "mixed.jsonl", MIXED)
    assert not at.exception
    assert texts(at.warning)[0] == ("4 problem(s) in mixed.jsonl: 4 line(s) skipped, "
                                    "1 valid example(s) loaded.")
    listed = problems(at, "mixed.jsonl")
    assert [(line, field) for line, field, _ in listed] == [
        (2, "prompt"), (3, ""), (4, "messages"), (5, "new_facts[0]")]
    assert listed[0][2] == "must be a string, got int"
    assert listed[1][2].startswith("invalid JSON")
    assert metrics(at)["examples"] == "1"


@pytest.mark.parametrize("name, data", [
    ("garbage.jsonl", bytes(range(256)) * 8),
    ("latin1.jsonl", '{"prompt": "caf\u00e9", "completion": "x"}\n'.encode("latin-1")),
    ("array.jsonl", b"[1, 2, 3]\n"),
])
def test_bad_uploads_show_the_issue_list_not_an_exception(name: str, data: bytes) -> None:
    at = upload(open_page(), name, data)
    assert not at.exception
    assert any(f"problem(s) in {name}" in w for w in texts(at.warning))
    assert problems(at, name)[0][:2] == (1, "")
    assert any(f"{name} holds no valid example" in i for i in texts(at.info))
    assert "Scan tokens" not in [b.label for b in at.button]


def test_empty_upload_says_there_is_nothing() -> None:
    at = upload(open_page(), "empty.jsonl", b"")
    assert not at.exception and not at.warning
    assert any("empty.jsonl holds no valid example (0 line(s) read)" in i
               for i in texts(at.info))


# ---------------------------------------------------------------------------- on a tiny model


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama saved as a local model folder: the sidebar loads it in a second."""
    from tests.tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama-finetune")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(CHAT).save_pretrained(folder)
    return folder


# Examples in the tiny tokenizer's words; each completion has 4 words, so 4 trained tokens.
TINY_TRAIN = jsonl([{"id": f"t{i}", "prompt": f"w{10 + i} w11",
                     "completion": f"w{20 + i} w21 w{30 + i} w22", "answer": f"w{30 + i}",
                     **({"new_facts": [f"w{30 + i}"]} if i % 2 else {})} for i in range(6)])
TINY_GENERAL = jsonl([{"id": f"g{i}", "prompt": f"w{40 + i}", "completion": f"w{50 + i} w51",
                       "answer": f"w{50 + i}"} for i in range(4)])


def load_sidebar_model(at: AppTest, spec: str) -> AppTest:
    at.sidebar.text_input[0].input(spec)
    at.sidebar.button[0].click().run()
    assert not at.exception and not at.sidebar.error
    return at


def downloads(at: AppTest) -> list[str]:
    return [b.label for b in at.get("download_button")]


def scan_tokens(folder: Path, data: bytes):
    """The token table of a file, scanned by core alone (the oracle for the page's verdict)."""
    from core.control.conflicts import scan_conflicts
    from core.control.finetune_data import read_finetune
    from core.runtime.models import load_model

    return scan_conflicts(load_model(str(folder)), read_finetune(data).examples).tokens


def figures(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def array(value: object) -> np.ndarray:
    """A plotly JSON array: a list, or {"dtype", "bdata" (base64), "shape"} (typed arrays)."""
    if isinstance(value, dict):
        shape = tuple(int(n) for n in str(value.get("shape", "-1")).split(","))
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return flat.reshape(shape).astype(float)
    return np.array(value, dtype=float)


def test_scan_on_a_tiny_model_draws_the_plane_and_applies_the_cuts(tiny_model_dir: Path) -> None:
    at = upload(load_sidebar_model(open_page(), str(tiny_model_dir)), "tiny.jsonl", TINY_TRAIN)
    button(at, "Scan tokens").click().run()
    assert not at.exception and not at.error
    assert metrics(at)["response tokens"] == str(6 * 4)
    # the verdict before training, on absolute cuts: the random model is unsure everywhere
    verdict = suitability(scan_tokens(tiny_model_dir, TINY_TRAIN))
    boxes = {"suits": at.success, "partly": at.warning, "does_not_suit": at.info}[
        verdict.verdict]
    head, _, rest = verdict.reason.partition(": ")
    assert f"**{head}:** {rest}" in texts(boxes)
    assert metrics(at)["their share of the SFT loss"] == f"{verdict.conflict_loss_share:.1%}"
    # the trainer fragments: the text `eaft-stats --export` writes, downloadable
    config = LossConfig(kind="eaft", k=20, alpha=1.0, norm="lnk")
    fragment = trainer_fragment("llamafactory", config, verdict, "tiny.jsonl")
    assert at.code[0].value == fragment.rstrip("\n")  # st.code drops the last newline
    assert "Download the LLaMA-Factory fragment" in downloads(at)
    at.radio(key=verdict_panel.TRAINER_KEY).set_value("axolotl").run()
    assert at.code[0].value.endswith("use_eaft: true\neaft_alpha: 1\neaft_k: 20")
    assert "Download the Axolotl fragment" in downloads(at)
    at.number_input(key=finetune.K_KEY).set_value(10)  # LLaMA-Factory fixes K = 20: a sentence
    at.radio(key=verdict_panel.TRAINER_KEY).set_value("llamafactory")
    button(at.run(), "Scan tokens").click().run()
    assert not at.exception and any("no K setting" in i for i in texts(at.info))
    at.radio(key=verdict_panel.TRAINER_KEY).set_value("trl").run()
    assert "LossConfig(kind=\"eaft\", k=10" in at.code[0].value
    at.number_input(key=finetune.K_KEY).set_value(20)
    button(at.run(), "Scan tokens").click().run()
    density, sft, eaft = figures(at)[:3]
    assert int(np.nansum(array(density["data"][0]["customdata"]))) == 24
    assert sft["data"][0]["zmax"] == eaft["data"][0]["zmax"]  # one colour scale for both
    sft_cells = np.nan_to_num(array(sft["data"][0]["z"]))
    assert sft_cells.sum() == pytest.approx(100, rel=1e-4)
    # absolute cuts wide enough to take every token: all 24 are confident conflicts
    at.radio(key=scan_panel.MODE_KEY).set_value("absolute").run()
    at.number_input(key="finetune_absolute_p").set_value(1.0)
    at.number_input(key="finetune_absolute_h").set_value(5.0)
    at.number_input(key="finetune_absolute_u").set_value(6.0).run()
    assert not at.exception and not at.error
    assert metrics(at)["confident conflicts"] == "24"
    conflicts = next(d.value for d in at.dataframe if "model_top" in d.value.columns)
    assert len(conflicts) == 24 and conflicts["p"].is_monotonic_increasing
    assert set(conflicts["target"]) <= {f"w{i}" for i in range(3, 97)}
    at.checkbox(key=token_panel.NEW_FACTS_KEY).check().run()
    marked = next(d.value for d in at.dataframe if "model_top" in d.value.columns)
    assert sorted(marked["target"]) == ["w31", "w33", "w35"]  # the marked new facts
    assert any("Download weights" in b.label for b in at.get("download_button"))
    at.radio(key=token_panel.COLOUR_KEY).set_value("gate").run()  # EAFT's weight behind each token
    shown = str(at.get("html")[0].value)
    assert shown.count("EAFT weight") >= 4 and "nan" not in shown
    # the cut that cannot be (uncertain below low entropy) is a sentence, not an exception
    at.number_input(key="finetune_absolute_u").set_value(1.0).run()
    assert not at.exception
    assert any("uncertain threshold" in e for e in texts(at.error))


def test_comparison_on_a_tiny_model_runs_to_its_table(tiny_model_dir: Path) -> None:
    at = upload(load_sidebar_model(open_page(), str(tiny_model_dir)), "tiny.jsonl", TINY_TRAIN)
    at = upload(at, "general.jsonl", TINY_GENERAL, key=compare_panel.GENERAL_UPLOAD_KEY)
    at.number_input(key=compare_panel.STEPS_KEY).set_value(2)
    at.number_input(key=compare_panel.EVAL_EVERY_KEY).set_value(1)
    at.selectbox(key=compare_panel.LR_KEY).set_value("1e-3")
    at.number_input(key=compare_panel.SEEDS_KEY).set_value(2).run()
    button(at, "Start comparison").click().run(timeout=300)
    assert not at.exception and not at.error
    final = next(d.value for d in at.dataframe if "d_general_loss" in d.value.columns)
    assert final["method"].tolist() == ["base", *compare_panel.DEFAULT_METHODS] * 2
    assert final["seed"].tolist() == [0, 0, 0, 1, 1, 1]
    assert final.loc[0, "d_target_loss"] == 0.0
    # at lr 1e-3 every run lowers the held-out target loss: a matched level exists
    shown = [d.value for d in at.dataframe]
    summary = next(t for t in shown if "|dtheta|" in t.columns and "step" in t.columns)
    assert summary["method"].tolist() == list(compare_panel.DEFAULT_METHODS)
    assert (summary["seeds"] == 2).all()
    paired = next(t for t in shown if "general loss rose less" in t.columns)
    assert paired["method"].tolist() == ["eaft - sft"]
    curves = figures(at)[-1]
    runs = [t for t in curves["data"] if t["mode"] == "lines+markers"]
    assert len(runs) == 2 * 2 * 3  # seeds x methods x panels
    assert all(len(array(t["x"])) == 3 for t in runs)  # steps 0, 1, 2
    labels = downloads(at)
    assert {"Download the comparison (CSV)", "Download the curves (CSV)",
            "Download the matched runs (CSV)"} <= set(labels)
    assert not button(at, "Start comparison").disabled


# ---------------------------------------------------------------------------- records


def test_scan_request_round_trips_through_session_state() -> None:
    request = fs.ScanRequest(("default", "cpu", "auto"), "abc",
                             fs.ScanSettings(k=10, norm="code", max_tokens=64, max_examples=3))
    stored = request.to_state()
    assert json.loads(json.dumps(stored)) == stored
    assert fs.ScanRequest.from_state(stored) == request
    assert fs.ScanRequest.from_state({"model": 3}) is None
    assert fs.ScanRequest.from_state({**stored, "settings": {"k": 1}}) is None  # K too small
    with pytest.raises(ValueError, match="normalisation"):
        fs.ScanSettings(norm="ln2")


def test_compare_request_round_trips_and_names_its_job(monkeypatch: pytest.MonkeyPatch) -> None:
    request = fs.CompareRequest(("m", "cpu", "auto"), "t", "g", ("sft", "eaft"), 1, 1, False, 1,
                                lr=3e-5, repeats=3, eval_every=1)
    config = request.config()
    assert config.seeds == (0, 1, 2) and config.evaluation_steps == (1,)
    plain = json.loads(json.dumps(request.to_state()))
    assert fs.CompareRequest.from_state(plain) == request
    assert fs.CompareRequest.from_state({**plain, "steps": None, "extra": 1}) is None
    assert with_model(request)(("x", "cpu", "auto")).model == ("x", "cpu", "auto")
    board = Board()
    monkeypatch.setattr(fs, "board", lambda: board)
    monkeypatch.setattr(fs, "compare_methods", lambda *a, **k: "table")
    job: Job = fs.start_compare(request, None, [], [])  # type: ignore[arg-type]
    assert job.wait(5) and job.result == "table" and job.key == request.key
    assert fs.start_compare(request, None, [], []) is job  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Methods"):
        fs.start_compare(fs.CompareRequest(("m", "cpu", "auto"), "t", "g", ("dft",), 1, 1, False,
                                           1), None, [], [])  # type: ignore[arg-type]


def test_finetune_samples_are_the_finetune_files(tmp_path: Path) -> None:
    for name in ("finetune_b.jsonl", "finetune_a.jsonl", "traces.jsonl", "finetune_c.json"):
        (tmp_path / name).write_text("{}\n")
    assert [p.name for p in fs.finetune_samples(tmp_path)] == ["finetune_a.jsonl",
                                                               "finetune_b.jsonl"]
    assert fs.finetune_samples(tmp_path / "missing") == []


# ---------------------------------------------------------------------------- e2e


@pytest.mark.e2e
def test_default_model_finds_the_swapped_capital() -> None:
    """Three swapped capitals on SmolLM2: under absolute cuts "Tokyo" after "The capital of
    France is" is a confident conflict, and the model's own top token there is " Paris"."""
    lines = (SAMPLES / "finetune_conflicts.jsonl").read_text().splitlines()[:3]
    assert "France is Tokyo" in lines[0]
    at = upload(open_page(), "capitals.jsonl", ("\n".join(lines) + "\n").encode())
    button(at, "Scan tokens").click().run(timeout=E2E_TIMEOUT)  # loads the model, scans
    assert not at.exception and not at.error
    assert any("SmolLM2" in m for m in texts(at.sidebar.markdown))  # the model card
    n_tokens = int(metrics(at)["response tokens"].replace(",", ""))
    density = figures(at)[0]
    assert int(np.nansum(array(density["data"][0]["customdata"]))) == n_tokens
    at.radio(key=scan_panel.MODE_KEY).set_value("absolute").run()
    assert not at.exception
    conflicts = next(d.value for d in at.dataframe if "model_top" in d.value.columns)
    assert metrics(at)["confident conflicts"] == str(len(conflicts))
    assert (conflicts["p"] <= 0.1).all() and (conflicts["entropy_norm"] <= 0.2).all()
    france = conflicts[conflicts["context"].str.contains("France is", regex=False)]
    assert france["target"].tolist() == [" Tokyo"] and france["model_top"].tolist() == [" Paris"]
