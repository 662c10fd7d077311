"""The app as a server: a typed model path outside the allowed folders is refused in one
sentence, remote code never runs, "Unload model" frees the model, and the sidebar warns when the
server listens beyond this machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.runtime.access import ALLOW_ANY_ENV, MODEL_DIRS_ENV
from dashboard.common import sidebar, state
from tests.test_app import APP, CHAT, TIMEOUT, load_sidebar_model, texts


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer(CHAT).save_pretrained(folder)
    return folder


def start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception
    return at


def test_a_model_path_outside_the_allowed_folders_is_refused(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_DIRS_ENV, "")
    monkeypatch.delenv(ALLOW_ANY_ENV, raising=False)
    state.get_model.clear()
    at = start()
    at.sidebar.text_input[0].input(str(model_dir))
    at.sidebar.button[0].click().run()
    assert not at.exception
    errors = texts(at.sidebar.error)
    assert len(errors) == 1 and "outside the allowed folders" in errors[0]
    assert state.MODEL_CHOICE_KEY not in at.session_state
    monkeypatch.setenv(ALLOW_ANY_ENV, "1")
    load_sidebar_model(at, str(model_dir))


def test_the_app_never_trusts_remote_code(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(state, "load_model", lambda spec, options: seen.append(options))
    state.get_model.clear()
    state.get_model("some/model", "auto", "auto")
    state.get_model.clear()
    assert seen and seen[0].trust_remote_code is False


def test_unload_frees_the_model(model_dir: Path) -> None:
    state.get_model.clear()
    at = load_sidebar_model(start(), str(model_dir))
    assert "Unload model" in [b.label for b in at.sidebar.button]
    next(b for b in at.sidebar.button if b.label == "Unload model").click().run()
    assert not at.exception and state.MODEL_CHOICE_KEY not in at.session_state
    assert "Unload model" not in [b.label for b in at.sidebar.button]


def test_the_sidebar_warns_when_listening_beyond_this_machine() -> None:
    at = start()
    assert sidebar.EXPOSED_WARNING not in texts(at.sidebar.warning)
    from streamlit import config

    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        assert sidebar.EXPOSED_WARNING in texts(start().sidebar.warning)
    finally:
        config.set_option("server.address", before)
