"""Every reader of a file people send each other, fuzzed: random bytes, truncation at every
position, wrong types in each field, NaN and infinite numbers, huge and empty values.

The contract: a reader either loads, or refuses with its documented error (ValueError and its
subclasses, FileNotFoundError) whose message names the file; a per-line reader (traces,
fine-tuning examples) turns a bad line into an issue naming the line and the field and keeps the
good lines. Nothing else escapes and nothing hangs (hypothesis' deadline bounds each example).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.control.finetune_data import read_finetune
from core.data.importers import import_traces
from core.data.label_audit import read_audit
from core.data.problems import read_problems
from core.data.traces import read_traces
from core.diagnose.feature_store import load_capture
from core.diagnose.probes import (
    LinearProbe,
    ProbeBundle,
    ProbeMeta,
    probe_from_bytes,
    probe_to_bytes,
)
from core.sense.concepts import load_concept, load_library

EXAMPLES = 150  # hypothesis examples per fuzz test
FUZZ = settings(max_examples=EXAMPLES, deadline=2000,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
REFUSED = (ValueError, FileNotFoundError)  # TraceFileError, FieldError, ProblemFileError too

# Any JSON value, with the awkward ones over-represented.
ODD_NUMBERS = st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0, 2**64, -1, 0])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ODD_NUMBERS
    | st.text(max_size=40) | st.sampled_from(["", " ", "x" * 100_000]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=8)

TRACE = {"id": "c1", "problem_id": "p1", "prompt": "Tom has 4 pens.",
         "steps": [{"text": "4 + 3 = 7", "label": 0, "prefix_label": 0},
                   {"text": "7 * 2 = 15", "label": 1, "prefix_label": 1}],
         "answer": "15", "gold": "14", "is_correct": False, "source": "hand"}
FINETUNE = {"id": "e1", "prompt": "What is 2 + 2?", "completion": "2 + 2 = 4. Answer: 4",
            "answer": "4"}
PROBLEM = {"id": "q1", "question": "Tom has 4 pens and buys 3. How many?",
           "answer": "4 + 3 = 7\n#### 7"}


def jsonl(*objects: Any) -> bytes:
    return "".join(json.dumps(o, allow_nan=True) + "\n" for o in objects).encode()


def check_issues_name_lines(load: Any) -> None:
    for issue in load.issues:
        assert issue.line >= 1 and str(issue).startswith(f"{issue.source}, line {issue.line}")


# ---------------------------------------------------------------------------- trace files


@FUZZ
@given(data=st.binary(max_size=2000))
def test_trace_import_of_random_bytes_loads_or_refuses(data: bytes) -> None:
    for fmt in ("auto", "native", "gsm8k", "prm800k"):
        try:
            load = import_traces(data, fmt, name="fuzz.jsonl")
        except REFUSED as error:
            assert "fuzz.jsonl" in str(error) or "format" in str(error).lower()
            continue
        check_issues_name_lines(load)


@FUZZ
@given(field=st.sampled_from(sorted(TRACE) + ["steps[0]", "steps[0].label", "response"]),
       value=JSON_VALUES)
def test_a_wrong_trace_field_is_an_issue_naming_it(field: str, value: Any) -> None:
    bad = json.loads(json.dumps(TRACE))
    bad["id"] = "c2"
    if field.startswith("steps[0]"):
        if field == "steps[0]":
            bad["steps"][0] = value
        else:
            bad["steps"][0]["label"] = value
    else:
        bad[field] = value
    load = read_traces(jsonl(TRACE, bad), name="t.jsonl")
    assert [t.id for t in load.traces][:1] == ["c1"]  # the good line always loads
    check_issues_name_lines(load)
    for issue in load.issues:
        assert issue.line == 2


def test_a_trace_file_cut_at_every_position_keeps_its_whole_lines() -> None:
    data = jsonl(TRACE, {**TRACE, "id": "c2"}, {**TRACE, "id": "c3", "steps": ["a", "b"]})
    for cut in range(len(data) + 1):
        load = read_traces(data[:cut], name="cut.jsonl")
        whole_lines = data[:cut].count(b"\n")
        assert len(load.traces) >= whole_lines
        check_issues_name_lines(load)


# ---------------------------------------------------------------------------- fine-tuning files


@FUZZ
@given(data=st.binary(max_size=2000))
def test_finetune_read_of_random_bytes_never_raises(data: bytes) -> None:
    check_issues_name_lines(read_finetune(data, name="ft.jsonl"))


@FUZZ
@given(field=st.sampled_from(sorted(FINETUNE) + ["new_facts", "messages"]), value=JSON_VALUES)
def test_a_wrong_finetune_field_is_an_issue_on_its_line(field: str, value: Any) -> None:
    bad = {**FINETUNE, "id": "e2", field: value}
    load = read_finetune(jsonl(FINETUNE, bad), name="ft.jsonl")
    assert load.examples and load.examples[0].id == "e1"
    check_issues_name_lines(load)
    assert all(issue.line == 2 for issue in load.issues)


def test_a_finetune_file_cut_at_every_position_never_raises() -> None:
    data = jsonl(FINETUNE, {**FINETUNE, "id": "e2"})
    for cut in range(len(data) + 1):
        check_issues_name_lines(read_finetune(data[:cut], name="cut.jsonl"))


# ---------------------------------------------------------------------------- problem files


@FUZZ
@given(data=st.binary(max_size=1500), suffix=st.sampled_from([".jsonl", ".json", ".csv",
                                                              ".parquet"]))
def test_problem_files_of_random_bytes_load_or_name_the_file(tmp_path: Path, data: bytes,
                                                             suffix: str) -> None:
    path = tmp_path / f"problems{suffix}"
    path.write_bytes(data)
    try:
        read_problems(path)
    except REFUSED as error:
        assert str(path) in str(error)


@FUZZ
@given(field=st.sampled_from(["question", "answer", "id"]), value=JSON_VALUES)
def test_a_wrong_problem_field_names_its_line_and_field(tmp_path: Path, field: str,
                                                        value: Any) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(jsonl(PROBLEM, {**PROBLEM, "id": "q2", field: value}))
    try:
        problems = read_problems(path)
    except REFUSED as error:
        assert f"{path}, line 2" in str(error) and field in str(error)
    else:
        assert [p.id for p in problems][0] == "q1"


def test_a_problem_file_cut_at_every_position_loads_or_names_the_file(tmp_path: Path) -> None:
    data = jsonl(PROBLEM, {**PROBLEM, "id": "q2"})
    path = tmp_path / "cut.jsonl"
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        try:
            read_problems(path)
        except REFUSED as error:
            assert str(path) in str(error)


# ---------------------------------------------------------------------------- probe files


def probe_pair() -> tuple[bytes, bytes]:
    meta = ProbeMeta(model="m", model_name="m", hidden_size=4, layer=1, step_pooling="exp",
                     tracker_pooling="causal", baseline_pooling="prefix_mean",
                     step_input=False, threshold=0.5, step_threshold=0.5, data_hash="x")
    return probe_to_bytes(ProbeBundle(meta=meta, tracker=LinearProbe(np.arange(4.0), 0.1),
                                      step=LinearProbe(np.ones(4), 0.0)))


@FUZZ
@given(weights=st.binary(max_size=600), keep_sidecar=st.booleans())
def test_probe_weights_of_random_bytes_are_refused_in_one_sentence(weights: bytes,
                                                                   keep_sidecar: bool) -> None:
    good_weights, sidecar = probe_pair()
    with pytest.raises(ValueError, match="upload"):
        probe_from_bytes(weights, sidecar if keep_sidecar else weights, name="upload")


@FUZZ
@given(field=st.sampled_from(["model", "model_name", "hidden_size", "layer", "step_pooling",
                              "threshold", "step_threshold", "step_input", "extra_inputs",
                              "probe_version", "metrics"]), value=JSON_VALUES)
def test_a_wrong_probe_sidecar_field_is_refused_or_harmless(field: str, value: Any) -> None:
    weights, sidecar = probe_pair()
    meta = json.loads(sidecar)
    meta[field] = value
    try:
        bundle = probe_from_bytes(weights, json.dumps(meta, allow_nan=True).encode(), "p")
    except ValueError as error:
        assert "p.json" in str(error) or "p.safetensors" in str(error)
    else:
        assert bundle.meta.hidden_size == 4 and 0 <= bundle.meta.threshold <= 1


def test_probe_files_cut_at_every_position_are_refused() -> None:
    weights, sidecar = probe_pair()
    for cut in range(0, len(weights), 7):
        with pytest.raises(ValueError):
            probe_from_bytes(weights[:cut], sidecar, "cut")
    for cut in range(0, len(sidecar), 5):
        with pytest.raises(ValueError):
            probe_from_bytes(weights, sidecar[:cut], "cut")


def test_probe_weights_that_disagree_with_the_sidecar_are_refused() -> None:
    from safetensors.torch import save

    _, sidecar = probe_pair()
    for tensors in ({"tracker.weight": torch.ones(5), "tracker.bias": torch.zeros(1)},
                    {"tracker.weight": torch.ones(4, dtype=torch.int64),
                     "tracker.bias": torch.zeros(1)},
                    {"tracker.weight": torch.full((4,), math.inf),
                     "tracker.bias": torch.zeros(1)},
                    {"step.weight": torch.ones(4), "step.bias": torch.zeros(1)}):
        with pytest.raises(ValueError):
            probe_from_bytes(save(tensors), sidecar, "mismatch")


# ---------------------------------------------------------------------------- concept vectors


@pytest.fixture(scope="module")
def concept_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    from core.sense.concepts import ConceptRecipe, ConceptVector, save_concept

    folder = tmp_path_factory.mktemp("concept")
    vector = ConceptVector(ConceptRecipe("bread", "word", ("bread",), ("cloud",)),
                           torch.ones(4), "m", 1)
    tensors, sidecar = save_concept(vector, folder / "bread")
    return tensors.read_bytes(), sidecar.read_bytes()


@FUZZ
@given(field=st.sampled_from(["format", "name", "model", "hidden_size", "layer", "method",
                              "words", "negatives", "norm", "tensors_sha256", "position"]),
       value=JSON_VALUES, cut=st.integers(min_value=-1, max_value=400))
def test_concept_files_load_or_are_refused(tmp_path: Path, concept_files: tuple[bytes, bytes],
                                           field: str, value: Any, cut: int) -> None:
    tensors, sidecar = concept_files
    meta = json.loads(sidecar)
    meta[field] = value
    (tmp_path / "c.safetensors").write_bytes(tensors if cut < 0 else tensors[:cut])
    (tmp_path / "c.json").write_text(json.dumps(meta, allow_nan=True))
    try:
        load_concept(tmp_path / "c")
    except REFUSED as error:
        assert str(tmp_path) in str(error)


@FUZZ
@given(data=st.binary(max_size=500))
def test_a_concept_library_of_random_bytes_is_refused(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "concepts.json").write_bytes(data)
    (tmp_path / "concepts.safetensors").write_bytes(data)
    with pytest.raises(REFUSED, match=str(tmp_path)):
        load_library(tmp_path)


# ---------------------------------------------------------------------------- capture folders


@FUZZ
@given(manifest=st.binary(max_size=300) | JSON_VALUES.map(lambda v: json.dumps(v).encode()),
       chunk=st.binary(max_size=300))
def test_a_broken_capture_folder_is_refused_naming_it(tmp_path: Path, manifest: bytes,
                                                      chunk: bytes) -> None:
    (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / "chunk-00000.parquet").write_bytes(chunk)
    (tmp_path / "chunk-00000.safetensors").write_bytes(chunk)
    with pytest.raises(REFUSED, match=str(tmp_path)):
        load_capture(tmp_path)


# ---------------------------------------------------------------------------- audit files


@FUZZ
@given(data=st.binary(max_size=1000))
def test_audit_files_of_random_bytes_load_or_name_the_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(data)
    try:
        read_audit(path)
    except REFUSED as error:
        assert "audit.jsonl, line" in str(error)


def test_the_shipped_audit_file_cut_at_every_line_loads_or_names_the_line(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[1] / "sample_traces" / "audits"
    data = next(iter(sorted(shipped.glob("*.jsonl")))).read_bytes()[:20_000]
    path = tmp_path / "audit.jsonl"
    for cut in range(0, len(data), max(1, len(data) // 200)):
        path.write_bytes(data[:cut])
        try:
            read_audit(path)
        except REFUSED as error:
            assert "audit.jsonl, line" in str(error)
