"""Which model specs a shared server may load: hub ids and the embedded default always, local
paths only under the folders the person who started it chose.

The dashboard is a server: whoever can reach its port can type a model spec. A spec that names
a local path could make it read any file the server can (a crafted folder's tokenizer files,
another user's weights), so a path must resolve (symlinks followed) inside an allowed root:
the folder the server was started in, the Hugging Face cache, `~/models`, and every folder in
TELLTALE_MODEL_DIRS (separated by the OS path separator). TELLTALE_ALLOW_ANY_MODEL_PATH=1 lifts
the rule. Remote code is never allowed from the app (`LoadOptions.trust_remote_code` stays
False there). The command line is the user at their own terminal: it does not apply this.

    ModelAccess.from_environment().check("../elsewhere/model")   # raises ModelLoadError
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.runtime.models import DEFAULT_SPEC, ModelLoadError

ALLOW_ANY_ENV = "TELLTALE_ALLOW_ANY_MODEL_PATH"
MODEL_DIRS_ENV = "TELLTALE_MODEL_DIRS"


def local_path(spec: str, cwd: Path | None = None) -> Path | None:
    """The resolved local path a spec names, or None for the default and for hub ids.

    A spec is a path when it exists on disk (relative to `cwd`), ends in .gguf, or starts like
    a path ("/", "~", "."); anything else ("org/name") is a hub id.
    """
    if spec == DEFAULT_SPEC:
        return None
    base = cwd or Path.cwd()
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base / path
    looks_like_path = spec.startswith(("/", "~", ".")) or spec.endswith(".gguf")
    if looks_like_path or path.exists():
        return path.resolve()
    return None


def default_roots(cwd: Path | None = None) -> tuple[Path, ...]:
    """The working folder, the Hugging Face cache, ~/models and TELLTALE_MODEL_DIRS."""
    hf_home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    roots = [cwd or Path.cwd(), Path(hf_home), Path.home() / "models"]
    roots += [Path(p) for p in os.environ.get(MODEL_DIRS_ENV, "").split(os.pathsep) if p]
    return tuple(root.expanduser().resolve() for root in roots)


@dataclass(frozen=True)
class ModelAccess:
    """The rule a server applies to a typed model spec (see the module docstring)."""

    roots: tuple[Path, ...]
    any_path: bool = False
    cwd: Path | None = None

    @classmethod
    def from_environment(cls, cwd: Path | None = None) -> ModelAccess:
        allow = os.environ.get(ALLOW_ANY_ENV, "").strip().lower() in ("1", "true", "yes")
        return cls(roots=default_roots(cwd), any_path=allow, cwd=cwd)

    def check(self, spec: str) -> None:
        """Raise ModelLoadError (one sentence) when the spec names a path outside the roots."""
        path = local_path(spec, self.cwd)
        if path is None or self.any_path:
            return
        if any(path == root or path.is_relative_to(root) for root in self.roots):
            return
        shown = ", ".join(str(root) for root in self.roots)
        raise ModelLoadError(
            f"The app does not load models from {path} because it lies outside the allowed "
            f"folders ({shown}); put the model under one of them, add its folder to "
            f"{MODEL_DIRS_ENV}, or start the server with {ALLOW_ANY_ENV}=1.")
