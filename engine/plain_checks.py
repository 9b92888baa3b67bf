"""The argument checks that need neither torch nor numpy, so that torch-free code
(engine.outputs, and through it `run.py compare`) can use them; engine.checks holds
the rest and offers these too."""
from __future__ import annotations

import os


def require_type(name: str, value, types, what: str):
    """TypeError unless isinstance(value, types); `what` says what `name` should be."""
    if not isinstance(value, types):
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r:.80}")


def require_path(name: str, value) -> str:
    """A str or os.PathLike (pathlib.Path) as a str; TypeError otherwise."""
    require_type(name, value, (str, os.PathLike), "a path (str or pathlib.Path)")
    return os.fspath(value)
