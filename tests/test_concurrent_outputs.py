"""Concurrent runs never touch each other's files (issue 25): every name derived from an
output (the progress file PATH.unfinished.json, the kept PATH.previous.json, rescues, lock
files) is reserved under a lock, a free name is chosen around other processes' locks, and an
output that clashes with another process's is refused up front, naming that process. Each
test runs an interleaving with a second process."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli
from engine.outputs import OutputError, OutputLocks, lock_path
from engine.training.train import Trainer
from test_daily_results_safe import ROOT, SMALL, instant_runs
from test_nothing_destroyed import earlier_result


@contextlib.contextmanager
def other_process(*paths: Path):
    """Another process holding the locks of output `paths` as a run writing them does (an
    exclusive flock on .NAME.lock holding "process PID"; plain Python, so it starts at once);
    yields its pid."""
    locks = [lock_path(path) for path in paths]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys\n"
        f"for lock in {locks!r}:\n"
        "    handle = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)\n"
        "    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "    os.write(handle, f'process {os.getpid()}\\n'.encode())\n"
        "print('locked', flush=True); sys.stdin.read()")],     # holds the locks until killed
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
        for lock in locks:
            with contextlib.suppress(FileNotFoundError):
                os.remove(lock)


@pytest.mark.slow
def test_a_second_process_whose_json_is_the_first_ones_progress_file_is_refused(tmp_path, monkeypatch):
    out, progress = tmp_path / "runs.json", tmp_path / "runs.unfinished.json"
    earlier = earlier_result(out, runs=3)          # so the first process's progress goes to runs.unfinished.json
    second = []

    def start_the_second(call, seed):
        if call == 2:                              # the first run is in the progress file by now
            second.append(subprocess.run([sys.executable, str(ROOT / "run.py"), *SMALL, "--json", str(progress)],
                                         cwd=ROOT, capture_output=True, text=True))
            assert json.loads(progress.read_text())["runs"][0]["seed"] == 0
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=start_the_second))
    assert cli.main([*SMALL, "--runs", "2", "--json", str(out), "--quiet"]) == 0
    assert second[0].returncode == 2, second[0].stderr
    assert f"process {os.getpid()}" in second[0].stderr and "Traceback" not in second[0].stderr
    final = json.loads(out.read_text())            # complete with fewer runs: the earlier three kept aside
    assert [r["seed"] for r in final["runs"]] == [0, 1]
    assert json.loads((tmp_path / "runs.previous.json").read_text()) == earlier


def test_the_progress_file_is_numbered_around_a_name_another_process_has(tmp_path, monkeypatch):
    out, theirs = tmp_path / "runs.json", tmp_path / "runs.unfinished.json"
    earlier_result(out, runs=3)
    names = []

    def look(call, seed):
        names.append(sorted(os.listdir(tmp_path)))
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=look))
    with other_process(theirs):                    # its --json, not written yet
        cli.main([*SMALL, "--runs", "2", "--json", str(out), "--quiet"])
        assert not theirs.exists()                 # never written by us
    assert "runs.unfinished-2.json" in names[1]


def test_the_kept_earlier_result_never_goes_to_a_name_another_process_has(tmp_path, monkeypatch, capsys):
    out, theirs = tmp_path / "runs.json", tmp_path / "runs.previous.json"
    earlier = earlier_result(out, runs=3)
    monkeypatch.setattr(Trainer, "run", instant_runs())
    with other_process(theirs):                    # its --json, not written yet
        assert cli.main([*SMALL, "--runs", "1", "--json", str(out), "--quiet"]) == 0
        assert not theirs.exists()
    assert json.loads((tmp_path / "runs.previous-2.json").read_text()) == earlier
    assert f"it is kept as {tmp_path / 'runs.previous-2.json'}" in capsys.readouterr().err


def test_another_runs_lock_file_as_an_output_is_refused_naming_it(tmp_path, capsys):
    out = tmp_path / "runs.json"
    with other_process(out) as pid:
        with pytest.raises(SystemExit) as exit:
            cli.main([*SMALL, "--json", lock_path(out)])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and f"is the lock file of another run (process {pid})" in err
        assert Path(lock_path(out)).read_text() == f"process {pid}\n"


def test_an_output_whose_lock_file_is_another_runs_output_is_refused_naming_it(tmp_path, capsys):
    out = tmp_path / "runs.json"
    with other_process(Path(lock_path(out))) as pid:   # it writes .runs.json.lock as its --json
        with pytest.raises(SystemExit) as exit:
            cli.main([*SMALL, "--json", str(out)])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and f"is the output of another run (process {pid})" in err


def test_a_file_where_a_lock_goes_is_never_written_into(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs.json"
    Path(lock_path(out)).write_text('{"runs": ["mine"]}')
    monkeypatch.setattr(cli, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data despite a clash"))
    with pytest.raises(SystemExit):
        cli.main([*SMALL, "--json", str(out)])
    assert "holds something else (not a lock file)" in capsys.readouterr().err
    assert Path(lock_path(out)).read_text() == '{"runs": ["mine"]}' and not out.exists()


def test_a_free_name_skips_names_another_process_has_reserved(tmp_path):
    wanted = tmp_path / "cifar-speedrun-rescued-runs.json"
    with other_process(wanted):
        with OutputLocks() as locks:
            chosen = locks.free(str(wanted))
            assert chosen == str(tmp_path / "cifar-speedrun-rescued-runs-2.json")
            assert lock_path(chosen) in locks.held
    assert sorted(os.listdir(tmp_path)) == []


def test_a_free_name_in_a_folder_without_write_permission_is_an_error_not_a_loop(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(os, "open", refuse)
    with OutputLocks() as locks, pytest.raises(OutputError, match="cannot create its lock file"):
        locks.free(str(tmp_path / "runs.previous.json"))
