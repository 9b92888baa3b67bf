"""Output files: checked before any work, written atomically with the user's usual
permissions, and rescued elsewhere when they cannot be written where asked.

`check_output_paths` runs before the data is loaded: every output's folder can be
created and written, no output is an existing directory, and no two outputs (nor an
output and an input) share a path. `atomic_write` writes a temporary file in the
target's folder, gives it the mode a plain `open` would (0666 less the umask; a
temporary file starts at 0600) and renames it over the target, so a reader never
sees half a file. `write_or_rescue` tries the asked path, then the same file name
(prefixed `cifar-speedrun-rescued-<time>-<pid>-`) in the current directory, then in
the temporary directory ($TMPDIR, else /tmp), and says where it went.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Callable

from engine.checks import require_path


class OutputError(ValueError):
    """An output path that cannot be written; the message names its option."""


def file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path, write: Callable, binary: bool = True) -> str:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`
    (creating the folder). Nothing is left behind if `write` fails. Returns `path` as a str."""
    path = require_path("path", path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as file:
            write(file)
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        if os.path.lexists(temporary):
            os.unlink(temporary)
        raise
    return path


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def check_output_path(option: str, path, writable_folders: set | None = None) -> str:
    """The absolute path, after checking that a file can be written there; OutputError naming
    `option` otherwise. Creates nothing but a probe file, removed at once (none in a folder
    already in `writable_folders`, to which a probed folder is added)."""
    path = os.path.abspath(require_path(option, path))
    if os.path.isdir(path):
        raise OutputError(f"{option} {path}: is an existing directory; give a file name")
    folder = _nearest_existing(os.path.dirname(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: {folder} is a file, not a folder; choose another path")
    if writable_folders is not None and folder in writable_folders:
        return path
    try:
        handle, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"{option} {path}: cannot write in {folder} ({error.strerror or error}); "
                          f"choose a folder you can write to") from None
    if writable_folders is not None:
        writable_folders.add(folder)
    return path


def check_output_paths(outputs: list[tuple[str, object]], inputs: list[tuple[str, object]] = ()):
    """Check every (option, path) of `outputs` with check_output_path, and that no two of them,
    nor one of them and an (option, path) of `inputs`, are the same file."""
    seen = {os.path.realpath(os.fspath(path)): option for option, path in inputs}
    writable_folders = set()
    for option, path in outputs:
        real = os.path.realpath(check_output_path(option, path, writable_folders))
        if real in seen:
            raise OutputError(f"{option} {os.fspath(path)}: the same file as {seen[real]}; give each its own path")
        seen[real] = option


def rescue_folders() -> list[str]:
    """Where files that cannot be written where asked go instead, in order."""
    folders = []
    for folder in (os.getcwd(), tempfile.gettempdir()):
        if folder not in folders:
            folders.append(folder)
    return folders


def write_or_rescue(write: Callable[[str], object], path: str, what: str) -> tuple[str | None, str]:
    """`write(path)`; if it raises, `write` again to a rescue file in each of rescue_folders().
    Returns (the path written, or None when every attempt failed; a line for the user)."""
    try:
        write(path)
        return path, f"wrote {path}"
    except Exception as error:
        failure = f"could not write {what} to {path} ({type(error).__name__}: {error})"
    name = f"cifar-speedrun-rescued-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.path.basename(path)}"
    for folder in rescue_folders():
        rescued = os.path.join(folder, name)
        try:
            write(rescued)
            return rescued, f"{failure}; wrote it to {rescued} instead"
        except Exception:
            continue
    return None, f"{failure}; nor could it be written to {' or '.join(rescue_folders())}"
