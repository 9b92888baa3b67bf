"""Small things a researcher trips on: `evaluate` over several checkpoints or a glob, the
bar saying when it evaluates, plots fitted to close runs, the CPU time said up front."""
import io
import json
import math

import pytest
import torch

from engine.results.checkpoint import save_checkpoint
from engine.cli import checkpoint_paths, cpu_estimate, main
from engine.training.data import CifarLoader, make_synthetic
from engine.training.ops import make_ops
from engine.results.plots import fitted_range
from engine.results.progress import Progress
from engine.recipes import make_config
from engine.training.train import Trainer


def test_evaluate_takes_several_checkpoints_or_a_glob(tmp_path, capsys):
    config = make_config("seed", train_images=256, batch_size=128, base_width=4, epochs=2)
    data = {"data": "synthetic", "synthetic_size": 256, "seed": 0}
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = config.build_network(make_ops("eager"), "cpu", torch.float32)
        save_checkpoint(tmp_path / f"m-seed{seed}.pt", model, config, data=data, seed=seed)
    out = tmp_path / "both.json"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "m-*.pt"), "--device", "cpu", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("checkpoint: ") == 2 and "m-seed1.pt | seed 1" in text
    records = json.loads(out.read_text())["checkpoints"]
    assert [record["trained"]["seed"] for record in records] == [0, 1]
    with pytest.raises(ValueError, match="the pattern matches no file"):
        checkpoint_paths([str(tmp_path / "none-*.pt")])
    assert checkpoint_paths([str(tmp_path / "m-seed1.pt"), str(tmp_path / "m-*.pt")]) == [
        str(tmp_path / "m-seed1.pt"), str(tmp_path / "m-seed0.pt")]


def test_the_bar_says_when_an_epoch_is_being_evaluated():
    pytest.importorskip("tqdm")
    progress = Progress("bar", file=io.StringIO())
    progress.start_run(0, 1, seed=0, steps=4, epochs=2)
    progress.step(1)
    assert "evaluating" not in progress.bar.desc
    progress.step(2)                                    # the first epoch's last step
    assert progress.bar.desc.endswith("run 1/1 epoch 1/2 evaluating")
    progress.epoch({"epoch": 1, "train_loss": 1.5, "train_accuracy": 0.5, "val_accuracy": 0.6,
                    "ema_val_accuracy": None, "seconds": 1.0})
    assert progress.bar.desc.endswith("epoch 2/2") and "loss=1.5000" in str(progress.bar)
    progress.close()


def test_plot_axes_are_fitted_to_close_runs():
    assert fitted_range([93.1, 93.3]) == pytest.approx((93.05, 93.35))        # 0.05 minimum margin each side
    assert fitted_range([90.0, 95.0]) == pytest.approx((89.5, 95.5))          # 10% of the span
    assert fitted_range([93.2, 93.2, float("nan")]) == pytest.approx((93.15, 93.25))


def test_plot_has_a_time_panel(tmp_path):
    pytest.importorskip("matplotlib")
    from engine.results.plots import plot_runs
    row = {"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.9, "val_accuracy": 0.931, "ema_val_accuracy": 0.932,
           "seconds": 1.0}
    runs = [{"seed": s, "status": "ok", "ema_accuracy": 0.931 + s / 1000, "train_seconds": 3 + s / 10,
             "total_seconds": 4 + s / 10, "epochs": [row]} for s in range(3)]
    path = plot_runs(runs, tmp_path / "runs.png")
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_a_cpu_run_says_how_long_it_will_take_before_it_starts():
    config = make_config("seed", train_images=256, batch_size=128, base_width=4, epochs=2)
    data = make_synthetic(256, seed=0)
    trainer = Trainer(config, make_ops("eager"), "cpu", torch.float32)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    seconds = trainer.seconds_per_step(train)
    assert 0 < seconds < math.inf           # a measured time: no upper bound a busy machine could cross
    assert cpu_estimate(30.0, make_config("seed"), runs=2) == (
        "on this CPU: about 30 s per step, so about 485 min of training per run, 970 min for all 2 "
        "(evaluations extra); --base-width 16, fewer --epochs and --train-subset 5000 --test-subset 1000 make "
        "quick CPU runs, a GPU the real ones")
    assert "; --base-width" not in cpu_estimate(0.01, config, runs=1)


def test_the_bar_shows_the_current_epochs_running_loss():
    """Trainer.run hands the bar the epoch's running mean loss as it goes (each step on the
    CPU); the epoch's last value is the epoch's train_loss, and the bar shows it."""
    config = make_config("seed", train_images=256, batch_size=64, base_width=4, epochs=2, ema_epochs=0)
    data = make_synthetic(256, seed=0, test_size=64)
    train = CifarLoader(data.train_images, data.train_labels, config, True, "cpu", torch.float32)
    test = CifarLoader(data.test_images, data.test_labels, config, False, "cpu", torch.float32)
    trainer = Trainer(config, make_ops("eager"), "cpu", torch.float32)
    progress = Progress("bar", file=io.StringIO())
    progress.start_run(0, 1, seed=0, steps=config.total_steps, epochs=config.epochs)
    seen, rows, bars = [], [], []

    def on_loss(mean):
        seen.append(mean)
        progress.loss(mean)
        bars.append(str(progress.bar))

    trainer.run(train, test, 0, on_epoch=rows.append, on_loss=on_loss)
    progress.close()
    steps = config.steps_per_epoch
    assert len(seen) == config.total_steps == 2 * steps
    for epoch, row in enumerate(rows):
        assert seen[(epoch + 1) * steps - 1] == pytest.approx(row["train_loss"], rel=1e-6)
    assert seen[0] != pytest.approx(seen[steps - 1], rel=1e-6)      # a running mean, not the last epoch's
    assert f"loss={seen[1]:.4f}" in bars[1]
