"""Messages that read right for a newcomer: the EMA that --epochs leaves out, hints that name
no option already given (issue: a newcomer's first hour)."""
import pytest

from engine import cli
from engine.cli import cpu_estimate
from engine.recipe_files import find_recipe
from engine.results.session import learned_nothing_hint
from engine.training.train import RunResult, Trainer

SMALL = ["--data", "synthetic", "--synthetic-size", "512", "--device", "cpu", "--base-width", "8",
         "--batch-size", "128", "--final-eval-only"]


def untrained_runs(monkeypatch, seen: list):
    """Trainer.run as a run that learned nothing, noting what stderr held when it started."""
    def run(self, train, test, seed, capture=None, **kwargs):
        seen.append(self.config)
        return RunResult(seed=seed, accuracy=0.1, ema_accuracy=0.1, epochs=[{"train_loss": 2.3026}])
    monkeypatch.setattr(Trainer, "run", run)


def test_epochs_that_leave_no_room_for_the_ema_are_said_before_training(monkeypatch, capsys):
    seen = []
    untrained_runs(monkeypatch, seen)

    def first_print(*args, **kwargs):          # the warning is out before the network trains
        assert not seen
        return original(*args, **kwargs)
    original = Trainer.seconds_per_step
    monkeypatch.setattr(Trainer, "seconds_per_step", first_print)
    assert cli.main([*SMALL, "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "warning: --epochs 1 leaves no room for the recipe's EMA (its last 2 epochs" in err
    assert "no EMA network is trained" in err and "--epochs 3 or more keep the EMA" in err
    assert seen[0].ema_epochs == 0


def test_epochs_that_shorten_the_ema_say_so_and_an_explicit_ema_is_not_warned_about(monkeypatch, capsys):
    untrained_runs(monkeypatch, [])
    cli.main([*SMALL, "--epochs", "2"])
    assert "shortens the recipe's EMA from its last 2 epochs to the last 1" in capsys.readouterr().err
    cli.main([*SMALL, "--epochs", "2", "--ema-epochs", "1"])
    cli.main([*SMALL, "--epochs", "3"])
    assert "EMA" not in capsys.readouterr().err


def test_the_learned_nothing_hint_of_a_short_run_names_the_given_values_not_new_options(monkeypatch, capsys):
    untrained_runs(monkeypatch, [])
    assert cli.main([*SMALL, "--epochs", "1", "--lr", "0.5"]) == 1
    out = capsys.readouterr().out
    assert "LEARNED NOTHING in 1 run(s)" in out
    assert "it trained only 4 steps: raise --epochs from 1" in out
    assert "the --lr given (0.5) is not the recipe's" in out and "check --lr" not in out


def test_the_learned_nothing_hint_names_the_options_not_given():
    hint = learned_nothing_hint(find_recipe("seed").make_config())
    assert hint == "check --lr; check the data"                     # a full run: nothing to raise
    short = learned_nothing_hint(find_recipe("seed").make_config(train_images=1024))
    assert short.startswith("it trained only 20 steps: give more --epochs")


def test_the_cpu_estimate_suggests_only_what_was_not_given():
    seed = find_recipe("seed")
    assert "--base-width 16, fewer --epochs and --train-subset" in cpu_estimate(30.0, seed.make_config(), 1)
    small = seed.make_config(base_width=16, epochs=2)
    line = cpu_estimate(30.0, small, 1, given=["--base-width", "--epochs"])
    assert "--base-width" not in line and "--epochs" not in line and line.endswith(
        "; --train-subset 5000 --test-subset 1000 make quick CPU runs, a GPU the real ones")
    assert cpu_estimate(30.0, small, 1, given=["--base-width", "--epochs", "--train-subset"]).endswith(
        "; a GPU makes the real runs")


# ---- plots ----

def run_record(seed: int, accuracy: float, epochs: int = 2) -> dict:
    rows = [{"epoch": e + 1, "train_loss": 2.0 - e / 2, "train_accuracy": 0.3, "val_accuracy": accuracy - 0.01,
             "ema_val_accuracy": None if e < epochs - 1 else accuracy, "seconds": 1.0} for e in range(epochs)]
    return {"seed": seed, "status": "ok", "ema_accuracy": accuracy, "train_seconds": 3.0 + seed,
            "total_seconds": 4.0 + seed, "epochs": rows}


def legend_labels(ax) -> list[str]:
    legend = ax.get_legend()
    return [text.get_text() for text in legend.get_texts()] if legend else []


def all_text(ax) -> str:
    return " ".join(text.get_text() for text in ax.texts)


def test_the_94_line_is_in_a_legend_only_where_it_is_on_the_axis():
    pytest.importorskip("matplotlib")
    from engine.results.plots import draw_runs
    below = draw_runs([run_record(s, 0.60 + s / 100) for s in range(3)])
    for ax in below.axes[1:4]:
        assert not any("94%" in label for label in legend_labels(ax))
    assert "(the 94% target is right of this axis)" in below.axes[3].get_title()
    assert "(the 94% target is above this axis)" in below.axes[1].get_title()
    near = draw_runs([run_record(s, 0.935 + s / 100) for s in range(3)])
    histogram = near.axes[3]
    assert "94% target" in legend_labels(histogram)
    low, high = histogram.get_xlim()
    assert low <= 94 <= high


def test_one_run_draws_no_histogram_and_no_flat_axis():
    pytest.importorskip("matplotlib")
    from engine.results.plots import draw_runs
    figure = draw_runs([run_record(0, 0.6123)])
    spread = figure.axes[3]
    assert not spread.patches and not spread.axison                  # no one-bar histogram
    assert "61.23%" in all_text(spread) and "no spread" in all_text(spread)
    for ax in figure.axes:
        if ax.axison:
            (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
            assert x1 - x0 >= 0.5 and y1 - y0 > 0.01
    assert figure.axes[4].get_ylim()[0] == 0


def test_the_plot_title_names_the_recipe_and_the_runs_asked(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from engine.results import plots
    titles, draw = [], plots.draw_runs
    monkeypatch.setattr(plots, "draw_runs", lambda runs, title="": titles.append(title) or draw(runs, title))
    untrained_runs(monkeypatch, [])
    cli.main([*SMALL, "--epochs", "3", "--recipe", "seed", "--plot", str(tmp_path / "runs.png"), "--quiet"])
    assert titles and titles[0].startswith("recipe seed | synthetic (512 train images, seed 0) | ")
    assert titles[0].endswith("| 1 run(s)")
