"""No finished result is lost: outputs checked before any work, files rescued when they
cannot be written, each run kept on disk as it finishes, Ctrl-C and SIGTERM summarised,
a second signal during the final write waited for, the user's umask, and runs that
learned nothing flagged."""
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine import cli
from engine.results import session
from engine.results.checkpoint import load_checkpoint, save_checkpoint
from engine.recipes.seed import Config
from engine.results.distributed import World
from engine.training.ops import make_ops
from engine.outputs import OutputError, atomic_write, check_output_paths, write_or_rescue
from engine.results.report import format_summary, summarize, write_json
from engine.results.session import Outputs, Session, learned_nothing
from engine.training.train import RunResult, Trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data", "synthetic", "--synthetic-size", "512", "--device", "cpu", "--epochs", "2",
         "--base-width", "8", "--batch-size", "128"]
TINY = Config(base_width=8, train_images=512, batch_size=128, epochs=2, ema_epochs=1)


def instant_runs(accuracy=0.55, before_run=None):
    """A stand-in for Trainer.run: an instant result with a real (tiny) network, after
    calling before_run(call number, seed) if given."""
    calls = []

    def run(self, train, test, seed, on_epoch=None, on_step=None, **kwargs):
        calls.append(seed)
        if before_run is not None:
            before_run(len(calls), seed)
        row = {"epoch": 1, "train_loss": 1.5, "train_accuracy": 0.4, "val_accuracy": accuracy,
               "ema_val_accuracy": accuracy, "seconds": 0.01}
        on_epoch(row)
        network = TINY.build_network(make_ops("eager"), "cpu", torch.float32)
        return RunResult(seed=seed, accuracy=accuracy, ema_accuracy=accuracy, train_seconds=0.01,
                         total_seconds=0.02, epochs=[row], model=network, ema_model=network)
    return run


# ---- outputs checked before any work ----

@pytest.mark.parametrize("make_args, message", [
    (lambda d: ["--json", str(d)], "--json {d}: is an existing directory"),
    (lambda d: ["--plot", str(d / "afile" / "runs.png")], "is a file, not a folder"),
    (lambda d: ["--plot", str(d / "x.png"), "--save", str(d / "x.png")], "--save {d}/x.png: the same file as --plot"),
    (lambda d: ["--json", str(d / "m-seed1.pt"), "--save", str(d / "m.pt"), "--runs", "2"],
     "--save (seed 1)"),
    (lambda d: ["--plot", str(d / "runs.docx")], "matplotlib cannot write .docx files"),
])
def test_bad_outputs_stop_before_the_data_is_loaded(tmp_path, monkeypatch, capsys, make_args, message):
    (tmp_path / "afile").write_text("")
    monkeypatch.setattr(cli, "load_cifar10", lambda *a, **k: pytest.fail("loaded the data despite a bad output"))
    with pytest.raises(SystemExit) as caught:
        cli.main([*SMALL, *make_args(tmp_path)])
    assert caught.value.code == 2
    assert message.format(d=tmp_path) in capsys.readouterr().err


def test_an_output_must_not_overwrite_an_input(tmp_path):
    data = tmp_path / "cifar.npz"
    data.write_bytes(b"")
    with pytest.raises(OutputError, match="--json .* the same file as --data"):
        check_output_paths([("--json", str(data))], inputs=[("--data", str(data))])


def test_an_unwritable_folder_is_refused_naming_the_option(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):           # tests run as root: chmod would not stop a write
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("engine.outputs.tempfile.mkstemp", refuse)
    with pytest.raises(OutputError, match=r"--save .*cannot write in .*Permission denied"):
        check_output_paths([("--save", str(tmp_path / "new" / "model.pt"))])


# ---- permissions ----

def test_files_get_the_users_umask_not_0600(tmp_path):
    pytest.importorskip("matplotlib")
    from engine.results.plots import plot_runs
    old = os.umask(0o027)
    try:
        written = [write_json(tmp_path / "runs.json", {"a": 1}),
                   save_checkpoint(tmp_path / "model.pt", TINY.build_network(make_ops("eager"), "cpu",
                                                                             torch.float32), TINY),
                   plot_runs([], tmp_path / "runs.png")]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640, path


# ---- writes that fail after training ----

def test_write_or_rescue_falls_back_to_the_current_directory_then_the_temporary_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocked = tmp_path / "out.json"
    blocked.mkdir()                        # made a directory after the up-front check
    written, message = write_or_rescue(lambda p: write_json(p, {"a": 1}), str(blocked), "the JSON")
    assert os.path.dirname(written) == str(tmp_path) and json.loads(Path(written).read_text()) == {"a": 1}
    assert f"could not write the JSON to {blocked}" in message and f"wrote it to {written} instead" in message

    def never(path):
        raise OSError(28, "No space left on device")
    written, message = write_or_rescue(never, str(blocked), "the JSON")
    assert written is None and "No space left on device" in message and "nor could it be written" in message


