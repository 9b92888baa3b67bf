"""Output paths (issue 25): every output option refuses an empty or blank path up front, one
test per option; full or read-only output folders (lock files included) get one line and leave
nothing behind, in every command."""
import errno
import os

import pytest

from engine.cli import main
from engine.outputs import OutputError, OutputLocks, check_output_path

TINY = ["--data", "synthetic", "--synthetic-size", "256", "--batch-size", "64", "--base-width", "8", "--epochs", "1",
        "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("blank", ["", " ", "\t"])
@pytest.mark.parametrize("command", [
    pytest.param(lambda path: [*TINY, "--json", path], id="--json"),
    pytest.param(lambda path: [*TINY, "--save", path], id="--save"),
    pytest.param(lambda path: [*TINY, "--plot", path], id="--plot"),
    pytest.param(lambda path: ["evaluate", "--checkpoint", "none.pt", "--device", "cpu", "--json", path],
                 id="evaluate --json"),
    pytest.param(lambda path: ["convert", "synthetic", path], id="convert OUT"),
])
def test_an_empty_or_blank_output_path_is_refused_up_front(tmp_path, monkeypatch, capsys, command, blank):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(command(blank))
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "empty or blank path" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("blank", ["", "  "])
def test_the_library_check_refuses_an_empty_path_too(blank):
    with pytest.raises(OutputError, match="--json .*an empty or blank path names no file"):
        check_output_path("--json", blank)


# ---- full or read-only output folders: one line, nothing left behind ----

def inside(folder, fd_or_path) -> bool:
    path = os.readlink(f"/proc/self/fd/{fd_or_path}") if isinstance(fd_or_path, int) else os.fspath(fd_or_path)
    return os.path.abspath(path).startswith(str(folder) + os.sep)


def full(monkeypatch, folder):
    """Writes into `folder` fail as on a full disk (an empty file can still be created)."""
    write = os.write

    def no_space(fd, data):
        if inside(folder, fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)
    monkeypatch.setattr(os, "write", no_space)


def read_only(monkeypatch, folder):
    """Nothing can be created or written in `folder`, as on a read-only mount (root ignores chmod)."""
    opener = os.open

    def refuse(path, flags, *args, **kwargs):
        if inside(folder, path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, "Read-only file system")
        return opener(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", refuse)


COMMANDS = [
    pytest.param(lambda out: [*TINY, "--json", str(out / "runs.json")], id="--json"),
    pytest.param(lambda out: [*TINY, "--save", str(out / "model.pt")], id="--save"),
    pytest.param(lambda out: [*TINY, "--plot", str(out / "runs.png")], id="--plot"),
    pytest.param(lambda out: ["evaluate", "--checkpoint", "none.pt", "--device", "cpu", "--json",
                              str(out / "e.json")], id="evaluate --json"),
    pytest.param(lambda out: ["convert", "in.npz", str(out / "c.npz")], id="convert OUT"),
]


@pytest.mark.parametrize("make", [full, read_only], ids=["full", "read-only"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_or_read_only_output_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, capsys, command,
                                                                         make):
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(tmp_path)
    make(monkeypatch, out)
    try:
        status = main(command(out))
    except SystemExit as exit:
        status = exit.code
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    reason = "No space left on device" if make is full else "Read-only file system"
    assert [line for line in err.splitlines() if "error:" in line][0].count(reason) == 1
    assert os.listdir(out) == []


def test_a_lock_file_that_cannot_be_written_is_refused_and_removed(tmp_path, monkeypatch):
    full(monkeypatch, tmp_path)
    with OutputLocks() as locks, pytest.raises(OutputError, match="cannot write its lock file .*No space left"):
        locks.acquire("--json", tmp_path / "runs.json")
    assert os.listdir(tmp_path) == []
