"""A newcomer's first hour on a machine without a GPU: the job says what it will do first,
a failed download leaves nothing behind, long steps show that they are working, and
argument mistakes are told before torch loads."""
import io
import subprocess
import sys
from pathlib import Path

import pytest

from engine import cli
from engine.results.progress import Progress, Ticker
from engine.training import data as data_module
from engine.training.data import DataError, load_cifar10
from engine.training.train import RunResult, Trainer

from waiting import poll_until

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data", "synthetic", "--synthetic-size", "512", "--epochs", "2", "--base-width", "8",
         "--batch-size", "128", "--final-eval-only"]


def wait_for(condition, what: str):
    """Wait until condition() holds (`what` it waits for), however long a busy machine takes."""
    poll_until(condition)


class Terminal(io.StringIO):
    def isatty(self):
        return True


# ---- argument mistakes before torch ----

@pytest.mark.parametrize("argv, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--epochs", "-1"], "argument --epochs: must be a positive number, got -1"),
    (["--runs", "two"], "argument --runs: invalid positive_int value: 'two'"),
    (["--compile-mode", "default"], "--compile-mode has no effect without --compile"),
    (["--data", "x.npz", "--synthetic-size", "100"], "--synthetic-size only applies to --data synthetic"),
    (["--train-subset", "5"], "argument --train-subset: must be at least 10"),
    (["evaluate", "--checkpoint", "m.pt", "--dtype", "int8"], "argument --dtype: invalid choice"),
    (["convert", "a", "b.npz", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_argument_mistakes_are_told_before_torch_loads(argv, message):
    probe = ("import sys; from engine.command import main; code = main(sys.argv[1:]); "
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded'); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert result.stdout.strip() == "torch not loaded"


# ---- no GPU: said first ----

def test_without_a_gpu_the_job_says_so_first_and_what_it_will_do(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "--compile", "--data", str(tmp_path / "none")],
                            cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ,
                                                                           "CUDA_VISIBLE_DEVICES": ""})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert lines[0].startswith("run.py: no CUDA GPU here: training runs on the CPU, float32 with eager kernels")
    assert "torch.compile compiles for the CPU first, which takes minutes" in lines[0]
    assert "--train-subset" in lines[0]
    assert lines[1].startswith("run.py: error: no such directory:")             # the data error after it


def test_an_explicit_cpu_device_gets_no_note(monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "run", lambda self, train, test, seed, **k: RunResult(
        seed=seed, accuracy=0.5, ema_accuracy=0.5, epochs=[]))
    cli.main([*SMALL, "--device", "cpu", "--quiet"])
    assert "no CUDA GPU" not in capsys.readouterr().err


# ---- a failed download ----

def test_a_failed_download_leaves_no_folder_behind(tmp_path, monkeypatch):
    def no_network(root, download):
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise DataError("could not read or download CIFAR-10 (no network)")
    monkeypatch.setattr(data_module, "_load_torchvision", no_network)
    with pytest.raises(DataError, match="no network"):
        load_cifar10(tmp_path / "new" / "data", download=True)
    assert list(tmp_path.iterdir()) == []                  # neither data/ nor the new/ above it
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("the user's")
    with pytest.raises(DataError):
        load_cifar10(kept / "data", download=True)
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]


# ---- long steps show that they are working ----

def test_a_ticker_in_a_log_says_start_still_and_done():
    out = io.StringIO()
    with Ticker("compiling", file=out, every=0.01, log_every=0.01):
        wait_for(lambda: "still compiling: " in out.getvalue(), "a 'still' line")
    lines = out.getvalue().splitlines()
    assert lines[0] == "compiling..." and lines[1].startswith("still compiling: ")
    assert lines[-1].startswith("compiling: done after ") and lines[-1].endswith(" s")


def test_a_ticker_on_a_terminal_rewrites_its_seconds_in_place_and_says_when_stopped():
    out = Terminal()
    with pytest.raises(KeyboardInterrupt):
        with Ticker("compiling", file=out, every=0.01):
            wait_for(lambda: out.getvalue().count("\rcompiling... ") >= 2, "two in-place updates")
            raise KeyboardInterrupt
    text = out.getvalue()
    assert text.startswith("compiling... 0 s\rcompiling... ") and "\n" not in text[:-1]
    assert "\r\033[Kcompiling: stopped after " in text


def test_the_bar_is_shown_at_once_and_its_clock_moves_before_the_first_step():
    pytest.importorskip("tqdm")
    out = Terminal()
    show = Progress("bar", file=out)
    show.start_run(0, 1, 0, steps=10, epochs=2)
    assert "run 1/1 preparing (network, whitening, first augmentation)" in out.getvalue()
    shown = out.getvalue()
    wait_for(lambda: out.getvalue() != shown, "the bar redrawn without a step")
    show.step(1)
    show.bar.refresh()
    assert "run 1/1 epoch 1/2" in out.getvalue().rsplit("\r", 1)[-1]
    show.close()
    assert show.refresh is None


def test_the_steps_timed_for_the_estimate_are_shown_on_a_terminal(monkeypatch):
    monkeypatch.setattr(Trainer, "seconds_per_step", lambda self, train: 0.01)
    monkeypatch.setattr(Trainer, "run", lambda self, train, test, seed, **k: RunResult(
        seed=seed, accuracy=0.5, ema_accuracy=0.5, epochs=[]))
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    cli.main([*SMALL, "--device", "cpu"])
    out = terminal.getvalue()
    assert out.index("timing a few training steps for an estimate: done after") < out.index("on this CPU: about")


def test_compiling_is_shown_with_its_time(monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "warm_up", lambda self, train, test: 0.0)
    monkeypatch.setattr(Trainer, "seconds_per_step", lambda self, train: 0.01)
    monkeypatch.setattr(Trainer, "run", lambda self, train, test, seed, **k: RunResult(
        seed=seed, accuracy=0.5, ema_accuracy=0.5, epochs=[]))
    cli.main([*SMALL, "--device", "cpu", "--compile"])
    out = capsys.readouterr().out
    assert "timing a few" not in out                         # a log gets no lines for a short step
    assert "compiling the training and evaluation steps (torch.compile) on a short warm-up run...\n" in out
    assert "compiling the training and evaluation steps (torch.compile) on a short warm-up run: done after" in out