@pytest.mark.slow
def test_a_failed_save_keeps_the_run_and_the_next_runs_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=lambda call, seed: call == 1 and (
        tmp_path / "model-seed0.pt").mkdir()))      # seed 0's checkpoint path turns into a directory
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs.json"
    code = cli.main([*SMALL, "--runs", "3", "--json", str(out), "--save", str(tmp_path / "model.pt")])
    err = capsys.readouterr().err
    assert code == 1                                             # a file is not where asked
    report = json.loads(out.read_text())
    assert [r["seed"] for r in report["runs"]] == [0, 1, 2] and report["summary"]["runs"] == 3
    rescued = report["runs"][0]["checkpoint"]
    assert f"could not write the checkpoint of seed 0 to {tmp_path / 'model-seed0.pt'}" in err
    assert f"wrote it to {rescued} instead" in err and os.path.dirname(rescued) == str(tmp_path)
    assert load_checkpoint(rescued, "cpu")[1]["seed"] == 0
    assert [r["checkpoint"] for r in report["runs"][1:]] == [str(tmp_path / f"model-seed{s}.pt") for s in (1, 2)]


def test_a_json_that_cannot_be_written_anywhere_goes_to_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", instant_runs())
    real_write_json = session.write_json

    def full_disk(path, payload):
        if payload.get("final"):
            raise OSError(28, "No space left on device")
        return real_write_json(path, payload)
    monkeypatch.setattr(session, "write_json", full_disk)
    code = cli.main([*SMALL, "--runs", "2", "--json", str(tmp_path / "runs.json"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1 and "No space left on device" in captured.err and "follows on standard output" in captured.err
    printed = json.loads(captured.out[captured.out.index("{"):])
    assert printed["complete"] is True and [r["seed"] for r in printed["runs"]] == [0, 1]


@pytest.mark.slow
def test_a_plot_that_cannot_be_written_is_rescued(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=lambda call, seed: (tmp_path / "p.png").mkdir()))
    monkeypatch.chdir(tmp_path)
    code = cli.main([*SMALL, "--plot", str(tmp_path / "p.png"), "--json", str(tmp_path / "runs.json")])
    err = capsys.readouterr().err
    assert code == 1 and "could not write the plot" in err
    rescued = err.split("wrote it to ")[1].split(" instead")[0]
    assert Path(rescued).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "runs.json").read_text())["summary"]["runs"] == 1


# ---- each run on disk as it finishes ----

def test_the_json_holds_every_finished_run_while_the_others_train(tmp_path, monkeypatch):
    out = tmp_path / "runs.json"
    seen = []

    def look(call, seed):
        seen.append(json.loads(out.read_text()) if out.exists() else None)
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=look))
    assert cli.main([*SMALL, "--runs", "3", "--json", str(out), "--quiet"]) == 0
    assert seen[0] is None
    assert [[r["seed"] for r in report["runs"]] for report in seen[1:]] == [[0], [0, 1]]
    assert all(report["complete"] is False for report in seen[1:])
    assert json.loads(out.read_text())["complete"] is True


def test_under_torchrun_each_process_writes_its_own_progress_file(tmp_path, monkeypatch):
    from engine.training.data import CifarLoader, make_synthetic
    data = make_synthetic(512, seed=0)
    train = CifarLoader(data.train_images, data.train_labels, TINY, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, TINY, False, "cpu", torch.float32)
    monkeypatch.setattr(Trainer, "run", instant_runs())
    outputs = Outputs(json=str(tmp_path / "runs.json"))
    second = Session(Trainer(TINY, make_ops("eager"), "cpu", torch.float32), train, test, runs=5,
                     world=World(rank=1, size=2, local_rank=1), outputs=outputs)
    second.train_all()                                           # runs 1 and 3 (seeds 1 and 3)
    partial = json.loads((tmp_path / "runs.rank1.json").read_text())
    assert [r["seed"] for r in partial["runs"]] == [1, 3] and partial["rank"] == 1
    assert partial["complete"] is False and not (tmp_path / "runs.json").exists()


def test_a_process_that_cannot_gather_says_where_its_runs_are(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", instant_runs())

    def peer_died(world, item, *waits):
        raise RuntimeError("Connection closed by peer")
    monkeypatch.setattr(session, "gather", peer_died)
    out = tmp_path / "runs.json"
    assert cli.main([*SMALL, "--runs", "2", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert "could not gather the other processes' runs (Connection closed by peer)" in err
    assert f"finished runs are in {out}" in err and len(json.loads(out.read_text())["runs"]) == 2


# ---- signals ----

def test_a_second_ctrl_c_during_the_final_write_does_not_lose_the_json(tmp_path, monkeypatch, capfd):
    def first_ctrl_c(call, seed):
        if call == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "run", instant_runs(before_run=first_ctrl_c))
    real_write_json = session.write_json

    def second_ctrl_c(path, payload):
        if payload["final"]:
            os.kill(os.getpid(), signal.SIGINT)                  # arrives in the middle of the write
        return real_write_json(path, payload)
    monkeypatch.setattr(session, "write_json", second_ctrl_c)
    out = tmp_path / "runs.json"
    handler_before = signal.getsignal(signal.SIGINT)
    try:
        assert cli.main([*SMALL, "--runs", "3", "--json", str(out)]) == 130
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped the final write")
    report = json.loads(out.read_text())
    assert report["final"] is True and report["interrupted"] is True
    assert report["complete"] is False                                       # 1 of 3 runs
    assert [r["seed"] for r in report["runs"]] == [0]
    assert "SIGINT: writing the results first" in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler_before                # the handler put back


@pytest.mark.slow
@pytest.mark.parametrize("signum,status", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)],
                         ids=["SIGTERM", "SIGHUP (a closed terminal or ssh session)"])
