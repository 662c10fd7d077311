"""The model-spec rule of a shared server: hub ids and the default always, local paths only
under the allowed roots (symlinks followed), everything when the flag is set."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.runtime.access import ALLOW_ANY_ENV, MODEL_DIRS_ENV, ModelAccess, local_path
from core.runtime.models import ModelLoadError


def test_hub_ids_and_the_default_are_not_paths(tmp_path: Path) -> None:
    assert local_path("default", tmp_path) is None
    assert local_path("Qwen/Qwen2.5-0.5B-Instruct", tmp_path) is None
    assert local_path("./models/x", tmp_path) == (tmp_path / "models" / "x").resolve()
    assert local_path("weights.gguf", tmp_path) == (tmp_path / "weights.gguf").resolve()
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert local_path("org/name", tmp_path) == (tmp_path / "org" / "name").resolve()


def test_paths_inside_the_roots_load_and_outside_are_refused(tmp_path: Path) -> None:
    work, outside = tmp_path / "work", tmp_path / "outside"
    (work / "m").mkdir(parents=True)
    (outside / "m").mkdir(parents=True)
    access = ModelAccess(roots=(work.resolve(),), cwd=work)
    access.check("default")
    access.check("org/model")
    access.check("./m")
    access.check(str(work / "m"))
    for spec in (str(outside / "m"), "../outside/m", "/etc"):
        with pytest.raises(ModelLoadError, match="outside the allowed folders"):
            access.check(spec)
    (work / "link").symlink_to(outside / "m")
    with pytest.raises(ModelLoadError, match=ALLOW_ANY_ENV):
        access.check("./link")  # a symlink out of the root is followed, then refused
    ModelAccess(roots=(work.resolve(),), any_path=True, cwd=work).check(str(outside / "m"))


def test_environment_sets_the_roots_and_the_flag(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    extra = tmp_path / "extra"
    (extra / "m").mkdir(parents=True)
    monkeypatch.delenv(ALLOW_ANY_ENV, raising=False)
    monkeypatch.setenv(MODEL_DIRS_ENV, str(extra))
    ModelAccess.from_environment(cwd=tmp_path / "work").check(str(extra / "m"))
    monkeypatch.setenv(MODEL_DIRS_ENV, "")
    with pytest.raises(ModelLoadError):
        ModelAccess.from_environment(cwd=tmp_path / "work").check(str(extra / "m"))
    monkeypatch.setenv(ALLOW_ANY_ENV, "1")
    ModelAccess.from_environment(cwd=tmp_path / "work").check(str(extra / "m"))
