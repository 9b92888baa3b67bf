"""Nothing a user already has is destroyed (issue 19): outputs never replace a device,
a FIFO or a link; an interrupted rerun keeps the earlier result; two processes on the
same files are refused; paths naming a folder are refused before any work and two
rescues never share a file; SIGHUP is summarised and SIGTERM leaves no temporary file;
a changed image with its old size and time is decoded again."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import cli
from engine.results import session
from engine.outputs import (NotAFileError, OutputError, OutputLocks, atomic_write, check_output_path,
                            write_or_rescue)
from engine.results.report import write_json
from engine.training.train import Trainer
from test_daily_results_safe import ROOT, SMALL, instant_runs


def earlier_result(path: Path, runs: int = 2):
    """A finished result of `runs` runs at `path`, as a user has it from a previous command."""
    payload = {"runs": [{"seed": s, "status": "ok", "ema_accuracy": 0.5, "train_seconds": 1,
                         "total_seconds": 2} for s in range(runs)], "complete": True, "final": True}
    path.write_text(json.dumps(payload))
    return payload


# ---- outputs onto what is not a regular file ----

def test_atomic_write_never_renames_over_a_fifo(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(NotAFileError, match="is a FIFO"):
        atomic_write(fifo, lambda file: file.write(b"{}"))
    assert fifo.is_fifo() and os.listdir(tmp_path) == ["pipe.json"]      # no temporary file left


def test_atomic_write_through_a_link_replaces_the_file_and_keeps_the_link(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    atomic_write(tmp_path / "link.json", lambda file: file.write("new"), binary=False)
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"


@pytest.mark.parametrize("path", ["/dev/null", "/dev/stdout"])
def test_a_device_or_stdout_as_output_is_refused_naming_the_option(path):
    with pytest.raises(OutputError, match=f"--json {path} is .*, not a regular file"):
        check_output_path("--json", path)


@pytest.mark.parametrize("option", ["--json", "--save", "--plot"])
def test_training_onto_a_fifo_is_refused_before_any_work_and_the_fifo_stays(tmp_path, monkeypatch, capsys,
                                                                             option):
    fifo = tmp_path / ("out.png" if option == "--plot" else "out")
    os.mkfifo(fifo)
    monkeypatch.setattr(cli, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data despite a bad output"))
    with pytest.raises(SystemExit) as caught:
        cli.main([*SMALL, option, str(fifo)])
    assert caught.value.code == 2 and "is a FIFO (named pipe), not a regular file" in capsys.readouterr().err
    assert fifo.is_fifo()


def test_evaluate_and_convert_onto_a_fifo_are_refused(tmp_path, capsys):
    fifo = tmp_path / "out.npz"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--checkpoint", str(tmp_path / "m.pt"), "--json", str(fifo)])
    assert "is a FIFO" in capsys.readouterr().err
    np.savez(tmp_path / "src.npz", train_images=np.zeros((10, 32, 32, 3), np.uint8),
             train_labels=np.arange(10), test_images=np.zeros((10, 32, 32, 3), np.uint8), test_labels=np.arange(10))
    assert cli.main(["convert", str(tmp_path / "src.npz"), str(fifo)]) == 2
    assert "is a FIFO" in capsys.readouterr().err and fifo.is_fifo()


def test_a_device_appearing_after_the_check_is_rescued_not_replaced(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fifo = tmp_path / "late.json"
    os.mkfifo(fifo)                                  # as if made after the up-front check
    written, message = write_or_rescue(lambda p: write_json(p, {"a": 1}), str(fifo), "the JSON")
    assert fifo.is_fifo() and written != str(fifo) and json.loads(Path(written).read_text()) == {"a": 1}


# ---- an interrupted rerun keeps the earlier result ----

def test_a_rerun_stopped_before_any_run_keeps_the_earlier_result(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs.json"
    earlier = earlier_result(out)

    def ctrl_c(call, seed):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=ctrl_c))
    assert cli.main([*SMALL, "--runs", "2", "--json", str(out)]) == 130
    assert json.loads(out.read_text()) == earlier
    err = capsys.readouterr().err
    assert f"kept the earlier result in {out} (2 run(s))" in err
    aside = tmp_path / "runs.unfinished.json"
    assert str(aside) in err and json.loads(aside.read_text())["runs"] == []


def test_a_rerun_stopped_with_fewer_runs_leaves_them_beside_the_earlier_result(tmp_path, monkeypatch):
    out = tmp_path / "runs.json"
    earlier = earlier_result(out, runs=3)
    (tmp_path / "runs.unfinished.json").write_text("an earlier unfinished result")   # never replaced either

    def ctrl_c(call, seed):
        if call == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=ctrl_c))
    assert cli.main([*SMALL, "--runs", "3", "--json", str(out)]) == 130
    assert json.loads(out.read_text()) == earlier
    assert (tmp_path / "runs.unfinished.json").read_text() == "an earlier unfinished result"
    aside = json.loads((tmp_path / "runs.unfinished-2.json").read_text())
    assert [r["seed"] for r in aside["runs"]] == [0] and aside["complete"] is False and aside["final"] is True


@pytest.mark.slow
def test_a_rerun_that_finishes_replaces_the_earlier_result(tmp_path, monkeypatch):
    out = tmp_path / "runs.json"
    earlier_result(out, runs=2)
    monkeypatch.setattr(Trainer, "run", instant_runs())
    assert cli.main([*SMALL, "--runs", "2", "--seed", "5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["complete"] and [r["seed"] for r in report["runs"]] == [5, 6]
    assert not (tmp_path / "runs.unfinished.json").exists()               # the progress file is gone


@pytest.mark.slow
def test_a_complete_result_with_fewer_runs_keeps_the_earlier_as_previous(tmp_path, monkeypatch):
    out = tmp_path / "runs.json"
    earlier = earlier_result(out, runs=3)
    monkeypatch.setattr(Trainer, "run", instant_runs())
    assert cli.main([*SMALL, "--runs", "1", "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["runs"]) == 1
    assert json.loads((tmp_path / "runs.previous.json").read_text()) == earlier


# As many runs as the earlier result held is not less (README "Results on disk": the new result
# replaces the earlier one when it is complete or holds at least as many runs): the new one is
# at --json, nothing goes aside as unfinished or previous, and no message says the earlier held more.

def test_a_complete_rerun_with_as_many_runs_replaces_the_earlier_result_without_a_copy(tmp_path, monkeypatch,
                                                                                        capsys):
    out = tmp_path / "runs.json"
    earlier_result(out, runs=2)
    monkeypatch.setattr(Trainer, "run", instant_runs())
    assert cli.main([*SMALL, "--runs", "2", "--seed", "7", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["complete"] is True and [r["seed"] for r in report["runs"]] == [7, 8]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.json"]        # no previous, no unfinished
    assert "more than this one" not in capsys.readouterr().err


def test_a_rerun_cut_short_with_as_many_runs_as_the_earlier_result_replaces_it(tmp_path, monkeypatch, capsys):
    out = tmp_path / "runs.json"
    earlier_result(out, runs=2)

    def ctrl_c(call, seed):
        if call == 3:                                  # after two of the three asked runs
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=ctrl_c))
    assert cli.main([*SMALL, "--runs", "3", "--seed", "7", "--json", str(out)]) == 130
    report = json.loads(out.read_text())
    assert [r["seed"] for r in report["runs"]] == [7, 8] and report["complete"] is False and report["final"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.json"]        # no previous, no unfinished
    assert "kept the earlier result" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_file_stopped_by_sigterm_is_never_marked_complete(tmp_path, monkeypatch):
    def sigterm(call, seed):
        if call == 3:
            raise session.Stopped(signal.SIGTERM)
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=sigterm))
    out = tmp_path / "runs.json"
    assert cli.main([*SMALL, "--runs", "20", "--json", str(out)]) == 143
    report = json.loads(out.read_text())
    assert len(report["runs"]) == 2 and report["complete"] is False and report["interrupted"] is True


# ---- two processes on the same outputs ----

@pytest.mark.slow
def test_a_second_lock_on_the_same_output_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "runs.json"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys; from engine.outputs import OutputLocks\n"
        "with OutputLocks() as locks:\n"
        f"    locks.acquire('--json', {str(out)!r}); print('locked', flush=True); sys.stdin.read()")],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)     # holds the lock until killed
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError, match=rf"--json {out}: another run \(process {holder.pid}\) is writing"):
            with OutputLocks() as locks:
                locks.acquire("--json", out)
    finally:
        holder.kill()
        holder.wait()
    with OutputLocks() as locks:                 # a lock dies with its process
        locks.acquire("--json", out)
    assert not os.listdir(tmp_path)              # released: the lock file is gone


@pytest.mark.slow
def test_two_trainings_on_the_same_json_and_save_the_second_is_refused(tmp_path, monkeypatch, capsys):
    out, save = tmp_path / "runs.json", tmp_path / "model.pt"
    seen = []

    def second_process(call, seed):
        seen.append(subprocess.run([sys.executable, str(ROOT / "run.py"), *SMALL, "--json", str(out),
                                    "--save", str(save)], cwd=ROOT, capture_output=True, text=True))
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=second_process))
    assert cli.main([*SMALL, "--json", str(out), "--save", str(save)]) == 0
    assert seen[0].returncode == 2, seen[0].stderr
    assert "another run" in seen[0].stderr and "is writing this file now" in seen[0].stderr
    assert json.loads(out.read_text())["runs"][0]["checkpoint"] == str(save)


# ---- names the up-front check must try; rescues never share a file ----

@pytest.mark.parametrize("option", ["--json", "--save"])
def test_an_output_ending_in_a_slash_is_refused_before_any_work(tmp_path, monkeypatch, capsys, option):
    monkeypatch.setattr(cli, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data despite a bad output"))
    with pytest.raises(SystemExit) as caught:
        cli.main([*SMALL, option, str(tmp_path / "newdir") + "/"])
    assert caught.value.code == 2 and "names a folder, not a file" in capsys.readouterr().err


def test_two_rescues_of_the_same_name_get_two_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    first, _ = write_or_rescue(lambda p: write_json(p, {"what": "json"}), str(blocked / "x") + "/", "the JSON")
    second, message = write_or_rescue(lambda p: write_json(p, {"what": "checkpoint"}), str(blocked / "x") + "/",
                                      "the checkpoint")
    assert first != second and f"wrote it to {second} instead" in message
    assert json.loads(Path(first).read_text()) == {"what": "json"}
    assert json.loads(Path(second).read_text()) == {"what": "checkpoint"}


# ---- signals and leftovers ----

@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_signal_during_convert_leaves_no_temporary_file(tmp_path, signum):
    """The child sends itself the signal in the middle of writing OUT (np.savez wrapped)."""
    code = ("import os, sys, numpy as np\n"
            "real = np.savez\n"
            "def savez(file, **arrays):\n"
            "    file.write(b'x' * 1000)\n"
            f"    os.kill(os.getpid(), {int(signum)})\n"
            "    real(file, **arrays)\n"
            "np.savez = savez\n"
            "from engine import cli\n"
            f"sys.exit(cli.main(['convert', 'synthetic-src.npz', {str(tmp_path / 'out.npz')!r}]))\n")
    np.savez(tmp_path / "synthetic-src.npz", train_images=np.zeros((10, 32, 32, 3), np.uint8),
             train_labels=np.arange(10), test_images=np.zeros((10, 32, 32, 3), np.uint8), test_labels=np.arange(10))
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 128 + signum, done.stderr
    assert "Traceback" not in done.stderr and "nothing was written" in done.stderr
    assert sorted(os.listdir(tmp_path)) == ["synthetic-src.npz"]


# ---- the image-folder cache ----

def test_an_image_replaced_with_the_same_size_and_time_is_decoded_again(tmp_path, monkeypatch):
    from PIL import Image
    from engine.training.data import load_cifar10
    from test_image_folder import make_folder

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    root = tmp_path / "images"
    make_folder(root, classes=("cat", "dog"), per_class=1)
    first = load_cifar10(root)
    image = root / "train" / "cat" / "0000.png"
    before = os.stat(image)
    replacement = tmp_path / "other.png"
    pixels = np.full((32, 32, 3), 7, np.uint8)
    pixels[0, 0] = 200
    Image.fromarray(pixels).save(replacement, format="PNG")
    with open(replacement, "ab") as file:          # padded to the old size (PNG ignores trailing bytes)
        file.write(b"\0" * (before.st_size - os.path.getsize(replacement)))
    assert os.path.getsize(replacement) == before.st_size
    os.replace(replacement, image)                 # as rsync -a does, then its time restored (touch -r)
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = load_cifar10(root)
    assert not np.array_equal(first.train_images, again.train_images)
    assert np.array_equal(again.train_images[first.train_labels == 3][0], pixels)


@pytest.mark.slow
def test_sigterm_during_the_image_cache_write_leaves_no_temporary_file(tmp_path):
    from test_image_folder import make_folder

    root = tmp_path / "images"
    make_folder(root, classes=("cat", "dog"), per_class=1)
    code = ("import os, sys, numpy as np\n"
            "real = np.savez\n"
            "def savez(file, **arrays):\n"
            "    file.write(b'x' * 1000)\n"
            "    os.kill(os.getpid(), 15)\n"
            "    real(file, **arrays)\n"
            "np.savez = savez\n"
            "from engine import cli\n"
            f"sys.exit(cli.main(['convert', {str(root)!r}, {str(tmp_path / 'out.npz')!r}]))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert done.returncode == 143, done.stderr
    left = [os.path.join(folder, name) for folder, _, names in os.walk(tmp_path) for name in names
            if name.startswith(".tmp-")]
    assert not left and not (tmp_path / "out.npz").exists()


# ---- image folders that cannot be read: a message, not a traceback ----

def test_a_symlink_loop_in_an_image_folder_is_named(tmp_path):
    from engine.training.data import DataError, load_cifar10
    from test_image_folder import make_folder

    make_folder(tmp_path, classes=("cat",), per_class=1)
    (tmp_path / "train" / "dogs").symlink_to("dogs")
    with pytest.raises(DataError, match=r"cannot read .*train/dogs in the image folder .*Too many levels"):
        load_cifar10(tmp_path)


def test_an_unreadable_class_folder_is_named(tmp_path, monkeypatch):
    from engine.training import image_folder
    from engine.training.data import DataError, load_cifar10
    from test_image_folder import make_folder

    make_folder(tmp_path, classes=("cat",), per_class=1)
    real_scandir, locked = os.scandir, str(tmp_path / "train" / "cat")

    def scandir(path):                  # tests run as root: chmod would not stop the reading
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return real_scandir(path)
    monkeypatch.setattr(image_folder.os, "scandir", scandir)
    with pytest.raises(DataError, match=r"cannot read .*train/cat in the image folder .*Permission denied"):
        load_cifar10(tmp_path)


def test_an_unreadable_data_folder_is_not_told_to_download(tmp_path, monkeypatch, capsys):
    from engine.training import data as data_module

    locked = tmp_path / "cifar"
    locked.mkdir()
    monkeypatch.setattr(data_module.os, "access", lambda path, mode: os.fspath(path) != str(locked))
    assert cli.main(["--data", str(locked), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read {locked}: permission denied" in err and "Pass --download" not in err


def test_a_decompression_bomb_image_is_refused_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image
    from engine.training.data import DataError
    from engine.training.image_folder import read_image

    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(big)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)          # 4096 pixels: over twice the limit
    with pytest.raises(DataError, match=r"cannot read the image .*big.png \(DecompressionBombError"):
        read_image(str(big))


# ---- torchrun's variables and peers that never come ----

@pytest.mark.parametrize("variables, message", [
    ({"RANK": "0"}, "RANK is set but WORLD_SIZE is not"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but RANK is not"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE=0: the number of processes must be at least 1"),
    ({"RANK": "0", "WORLD_SIZE": "-2"}, "WORLD_SIZE=-2"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1 with WORLD_SIZE=2: a rank is 0 .. WORLD_SIZE - 1"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 with WORLD_SIZE=2"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK=-1: must be >= 0"),
])
def test_bad_torchrun_variables_are_one_line_errors(monkeypatch, capsys, variables, message):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data"))
    with pytest.raises(SystemExit) as caught:
        cli.main(SMALL)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err and "Traceback" not in err


def free_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lonely_rank(rank: int, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *SMALL, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_rank0_whose_peer_never_joins_says_who_is_missing_within_the_timeout():
    started = time.monotonic()
    done = lonely_rank(0, "--join-timeout", "3")
    # It waited its 3 s, not the default 300 s, the message says; no upper bound on the clock (a busy
    # machine may take long to start the process).
    assert done.returncode == 1 and time.monotonic() - started >= 3, done.stderr
    assert "rank 0: rank(s) 1 of 2 did not join within 3 s" in done.stderr and "--join-timeout" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_rank_that_cannot_reach_rank0_says_so_within_the_timeout():
    done = lonely_rank(1, "--join-timeout", "3")
    assert done.returncode == 1, done.stderr
    assert "rank 1 could not reach rank 0 at 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr


def test_the_gather_names_the_rank_that_did_not_finish():
    import torch.distributed as dist
    from engine.results.distributed import Peers, PeersMissing, World, gather

    store = dist.TCPStore("127.0.0.1", free_port(), 2, True, wait_for_workers=False)
    with pytest.raises(PeersMissing, match=r"rank 0: rank\(s\) 1 of 2 did not finish its runs within 1 s.*"
                                           r"--gather-timeout"):
        gather(World(rank=0, size=2), {"runs": []}, Peers(store, 1.0), "processes")


# ---- checkpoints: edited, inflating, misnamed; a message each, never a traceback ----

def tiny_checkpoint(path: Path, **changes) -> Path:
    import torch
    from engine.results.checkpoint import save_checkpoint
    from engine.training.ops import make_ops
    from test_daily_results_safe import TINY

    network = TINY.build_network(make_ops("eager"), "cpu", torch.float32)
    save_checkpoint(path, network, TINY, accuracy=0.5, seed=0,
                    data={"data": "synthetic", "synthetic_size": 512, "seed": 0})
    if changes:
        payload = torch.load(path, weights_only=True)
        payload.update(changes)
        torch.save(payload, path)
    return path


def evaluate_error(capsys, *args) -> tuple:
    try:
        code = cli.main(["evaluate", "--device", "cpu", *args])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("changes, field", [
    ({"data": {"data": 5}}, "data"),
    ({"data": {"data": "synthetic", "synthetic_size": 512, "seed": "x"}}, "data"),
    ({"data": {"data": "synthetic", "synthetic_size": "big", "seed": 0}}, "data"),
    ({"seed": [1, 2]}, "seed"),
])
def test_a_checkpoint_with_edited_fields_is_refused_naming_the_field(tmp_path, capsys, changes, field):
    path = tiny_checkpoint(tmp_path / "m.pt", **changes)
    code, err = evaluate_error(capsys, "--checkpoint", str(path))
    assert code == 2 and f"its {field} is missing or malformed" in err and "Traceback" not in err


def test_a_checkpoint_whose_weights_were_edited_names_what_differs(tmp_path, capsys):
    import torch
    from engine.training.ops import make_ops
    from test_daily_results_safe import TINY

    state = TINY.build_network(make_ops("eager"), "cpu", torch.float32).state_dict()
    first = next(iter(state))
    edited = {name: value for name, value in state.items() if name != first}
    edited["extra.weight"] = torch.zeros(1)
    path = tiny_checkpoint(tmp_path / "m.pt", state_dict=edited)
    code, err = evaluate_error(capsys, "--checkpoint", str(path))
    assert code == 2 and f"missing {first}; unexpected extra.weight" in err


def test_a_checkpoint_that_would_inflate_is_refused_before_it_is_read(tmp_path, monkeypatch, capsys):
    import zipfile
    import torch

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))           # 64 MB in about 64 kB
    assert os.path.getsize(bomb) < 1 << 20
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the checkpoint was inflated"))
    code, err = evaluate_error(capsys, "--checkpoint", str(bomb))
    assert code == 2 and "would inflate to 0.1 GB" in err and "it is not read" in err


def test_a_checkpoint_path_that_is_a_directory_says_so(tmp_path, capsys):
    code, err = evaluate_error(capsys, "--checkpoint", str(tmp_path))
    assert code == 2 and f"{tmp_path} is a directory, not a checkpoint" in err and "no such" not in err


def test_evaluating_the_save_name_of_several_runs_names_their_files(tmp_path, capsys):
    for seed in (0, 1):
        tiny_checkpoint(tmp_path / f"ck-seed{seed}.pt")
    code, err = evaluate_error(capsys, "--checkpoint", str(tmp_path / "ck.pt"))
    assert code == 2 and "wrote one file per run" in err
    assert str(tmp_path / "ck-seed0.pt") in err and str(tmp_path / "ck-seed1.pt") in err
    assert "Write one with" not in err


def test_recorded_relative_data_that_is_not_here_says_where_it_came_from(tmp_path, monkeypatch, capsys):
    path = tiny_checkpoint(tmp_path / "m.pt", data={"data": "elsewhere/cifar.npz"})
    monkeypatch.chdir(tmp_path)
    code, err = evaluate_error(capsys, "--checkpoint", str(path))
    assert code == 2 and f"--data elsewhere/cifar.npz is what {path} records" in err
    assert "relative to the folder" in err and "pass --data to use other data" in err


# ---- the library's inputs ----

def test_fit_refuses_a_bool_seed():
    import engine
    with pytest.raises(TypeError, match="seed must be an integer, got bool True"):
        engine.fit(seed=True)


def test_labels_beyond_the_networks_outputs_are_refused():
    import engine
    from engine.training.data import make_synthetic
    from test_daily_results_safe import TINY

    data = make_synthetic(512, seed=0)
    data.train_labels = data.train_labels.copy()
    data.train_labels[0] = 12
    with pytest.raises(ValueError, match=r"data.train_labels range over 0 \.\. 12; the network has 10 outputs"):
        engine.fit(TINY, data, device="cpu")


def test_evaluate_with_a_loader_of_another_dtype_says_so():
    import torch
    import engine
    from engine.training.data import CifarLoader, make_synthetic
    from engine.training.ops import make_ops
    from test_daily_results_safe import TINY

    data = make_synthetic(512, seed=0)
    network = TINY.build_network(make_ops("eager"), "cpu", torch.float32)
    loader = CifarLoader(data.test_images, data.test_labels, TINY, False, "cpu", torch.float16)
    with pytest.raises(ValueError, match="float16 images on cpu but the network is float32"):
        engine.evaluate(network, loader)


# ---- resources and the environment ----

@pytest.mark.slow
def test_an_mplbackend_naming_nothing_real_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "run.py"), *SMALL, "--plot", str(tmp_path / "p.png")],
                          cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MPLBACKEND": "nothing"})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "matplotlib cannot start with MPLBACKEND='nothing'" in done.stderr and "set it to agg" in done.stderr


def test_an_address_space_limit_counts_as_the_memory_left(monkeypatch):
    import resource
    import torch
    from engine import checks

    def status_vm_size():
        with open("/proc/self/status") as file:
            return next(int(line.split()[1]) * 1024 for line in file if line.startswith("VmSize:"))
    limit = status_vm_size() + 2 * 10**9                         # `ulimit -v`: 2 GB above what is mapped now
    monkeypatch.setattr(checks.resource, "getrlimit", lambda kind: (limit, resource.RLIM_INFINITY))
    assert checks.available_memory() <= 2 * 10**9 + 10**8
    with pytest.raises(ValueError, match=r"--synthetic-size 50000 needs about 4\.0 GB of memory, but only"):
        checks.require_synthetic_fits(50_000, torch.device("cpu"))


def test_a_huge_base_width_is_refused_before_anything_is_allocated(monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", lambda *a, **k: pytest.fail("trained a network that cannot fit"))
    args = [a if a != "8" else "20000" for a in SMALL]              # --base-width 20000
    with pytest.raises(SystemExit) as caught:
        cli.main(args)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "the network of base width 20000 has" in err and "lower --base-width" in err


# ---- what reports say ----

@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["seed", "seed-long"])
def test_a_run_without_ema_is_not_reported_as_ema_accuracy(monkeypatch, capsys, recipe):
    monkeypatch.setattr(Trainer, "run", instant_runs())
    args = [a if a != "2" else "1" for a in SMALL]                  # --epochs 1: no EMA epoch
    assert cli.main([*args, "--recipe", recipe]) == 0
    out = capsys.readouterr().out
    assert "EMA accuracy" not in out and "final: accuracy 55.00%" in out and "  accuracy       55.00%" in out


def test_the_learned_nothing_hint_names_only_options_the_recipe_takes():
    from engine.recipe_files import find_recipe
    from engine.results.session import learned_nothing_hint

    assert "--lr" in learned_nothing_hint(find_recipe("seed").make_config())
    record = learned_nothing_hint(find_recipe("airbench94-muon").make_config())
    assert "--lr" not in record and "--set" in record


# ---- found by this issue's own probe ----

def test_an_output_renamed_over_a_lock_file_is_not_removed_with_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "run", instant_runs())
    out = tmp_path / ".m.pt.lock"                                 # the lock file of --save m.pt
    assert cli.main([*SMALL, "--json", str(out), "--save", str(tmp_path / "m.pt"), "--quiet"]) == 0
    assert json.loads(out.read_text())["complete"] is True


def test_an_earlier_file_that_is_not_a_result_is_kept_from_an_empty_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "notes.json"
    out.write_text("{my own notes")

    def ctrl_c(call, seed):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=ctrl_c))
    assert cli.main([*SMALL, "--json", str(out)]) == 130
    assert out.read_text() == "{my own notes"
    assert f"kept the earlier result in {out} (not a result of ours)" in capsys.readouterr().err


def test_an_output_behind_a_link_loop_is_a_one_line_refusal(tmp_path, monkeypatch, capsys):
    (tmp_path / "loop").symlink_to("loop")
    monkeypatch.setattr(cli, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data despite a bad output"))
    with pytest.raises(SystemExit) as caught:
        cli.main([*SMALL, "--json", str(tmp_path / "loop" / "runs.json")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and "cannot be reached (Too many levels of symbolic links)" in err


@pytest.mark.parametrize("make", ["device", "fifo"])
def test_a_checkpoint_that_is_a_device_or_fifo_is_refused_without_reading(tmp_path, capsys, make):
    path = "/dev/null" if make == "device" else str(tmp_path / "ck.pt")
    if make == "fifo":
        os.mkfifo(path)                                   # reading it would wait for a writer for ever
    code, err = evaluate_error(capsys, "--checkpoint", path)
    assert code == 2 and f"{path} is not a regular file" in err and "no such checkpoint" not in err


@pytest.mark.slow
def test_quiet_runs_still_name_every_checkpoint_they_saved(tmp_path, capsys):
    out = tmp_path / "ck.pt"
    code = cli.main(["--data", "synthetic", "--synthetic-size", "256", "--device", "cpu", "--epochs", "2",
                     "--base-width", "4", "--batch-size", "128", "--runs", "2", "--save", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert code in (0, 1)                # tiny runs may learn nothing; the files are what counts here
    assert f"saved {tmp_path / 'ck-seed0.pt'}, {tmp_path / 'ck-seed1.pt'}" in text
    assert (tmp_path / "ck-seed0.pt").is_file() and (tmp_path / "ck-seed1.pt").is_file()
