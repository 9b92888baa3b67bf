"""Output files: checked before any work, written atomically with the user's usual
permissions, and rescued elsewhere when they cannot be written where asked.

`check_output_paths` runs before the data is loaded: every output's folder can be
created and written, no output is an existing directory, a device, a FIFO or a socket,
nor a path ending in a separator, and no two outputs (nor an output and an input) share
a path. `atomic_write` writes a temporary file in the
target's folder, gives it the mode a plain `open` would (0666 less the umask; a
temporary file starts at 0600) and renames it over the target, so a reader never
sees half a file. It renames only over a regular file or a path that does not exist: a
symbolic link is followed (the file it names is replaced, the link kept), anything else
(a device such as /dev/null, a FIFO, a socket, /dev/stdout and the other streams under
/proc) is refused with NotAFileError. `write_or_rescue` tries the asked path, then the same file name
(prefixed `cifar-speedrun-rescued-<time>-<pid>-`, and numbered when that name is
taken, so two rescues never share a file) in the current directory, then in the
temporary directory ($TMPDIR, else /tmp), and says where it went. `OutputLocks` holds
a lock beside each output while a run writes it, so that a second process asked for
the same file is refused instead of silently replacing the first one's results.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
import time
from typing import Callable

from engine.plain_checks import require_path      # torch-free: compare writes with atomic_write


class OutputError(ValueError):
    """An output path that cannot be written; the message names its option."""


def file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class LockedError(OutputError):
    """An output another process writes or has reserved now; the message names that process."""


class NotAFileError(OSError):
    """An output path that exists but is not a regular file (a device, FIFO, socket)."""


def replaceable(path: str) -> str:
    """The path a rename may replace for `path`: itself, or the file its symbolic link names.
    NotAFileError when that exists and is not a regular file."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as error:           # a symbolic link loop, a folder that cannot be searched
        raise NotAFileError(f"{path} cannot be reached ({error.strerror or error}); give another path") from None
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        kind = ("a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
                else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "not a regular file")
        raise NotAFileError(f"{path} is {kind}, not a regular file; it is never replaced (results go to "
                            f"regular files only). Give a file name")
    if through_proc(path):              # /dev/stdout, /dev/fd/N: a stream, even when it is a redirected file
        raise NotAFileError(f"{path} is a process's open stream (like /dev/stdout), not a regular file; it is "
                            f"never replaced. Give a file name")
    return os.path.realpath(path) if os.path.islink(path) else path


def through_proc(path: str) -> bool:
    """Whether `path` or a link on the way to its file lies under /proc (a process's streams)."""
    for _ in range(40):                 # the kernel's own limit on links in a row
        if os.path.abspath(path).startswith("/proc/"):
            return True
        if not os.path.islink(path):
            return False
        path = os.path.join(os.path.dirname(os.path.abspath(path)), os.readlink(path))
    return False