def test_sigterm_and_sighup_are_summarised_like_ctrl_c(tmp_path, signum, status):
    out = tmp_path / "runs.json"
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *SMALL, "--runs", "1000",
                                "--json", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        for line in process.stdout:                               # wait until the first run finished
            if line.startswith("final:"):
                break
        process.send_signal(signum)
        stdout, stderr = process.communicate()
    finally:
        process.kill()
    assert process.returncode == status, stderr
    assert f"interrupted ({signal.Signals(signum).name})" in stderr and "Traceback" not in stderr
    report = json.loads(out.read_text())
    finished = stdout.count("final:") + 1                         # the line read above
    assert report["final"] and report["interrupted"] and 1 <= len(report["runs"]) == finished
    assert report["complete"] is False                            # far fewer than the 1000 asked
    assert f"summary over {finished} of 1000 run(s)" in stdout


# ---- runs that learned nothing ----

def test_learned_nothing_needs_accuracy_at_chance_or_a_stuck_loss():
    run = {"ema_accuracy": 0.108, "accuracy": 0.102, "epochs": [{"train_loss": 1.2}]}
    assert "at chance" in learned_nothing(run, test_images=10_000)        # limit 10.9%
    assert learned_nothing({**run, "ema_accuracy": 0.15}, test_images=10_000) is None
    assert learned_nothing({**run, "ema_accuracy": 0.15}, test_images=100) is not None   # limit 19%
    stuck = {"ema_accuracy": 0.5, "accuracy": 0.5, "epochs": [{"train_loss": 2.30}]}
    assert "uniform guess" in learned_nothing(stuck, test_images=10_000)


def test_a_run_that_learned_nothing_is_flagged_in_its_row_and_the_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", instant_runs(accuracy=0.1))
    out = tmp_path / "runs.json"
    assert cli.main([*SMALL, "--runs", "2", "--json", str(out)]) == 1   # no run learned anything
    report = json.loads(out.read_text())
    assert [r["status"] for r in report["runs"]] == ["ok", "ok"]
    assert all(r["learned_nothing"] for r in report["runs"]) and report["summary"]["learned_nothing_runs"] == 2
    printed = capsys.readouterr().out
    assert printed.count("LEARNED NOTHING: accuracy 10.00% is at chance") == 2
    assert "LEARNED NOTHING in 2 run(s)" in printed


@pytest.mark.parametrize("accuracy, flagged", [(0.1, True), (0.55, False)])
def test_fit_flags_a_run_that_learned_nothing_in_its_result(monkeypatch, capsys, accuracy, flagged):
    import engine
    from engine.training.data import make_synthetic

    monkeypatch.setattr(Trainer, "run", instant_runs(accuracy=accuracy))
    result = engine.fit(TINY, make_synthetic(512, seed=0), device="cpu", progress=True)
    assert result.learned_nothing is flagged and result.to_dict()["learned_nothing"] is flagged
    assert ("LEARNED NOTHING: accuracy 10.00% is at chance" in capsys.readouterr().out) is flagged


def test_summary_counts_runs_that_learned_nothing():
    runs = [{"status": "ok", "ema_accuracy": 0.9, "train_seconds": 1, "total_seconds": 2, "learned_nothing": False},
            {"status": "ok", "ema_accuracy": 0.1, "train_seconds": 1, "total_seconds": 2, "learned_nothing": True}]
    summary = summarize(runs)
    assert summary["learned_nothing_runs"] == 1
    assert "LEARNED NOTHING in 1 run(s)" in format_summary(summary, "synthetic", "CPU")
    assert "LEARNED NOTHING" not in format_summary(summarize(runs[:1]), "synthetic", "CPU")


def test_pathlib_paths_work_for_outputs(tmp_path):
    network = TINY.build_network(make_ops("eager"), "cpu", torch.float32)
    assert save_checkpoint(tmp_path / "m.pt", network, TINY, accuracy=0.5) == str(tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt", "cpu")[1]["accuracy"] == 0.5
    assert atomic_write(tmp_path / "a.txt", lambda f: f.write("x"), binary=False) == str(tmp_path / "a.txt")


def test_ctrl_c_before_any_run_is_a_message_not_a_traceback(monkeypatch, capsys):
    def interrupted_warm_up(self, train, test):
        raise KeyboardInterrupt
    monkeypatch.setattr(Trainer, "warm_up", interrupted_warm_up)
    try:
        assert cli.main([*SMALL, "--compile"]) == 130
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped as a traceback")
    assert "interrupted before any result was ready" in capsys.readouterr().err
