"""Sweeps in one process (`--set NAME=V1,V2`, `--recipe A,B`): the grid, typed values and
their errors, compiled graphs reused across a learning-rate sweep, and the command end to
end on tiny synthetic data (every point's runs in the JSON, the comparison with the first
point, Ctrl-C keeping the finished points, both recipes in one command)."""
import json
import re

import pytest
import torch

import engine.training.train
from engine.results.checkpoint import read_checkpoint
from engine.cli import build_parser, main, recipe_config
from engine.training.data import make_synthetic
from engine.training.ops import make_ops
from engine.recipe_files import find_recipe
from engine.recipes import make_config
from engine.results.sweep import Setups, compiled_graphs, parse_settings, sweep_points

TINY = ["--data", "synthetic", "--synthetic-size", "256", "--device", "cpu", "--base-width", "4", "--epochs", "2",
        "--batch-size", "128", "--final-eval-only", "--quiet"]


def test_the_grid_is_every_combination_recipes_outermost():
    seed, muon = find_recipe("seed"), find_recipe("airbench94-muon")
    settings = parse_settings(["epochs=2,3", "batch_size=128"], [seed, muon])
    assert settings == [("epochs", [2, 3]), ("batch_size", [128])]
    points = sweep_points([seed, muon], settings)
    assert [(p.recipe.name, p.settings) for p in points] == [
        ("seed", {"epochs": 2, "batch_size": 128}), ("seed", {"epochs": 3, "batch_size": 128}),
        ("airbench94-muon", {"epochs": 2, "batch_size": 128}), ("airbench94-muon", {"epochs": 3, "batch_size": 128})]
    assert points[0].label(with_recipe=True) == "seed epochs=2 batch_size=128"
    assert parse_settings(["flip=false", "ema-decay=0.9"], [seed]) == [("flip", [False]), ("ema_decay", [0.9])]


@pytest.mark.parametrize("args, message", [
    (["--set", "nosuch=1"], "--set nosuch: recipe seed has no setting nosuch; its settings: "),
    (["--set", "lr=fast"], "--set lr=fast: lr takes float values"),
    (["--set", "lr"], "--set lr: write NAME=VALUE or NAME=V1,V2,..."),
    (["--set", "lr=0.1", "--set", "lr=0.2"], "--set lr is given twice"),
    (["--lr", "0.1", "--set", "lr=0.2,0.3"], "--lr and --set lr set the same thing; give it once"),
    (["--set", "mean=0.5"], "--set mean: a tuple setting cannot be set on the command line"),
    (["--recipe", "seed,airbench94-muon", "--set", "lr=0.1"], "recipe airbench94-muon has no setting lr"),
    (["--set", "lr=0.002,-1"], "lr"),
    (["--set", "lable_smoothing=0.1"], "--set lable_smoothing: recipe seed has no setting lable_smoothing "
                                       "(did you mean label_smoothing?); its settings: "),
    (["--recipe", "hiverge", "--set", "muon_rl=0.1"], "has no setting muon_rl (did you mean muon_lr?)"),
    (["--recipe", "hiverge", "--set", "lr=0.1"], "has no setting lr (did you mean muon_lr or head_lr or bias_lr?)"),
    (["--recipe", "hiverge", "--lr", "0.1"], "--lr does not apply to --recipe hiverge; drop it, and use --set "
                                             "muon_lr=V instead of --lr (its learning rates, one per group: "
                                             "muon_lr 0.205, head_lr 0.5415, bias_lr 0.0573)"),
    (["--recipe", "seed,hiverge", "--weight-decay", "0.1", "--momentum", "0.8"],
     "--weight-decay, --momentum do not apply to --recipe hiverge; drop them, and use --set "
     "weight_decay_per_image=V instead of --weight-decay (its weight decay, per training image: "
     "weight_decay_per_image 1.042e-06); --set muon_momentum=V instead of --momentum (its momenta, "
     "Muon's and SGD's: muon_momentum 0.655, sgd_momentum 0.825)"),
])
def test_bad_settings_are_refused_before_the_data(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--data", "/nonexistent/data.npz", "--device", "cpu", *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_learning_rate_sweep_reuses_the_compiled_graphs(monkeypatch):
    """With torch.compile (its eager backend: the graphs are what is counted, not the code
    generated from them), changing the learning rate or the EMA decay compiles nothing
    new; changing the weight decay, a constant in the compiled update, does."""
    torch._dynamo.reset()
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **options: real_compile(fn, backend="eager",
                                                                                        **options))
    data = make_synthetic(256, seed=0)
    base = make_config("seed", train_images=256, batch_size=128, base_width=4, epochs=2)
    setups = Setups(data, make_ops("eager"), torch.device("cpu"), torch.float32, compile=True,
                    compile_mode="default", warm_up=True)
    trainer, train, test, note = setups.get(base)
    assert note.startswith("warm-up and compilation: ")
    first = trainer.run(train, test, seed=0)
    graphs = compiled_graphs()
    assert graphs > 0

    same_trainer, same_train, same_test, note = setups.get(base.replace(lr=base.lr / 3, ema_decay=0.9))
    assert (same_trainer, same_train, same_test) == (trainer, train, test)
    assert note.endswith("; nothing compiled again")
    second = trainer.run(train, test, seed=0)
    assert compiled_graphs() == graphs                   # the learning rate is a tensor in the graphs
    assert second.epochs[-1]["train_loss"] != first.epochs[-1]["train_loss"]     # and it did change

    _, _, _, note = setups.get(base.replace(weight_decay=base.weight_decay / 2))
    assert compiled_graphs() > graphs and "graph(s) compiled again for this point" in note


