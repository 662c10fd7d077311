"""`dashboard` imports `core`, never the reverse: importing every core module loads no Streamlit."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import core
for module in pkgutil.iter_modules(core.__path__):
    importlib.import_module(f"core.{module.name}")
loaded = sorted(m for m in sys.modules if m == "streamlit" or m.startswith("streamlit."))
print(len(loaded))
"""


def test_core_never_imports_streamlit() -> None:
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_no_core_module_mentions_streamlit_in_its_imports() -> None:
    from pathlib import Path

    core_dir = Path(__file__).resolve().parents[1] / "core"
    for path in core_dir.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import ", "from ")):
                assert "streamlit" not in stripped, f"{path.name}: {stripped}"
