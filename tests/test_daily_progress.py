"""Progress (bar, table, one line per run, quiet) and plots (--plot, and the message
when matplotlib is missing)."""
import io
import sys

import pytest
import torch

from engine import cli
from engine.recipes.seed import Config
from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.results.progress import Progress
from engine.training.train import Trainer

ROW = {"epoch": 1, "train_loss": 1.2345, "train_accuracy": 0.5, "val_accuracy": 0.6, "ema_val_accuracy": None,
       "seconds": 0.5}


def drive(progress: Progress, steps=4):
    progress.start_run(1, 3, seed=7, steps=steps, epochs=2)
    for step in range(1, steps // 2 + 1):
        progress.step(step)
    progress.epoch(ROW)
    for step in range(steps // 2 + 1, steps + 1):
        progress.step(step)
    progress.epoch({**ROW, "epoch": 2, "ema_val_accuracy": 0.65})
    progress.end_run("final: EMA accuracy 65.00%")


def test_table_mode_prints_the_epoch_table():
    out = io.StringIO()
    drive(Progress("table", file=out))
    lines = out.getvalue().splitlines()
    assert "run 2/3 (seed 7)" in lines and any(line.startswith("epoch train loss") for line in lines)
    assert any("1.2345" in line and "60.00%" in line for line in lines) and lines[-1] == "final: EMA accuracy 65.00%"


def test_auto_is_the_table_outside_a_terminal():
    assert Progress("auto", file=io.StringIO()).mode == "table"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_auto_is_the_bar_in_a_terminal():
    assert Progress("auto", file=Terminal()).mode == "bar"      # tqdm is a dependency


def test_bar_mode_shows_run_epoch_and_steps():
    pytest.importorskip("tqdm")
    out = io.StringIO()
    progress = Progress("bar", file=out)
    drive(progress)
    text = out.getvalue()
    assert "run 2/3 epoch 2/2" in text and "4/4" in text and "step" in text    # the bar
    assert "1.2345" in text and "final: EMA accuracy 65.00%" in text           # the table above it
    assert progress.bar is None                                                  # closed


def test_bar_without_tqdm_falls_back_to_the_table(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)          # import tqdm now fails
    assert Progress("bar", file=io.StringIO()).mode == "table"


def test_quiet_and_runs_modes():
    out = io.StringIO()
    drive(Progress("quiet", file=out))
    assert out.getvalue() == ""
    drive(Progress("runs", file=out, prefix="[rank 1] "))
    assert out.getvalue() == "[rank 1] run 2/3 (seed 7): final: EMA accuracy 65.00%\n"


@pytest.mark.slow
def test_trainer_reports_every_step_as_a_plain_int():
    config = Config(base_width=8, train_images=512, batch_size=128, epochs=2, ema_epochs=1)
    data = make_synthetic(512, seed=0)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    steps, rows = [], []
    Trainer(config, make_ops("eager"), "cpu", torch.float32).run(train, test, 0, on_epoch=rows.append,
                                                                on_step=steps.append)
    assert steps == list(range(1, config.total_steps + 1)) and all(type(s) is int for s in steps)
    assert [row["epoch"] for row in rows] == [1, 2]


def test_plot_draws_curves_and_final_accuracies(tmp_path):
    pytest.importorskip("matplotlib")
    from engine.results.plots import plot_runs
    runs = [{"seed": s, "status": "ok", "ema_accuracy": 0.93 + s / 100,
             "epochs": [{**ROW, "epoch": 1}, {**ROW, "epoch": 2, "ema_val_accuracy": 0.93 + s / 100}]}
            for s in range(3)]
    runs.append({"seed": 3, "status": "failed", "error": "NaN", "step": 5, "lr": 1.0, "epochs": [ROW]})
    path = tmp_path / "plots" / "runs.png"
    plot_runs(runs, str(path), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["runs.png"]     # no temporary left


def test_plot_without_matplotlib_stops_before_training(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)    # import matplotlib now fails
    monkeypatch.setattr(Trainer, "run", lambda *a, **k: pytest.fail("trained despite the missing matplotlib"))
    with pytest.raises(SystemExit) as caught:
        cli.main(["--data", "synthetic", "--device", "cpu", "--plot", str(tmp_path / "x.png")])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "--plot needs matplotlib" in err and 'pip install -e ".[plot]"' in err