def read_json(path):
    return json.loads(path.read_text())


def test_a_two_point_sweep_keeps_every_run_with_its_point_and_compares_with_the_first(tmp_path, capsys):
    out, save = tmp_path / "sweep.json", tmp_path / "m.pt"
    status = main([*TINY, "--set", "lr=0.004,0.002", "--runs", "2", "--json", str(out), "--save", str(save)])
    assert status in (0, 1)         # 1 only if no run learned anything (tiny data)
    text = capsys.readouterr().out
    assert "sweep over 2 points, 2 run(s) each" in text
    assert "point 1  lr=0.004" in text and "point 2  lr=0.002" in text and "vs point 1: result " in text
    report = read_json(out)
    assert report["complete"] and not report["interrupted"]
    assert [(run["point"], run["seed"]) for run in report["runs"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [point["settings"] for point in report["points"]] == [{"lr": 0.004}, {"lr": 0.002}]
    assert [point["config"]["lr"] for point in report["points"]] == [0.004, 0.002]
    assert [point["summary"]["runs"] for point in report["points"]] == [2, 2]
    assert report["sweep"] == {"runs_per_point": 2, "recipes": ["seed"], "settings": {"lr": [0.004, 0.002]}}
    comparison = report["comparisons"][0]
    accuracies = [[run["ema_accuracy"] for run in report["runs"] if run["point"] == k] for k in (0, 1)]
    assert comparison["point"] == 1
    assert comparison["ema_accuracy"]["difference"] == pytest.approx(sum(accuracies[1]) / 2 - sum(accuracies[0]) / 2)
    for point in (1, 2):
        for seed in (0, 1):
            saved = read_checkpoint(tmp_path / f"m-point{point}-seed{seed}.pt")
            assert saved["config"]["lr"] == [0.004, 0.002][point - 1] and saved["seed"] == seed


def test_one_value_of_set_is_a_plain_override():
    args = build_parser().parse_args(["--set", "lr=0.003", "--set", "label_smoothing=0.1", "--epochs", "3"])
    recipe = find_recipe(args.recipe)
    points = sweep_points([recipe], parse_settings(args.set, [recipe]))
    assert len(points) == 1                                  # not a sweep
    config = recipe_config(args, recipe, 1024, points[0].settings)
    assert (config.lr, config.label_smoothing, config.epochs, config.ema_epochs) == (0.003, 0.1, 3, 2)


@pytest.mark.slow
def test_ctrl_c_in_a_sweep_keeps_the_finished_points(tmp_path, monkeypatch, capsys):
    real_run, calls = engine.training.train.Trainer.run, []

    def run_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:              # the first run of the second point
            raise KeyboardInterrupt
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(engine.training.train.Trainer, "run", run_then_interrupt)
    out = tmp_path / "sweep.json"
    assert main([*TINY, "--set", "lr=0.004,0.002", "--runs", "2", "--json", str(out)]) == 130
    report = read_json(out)
    assert report["final"] and report["interrupted"] and report["complete"] is False
    assert [run["point"] for run in report["runs"]] == [0, 0]
    assert [point["summary"]["runs"] for point in report["points"]] == [2, 0]
    assert "point 2  lr=0.002  0 run(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_both_recipes_in_one_command(tmp_path, capsys):
    out, save = tmp_path / "both.json", tmp_path / "m.pt"
    main([*TINY, "--recipe", "seed,airbench94-muon", "--json", str(out), "--save", str(save)])
    report = read_json(out)
    assert [(p["recipe"], p["label"], p["reported_as"]) for p in report["points"]] == [
        ("seed", "seed", "EMA accuracy"), ("airbench94-muon", "airbench94-muon", "accuracy")]
    assert [run["point"] for run in report["runs"]] == [0, 1]
    assert all(run["status"] == "ok" for run in report["runs"])
    assert report["points"][1]["config"]["muon_lr"] == make_config("airbench94-muon").muon_lr
    assert read_checkpoint(tmp_path / "m-point2-seed0.pt")["recipe"] == "airbench94-muon"
    assert "point 2  airbench94-muon" in capsys.readouterr().out


# Each point's made-up result, by its learning rate: every difference between two points is its own
# number, so a comparison with any point but the first gives a difference the test does not expect.
POINT_RESULTS = {0.001: (0.50, 1.0), 0.002: (0.60, 2.0), 0.003: (0.80, 4.0), 0.004: (0.55, 8.0)}


def results_by_learning_rate(self, train, test, seed, on_epoch=None, **kwargs):
    """A stand-in for Trainer.run: an instant result set by the point's learning rate (and a
    little by the seed, so that each point has a spread)."""
    from engine.training.train import RunResult
    accuracy, seconds = POINT_RESULTS[self.config.lr]
    accuracy += seed / 1000
    row = {"epoch": 1, "train_loss": 1.0, "train_accuracy": accuracy, "val_accuracy": accuracy,
           "ema_val_accuracy": accuracy, "seconds": seconds}
    on_epoch(row)
    return RunResult(seed=seed, accuracy=accuracy, ema_accuracy=accuracy, train_seconds=seconds + seed / 100,
                     total_seconds=seconds + 1, epochs=[row])


def test_every_point_of_a_longer_sweep_is_compared_with_the_first(tmp_path, monkeypatch, capsys):
    """Four points: the JSON's comparisons and each "vs point 1" line hold that point's runs
    against point 1's, never against the previous point or another one."""
    monkeypatch.setattr(engine.training.train.Trainer, "run", results_by_learning_rate)
    out = tmp_path / "sweep.json"
    main([*TINY, "--set", "lr=0.001,0.002,0.003,0.004", "--runs", "2", "--json", str(out)])
    report = read_json(out)
    first_accuracy, first_seconds = POINT_RESULTS[0.001]
    expected = [(POINT_RESULTS[lr][0] - first_accuracy, POINT_RESULTS[lr][1] - first_seconds)
                for lr in (0.002, 0.003, 0.004)]
    assert [(c["point"], c["baseline"]) for c in report["comparisons"]] == [(1, 0), (2, 0), (3, 0)]
    for comparison, (accuracy, seconds) in zip(report["comparisons"], expected):
        assert comparison["ema_accuracy"]["difference"] == pytest.approx(accuracy)
        assert comparison["train_seconds"]["difference"] == pytest.approx(seconds)
        assert comparison["total_seconds"]["difference"] == pytest.approx(seconds)
    shown = re.findall(r"vs point 1: result ([+-]\d+\.\d+)\S* .*; training ([+-]\d+\.\d+) s",
                       capsys.readouterr().out)
    assert [(float(a), float(s)) for a, s in shown] == [(pytest.approx(100 * a), pytest.approx(s))
                                                        for a, s in expected]