def atomic_write(path, write: Callable, binary: bool = True) -> str:
    """Call `write(file)` on a temporary file beside `path`, then rename it to `path`
    (creating the folder). Nothing is left behind if `write` fails. Only a regular file (or
    the one a link names) is replaced: NotAFileError for a device, FIFO or socket. Returns
    `path` as a str."""
    path = require_path("path", path)
    if path.endswith(("/", os.sep)):
        raise IsADirectoryError(f"{path} ends in {os.sep}: it names a folder, not a file")
    target = replaceable(path)
    directory = os.path.dirname(os.path.abspath(target))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as file:
            write(file)
        os.chmod(temporary, file_mode())
        os.replace(temporary, target)
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
    given = require_path(option, path)
    if not given.strip():
        raise OutputError(f"{option} {given!r}: an empty or blank path names no file; give a file name")
    if given.endswith(("/", os.sep)) or os.path.basename(given) in (".", ".."):
        raise OutputError(f"{option} {given}: names a folder, not a file; give a file name inside it "
                          f"(e.g. {os.path.join(given, 'results')})")
    path = os.path.abspath(given)
    if os.path.isdir(path):
        raise OutputError(f"{option} {path}: is an existing directory; give a file name")
    try:
        replaceable(path)
    except NotAFileError as error:
        raise OutputError(f"{option} {error}") from None
    folder = _nearest_existing(os.path.dirname(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{option} {path}: {folder} is a file, not a folder; choose another path")
    if writable_folders is not None and folder in writable_folders:
        return path
    try:
        handle, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=folder)
        try:
            os.write(handle, b"0")         # a full disk creates an empty file but takes no byte
        finally:
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        advice = "free some space or choose another folder" if error.errno in (errno.ENOSPC, errno.EDQUOT) \
            else "choose a folder you can write to"
        raise OutputError(f"{option} {path}: cannot write in {folder} ({error.strerror or error}); {advice}") from None
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
    name = (f"cifar-speedrun-rescued-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-"
            f"{os.path.basename(os.path.normpath(path)) or 'output'}")
    for folder in rescue_folders():
        with OutputLocks() as locks:        # the name is reserved while it is written
            try:
                rescued = locks.free(os.path.join(folder, name), "rescue")
                write(rescued)
                return rescued, f"{failure}; wrote it to {rescued} instead"
            except Exception:
                continue
    return None, f"{failure}; nor could it be written to {' or '.join(rescue_folders())}"


def free_name(path: str) -> str:
    """`path`, or `path` with -2, -3, ... before its extension: the first that does not exist."""
    root, extension = os.path.splitext(path)
    number = 1
    while os.path.lexists(path):
        number += 1
        path = f"{root}-{number}{extension}"
    return path


def lock_path(path: str) -> str:
    """The lock file beside output `path`: .NAME.lock in the same folder."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.lock")


LOCK_TEXT = re.compile(rb"(process \d+\n?)?")


def lock_holder(lock: str) -> str | None:
    """Who holds the lock file `lock` ("process N"), or None when no process does (or it is not
    there, or not a regular file)."""
    try:
        handle = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(handle, 64).decode(errors="replace").strip() or "another process"
        return None
    finally:
        os.close(handle)


class OutputLocks:
    """Exclusive locks (flock) on lock files beside outputs, held while a run writes them.

    `acquire(option, path)` raises OutputError naming the option and the process that
    holds the lock when another process writes the same file; a lock dies with its
    process (kill -9 included), so none is ever stale. An output that is another run's lock
    file, or whose lock file is another run's output, is refused the same way, and a file at
    the lock's place that is not a lock file is never written into (refused, naming it).
    `free(path)` chooses and reserves a name derived from an output (numbered when taken by
    a file or by another process's lock). `release()` removes the lock files.
    Use as a context manager: `with OutputLocks() as locks: locks.acquire(...)`."""

    def __init__(self):
        self.held = {}                    # lock file -> its open descriptor

    def _others(self, lock: str) -> str | None:
        """Who else holds `lock` (None when nobody, or this object)."""
        return None if lock in self.held else lock_holder(lock)

    def acquire(self, option: str, path):
        given = require_path(option, path)
        lock = lock_path(given)
        if lock in self.held:
            return
        holder = self._others(os.path.abspath(given))
        if holder:
            raise LockedError(f"{option} {given}: is the lock file of another run ({holder}) that is writing "
                              f"beside it now; give another path")
        holder = self._others(lock_path(lock))
        if holder:
            raise LockedError(f"{option} {given}: its lock file {lock} is the output of another run ({holder}); "
                              f"wait for it to end or give another path")
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        while True:
            try:
                handle = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, file_mode())
            except OSError as error:
                if os.path.islink(lock) or error.errno in (errno.ELOOP, errno.ENXIO):
                    raise OutputError(f"{option} {given}: {lock}, where its lock file goes, is not a regular file; "
                                      f"move it away or give another path") from None
                raise OutputError(f"{option} {given}: cannot create its lock file {lock} "
                                  f"({error.strerror or error}); choose a folder you can write to") from None
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                os.close(handle)
                raise OutputError(f"{option} {given}: {lock}, where its lock file goes, is not a regular file; "
                                  f"move it away or give another path")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(handle, 64).decode(errors="replace").strip() or "another process"
                os.close(handle)
                raise LockedError(f"{option} {given}: another run ({holder}) is writing this file now; "
                                  f"wait for it to end or give another path") from None
            try:                          # the lock file may have been removed by its last holder
                same = os.stat(lock).st_ino == os.fstat(handle).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(handle)
        if not LOCK_TEXT.fullmatch(os.pread(handle, 4096, 0)):
            os.close(handle)
            raise OutputError(f"{option} {given}: {lock}, where its lock file goes, holds something else (not a "
                              f"lock file); it is never written into: move it away or give another path")
        try:
            os.ftruncate(handle, 0)
            os.write(handle, f"process {os.getpid()}\n".encode())
        except OSError as error:          # a full disk: nothing is left behind
            with contextlib.suppress(OSError):
                os.unlink(lock)
            os.close(handle)
            raise OutputError(f"{option} {given}: cannot write its lock file {lock} ({error.strerror or error}); "
                              f"free some space or choose another folder") from None
        self.held[lock] = handle

    def free(self, path: str, option: str = "output") -> str:
        """`path`, or `path` with -2, -3, ... before its extension: the first that is neither a
        file nor reserved by another process, reserved (locked) here before it is returned."""
        root, extension = os.path.splitext(path)
        number = 1
        while True:
            if not os.path.lexists(path) and not self._others(lock_path(path)):
                try:
                    self.acquire(option, path)
                except LockedError:         # taken by another process meanwhile
                    pass
                else:
                    if not os.path.lexists(path):
                        return path
                    self.drop(path)
            number += 1
            path = f"{root}-{number}{extension}"

    def drop(self, path: str):
        """Release the lock of output `path` alone (taken by `free` for a name then found taken)."""
        lock = lock_path(path)
        handle = self.held.pop(lock, None)
        if handle is not None:
            with contextlib.suppress(OSError):
                if os.stat(lock).st_ino == os.fstat(handle).st_ino:
                    os.unlink(lock)
            os.close(handle)

    def release(self):
        for lock, handle in self.held.items():
            try:                          # only our own lock file: an output may have been renamed over it
                if os.stat(lock).st_ino == os.fstat(handle).st_ino:
                    os.unlink(lock)
            except OSError:
                pass
            os.close(handle)
        self.held = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
