"""Fixtures shared by several test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def models_from_temporary_folders() -> Iterator[None]:
    """Tests load tiny models saved to temporary folders; the app's model-path rule
    (`core.runtime.access`) allows them through TELLTALE_MODEL_DIRS, as a user would."""
    import os
    import tempfile

    from core.runtime.access import MODEL_DIRS_ENV

    before = os.environ.get(MODEL_DIRS_ENV)
    os.environ[MODEL_DIRS_ENV] = tempfile.gettempdir()
    yield
    if before is None:
        os.environ.pop(MODEL_DIRS_ENV, None)
    else:
        os.environ[MODEL_DIRS_ENV] = before


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module: on a busy shared CPU two threads spin against each other
    and tiny forwards get ~100x slower; the previous count is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
