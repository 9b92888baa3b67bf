"""`run.py tune` (engine/results/tune.py): the search space and its refusals, a study on tiny
synthetic data end to end (continued by the same command, its recipe file, pictures and the
comparison on fresh seeds), two worker processes on one SQLite store, pruning and what it
saved, two objectives, the program without Optuna; and a sweep's points against training
PFLOP (engine/results/sweep.py train_flops, plots.plot_points)."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import poll_until
import torch

from engine.command import main
from engine.recipe_files import find_recipe
from engine.results.tune import TuneError, parse_space

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic", "--synthetic-size", "256", "--device", "cpu", "--base-width", "4",
        "--batch-size", "64", "--epochs", "2", "--quiet"]
SPACE = ["--space", "lr=0.001..0.01:log", "--space", "ema_decay=0.5..0.9"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
PNG = b"\x89PNG"


def optuna_or_skip():
    return pytest.importorskip("optuna")


def tune(tmp_path, *extra, json_name="study.json"):
    return main(["tune", *TINY, *SPACE, "--json", str(tmp_path / json_name), *extra])


def load(path):
    with open(path) as file:
        return json.load(file)


# --------------------------------------------------------------------------- the space
def test_the_space_takes_ranges_log_scales_whole_numbers_and_choices():
    seed = find_recipe("seed")
    lr, epochs, decay, cutout, flip, smoothing = parse_space(
        ["lr=0.5..5:log", "epochs=8..12", "ema-decay=0.9..0.99", "cutout=0,8,12", "tta_flip=true,false",
         "label_smoothing=0..1:int"], seed)
    assert (lr.low, lr.high, lr.log, lr.integer) == (0.5, 5.0, True, False)
    assert (epochs.low, epochs.high, epochs.integer) == (8, 12, True)          # an int field: whole numbers
    assert decay.name == "ema_decay" and not decay.integer
    assert cutout.choices == (0, 8, 12) and flip.choices == (True, False)
    assert smoothing.integer and (smoothing.low, smoothing.high) == (0, 1)


@pytest.mark.parametrize("space, message", [
    ("nosuch=1..2", "recipe seed has no setting nosuch"),
    ("lr=1..1", "an empty range"),
    ("lr=5..0.5", "an inverted range (LOW above HIGH); write lr=0.5..5"),
    ("lr=0..1:log", "a log range must lie above zero"),
    ("lr=-1..1:log", "a log range must lie above zero"),
    ("cutout=4", "one value is no choice"),
    ("lr=1..2:sqrt", "unknown :sqrt"),
    ("lr", "write NAME=LOW..HIGH"),
    ("epochs=1.5..3", "must be whole numbers"),
    ("tta_flip=0..1", "a range needs a number field"),
])
def test_a_bad_space_is_named(space, message):
    with pytest.raises(TuneError, match="^--space ") as raised:
        parse_space([space], find_recipe("seed"))
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("extra, message", [
    (["--space", "nosuch=1..2"], "recipe seed has no setting nosuch"),
    (["--space", "lr=5..0.5"], "an inverted range"),
    (["--space", "lr=0..1:log"], "a log range must lie above zero"),
    (["--space", "lr=0.1..2", "--lr", "1"], "--space lr=0.1..2 and --lr both set lr"),
    (["--space", "lr=0.1..2", "--set", "lr=1"], "--space lr=0.1..2 and --set lr both set lr"),
    (["--space", "ema_decay=0.5..1.5"], "ema_decay=1.5 is not valid"),
    (["--space", "lr=0.1..1", "--set", "cutout=0,4"], "tune fixes one value"),
    (["--space", "lr=0.1..1", "--recipe", "seed,hiverge"], "tune searches one recipe"),
    (["--space", "lr=0.1..1", "--objective", "result+seconds", "--pruner", "median"], "works with one objective"),
    (["--space", "lr=0.1..1", "--storage", "nosuchdatabase://x/y"], "--storage nosuchdatabase://x/y: cannot be opened"),
    (["--space", "lr=0.1..1", "--storage", "sqlite:////no/such/folder/study.db"], "cannot be opened"),
    (["--space", "lr=0.1..1", "--join-timeout", "5"], "--join-timeout does not apply to tune"),
])
def test_every_bad_input_is_one_line(tmp_path, capsys, extra, message):
    optuna_or_skip()
    with pytest.raises(SystemExit) as exit:
        main(["tune", *TINY, "--json", str(tmp_path / "s.json"), *extra])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "Traceback" not in err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], err
    assert not (tmp_path / "s.json").exists()


def test_a_study_made_by_another_recipe_is_refused(tmp_path, capsys):
    optuna = optuna_or_skip()
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    study = optuna.create_study(storage=url, study_name="lr", direction="maximize")
    study.set_user_attr("setup", {"recipe": "airbench94-muon"})
    with pytest.raises(SystemExit):
        tune(tmp_path, "--storage", url, "--study-name", "lr")
    err = capsys.readouterr().err
    assert "study lr in sqlite:///" in err and "was made by recipe airbench94-muon, not seed" in err


def test_a_study_made_with_other_runs_per_trial_is_refused(tmp_path, capsys):
    optuna_or_skip()
    assert tune(tmp_path, "--trials", "1", "--runs", "0", "--runs-per-trial", "1") == 0
    with pytest.raises(SystemExit):
        tune(tmp_path, "--trials", "2", "--runs", "0", "--runs-per-trial", "2")
    assert "was made with --runs-per-trial 1, not 2" in capsys.readouterr().err


# --------------------------------------------------------------------------- a whole study
@pytest.mark.slow
def test_a_study_continues_writes_its_recipe_and_is_confirmed_on_fresh_seeds(tmp_path, capsys):
    optuna = optuna_or_skip()
    assert tune(tmp_path, "--trials", "2", "--runs", "0") == 0          # a worker that only runs trials
    assert not (tmp_path / "study.json").exists()
    storage = f"sqlite:///{tmp_path / 'study.optuna.db'}"
    assert len(optuna.load_study(study_name="study", storage=storage).trials) == 2
    capsys.readouterr()

    assert tune(tmp_path, "--trials", "3", "--runs", "2") in (0, 1)     # the same command continues it (1: a
                                                                        # comparison run learned nothing)
    out = capsys.readouterr().out
    result = load(tmp_path / "study.json")
    trials = result["trials"]
    assert [t["number"] for t in trials] == [0, 1, 2] and all(t["state"] == "COMPLETE" for t in trials)
    for t in trials:
        assert [run["seed"] for run in t["runs"]] == t["seeds"] == [0, 1]
        assert t["summary"]["runs"] == 2 and len(t["summary"]["ema_accuracy_ci95"]) == 2
        assert t["values"][0] == pytest.approx(sum(run["ema_accuracy"] for run in t["runs"]) / 2)
    best = max(trials, key=lambda t: t["values"][0])
    assert result["best_trial"] == best["number"] and result["best_settings"]["lr"] == best["params"]["lr"]

    tuned = find_recipe(result["tuned_recipe"])                        # a recipe file --recipe runs
    assert tuned.name == "seed-tuned" and tuned.file == str(tmp_path / "study.tuned.py")
    assert json.loads(json.dumps(tuned.make_config(train_images=256).to_dict())) == best["config"]

    confirmation = result["confirmation"]
    assert confirmation["seeds"] == [2, 3]                              # not the trials' seeds 0, 1
    runs = load(tmp_path / "study.confirm.json")["runs"]
    assert sorted(run["seed"] for run in runs) == [2, 2, 3, 3]
    assert [entry["recipe"] for entry in confirmation["comparison"]["entries"]] == ["seed", "seed-tuned"]
    assert "differences from [0] (Welch's t-test" in out                # as `compare` prints it
    for picture in ("history", "importances"):
        assert (tmp_path / f"study.{picture}.png").read_bytes()[:4] == PNG, result["pictures"][picture]

    assert main(["--recipe", result["tuned_recipe"], *TINY]) in (0, 1)      # it runs as a recipe file (1: it
    assert "summary over 1 run(s)" in capsys.readouterr().out                # learned nothing on tiny data)


@pytest.mark.slow
def test_two_objectives_give_a_pareto_front(tmp_path):
    optuna_or_skip()
    assert tune(tmp_path, "--objective", "result+seconds", "--sampler", "random", "--trials", "3",
                "--runs-per-trial", "1", "--runs", "1") in (0, 1)     # 1: a comparison run learned nothing
    result = load(tmp_path / "study.json")
    complete = {t["number"]: t for t in result["trials"] if t["state"] == "COMPLETE"}
    front = result["pareto_front"]
    assert front and set(front) <= set(complete) and result["best_trial"] in front
    for number in front:       # no trial is better in both
        a = complete[number]["values"]
        assert not any(b["values"][0] >= a[0] and b["values"][1] <= a[1] and b["values"] != a
                       for b in complete.values())
    assert (tmp_path / "study.pareto.png").read_bytes()[:4] == PNG


def trials_in(optuna, storage: str, state: str) -> list:
    """The study's trials in `state` (none while the study is not created yet)."""
    try:
        return optuna.load_study(study_name="study", storage=storage).get_trials(
            states=(getattr(optuna.trial.TrialState, state),))
    except Exception:             # not created yet
        return []


# --------------------------------------------------------------------------- two workers
def process_state(pid: int) -> str:
    """The state letter of process `pid` in /proc (T: stopped, Z: ended), X once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "X"


def store_unlocked(path) -> bool:
    """Whether a writer could take the SQLite file `path` now, asked without waiting."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA busy_timeout = 0")
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        connection.close()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads process states from /proc (Linux)")
def test_two_worker_processes_share_one_sqlite_store(tmp_path):
    """Worker A takes a trial and is stopped (SIGSTOP) while it runs; worker B (as torchrun's
    rank 1 would be) runs the others on the same store; A resumes and finishes its own. Every
    trial counted once."""
    optuna = optuna_or_skip()
    command = [sys.executable, str(ROOT / "run.py"), "tune", *TINY, *SPACE, "--pruner", "none",
               "--json", str(tmp_path / "study.json")]
    storage = f"sqlite:///{tmp_path / 'study.optuna.db'}"
    a = subprocess.Popen([*command, "--runs", "0", "--trials", "1"], env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    stopped = False
    try:
        poll_until(lambda: a.poll() is not None or bool(trials_in(optuna, storage, "RUNNING")), 0.05)
        # Stopped in the middle of a write, A would hold the store's lock for as long as it stays
        # stopped and lock B out: stop it again until it is stopped outside one.
        while a.poll() is None:
            a.send_signal(signal.SIGSTOP)
            poll_until(lambda: process_state(a.pid) in "TtZX")
            if process_state(a.pid) not in "Tt":           # A ended first
                break
            if store_unlocked(tmp_path / "study.optuna.db"):
                stopped = True
                break
            a.send_signal(signal.SIGCONT)
            poll_until(lambda: process_state(a.pid) not in "Tt")
        torchrun_rank_1 = {**ENV, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}   # B: a rank above 0
        b = subprocess.Popen([*command, "--trials", "3"], env=torchrun_rank_1, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
        out_b = b.communicate()[0].decode()
    finally:
        if stopped:
            a.send_signal(signal.SIGCONT)
    out_a = a.communicate()[0].decode()
    assert a.returncode == 0, out_a
    assert b.returncode == 0, out_b
    trials = optuna.load_study(study_name="study", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    workers = [int(t.user_attrs["worker"].split(":")[-1]) for t in trials]
    assert workers[0] == a.pid and set(workers) == {a.pid, b.pid}
    assert [t.user_attrs.get("rank") for t in trials] == [None, 1, 1]
    assert "this worker ran 2 trial(s)" in out_b and not (tmp_path / "study.json").exists()   # rank 1 confirms nothing
    if stopped:                                       # A's trial ran while B ran its two
        assert trials[0].datetime_complete > max(t.datetime_complete for t in trials[1:])


@pytest.mark.slow
def test_ctrl_c_keeps_every_finished_trial_and_the_same_command_continues(tmp_path):
    optuna = optuna_or_skip()
    from engine.results.tune import counted
    talkative = [arg for arg in TINY if arg != "--quiet"]           # its trial lines say where it is
    command = [sys.executable, str(ROOT / "run.py"), "tune", *talkative, *SPACE, "--runs", "0", "--pruner", "none",
               "--json", str(tmp_path / "study.json")]
    storage = f"sqlite:///{tmp_path / 'study.optuna.db'}"
    worker = subprocess.Popen([*command, "--trials", "50"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True,      # Ctrl-C as in a terminal, even where the suite's process ignores it
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in worker.stdout:                 # trial 1 finished and trial 2 began: cut trial 2
            if line.startswith("trial 2 of "):
                break
        worker.send_signal(signal.SIGINT)
        out, err = worker.communicate()
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 130, err
    study = optuna.load_study(study_name="study", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    cut = [t for t in study.trials if t.state.name != "COMPLETE"]
    assert complete and all(t.state.name == "FAIL" and t.user_attrs.get("interrupted") for t in cut), \
        [(t.number, t.state.name, t.user_attrs) for t in cut]
    assert f"the study keeps its {len(complete)} finished trial(s)" in err and "Traceback" not in err
    assert counted(optuna, study) == len(complete)                    # the cut trial does not count
    assert main(["tune", *TINY, *SPACE, "--runs", "0", "--json", str(tmp_path / "study.json"),
                 "--trials", str(len(complete) + 1)]) == 0            # one more trial, and it stops
    study = optuna.load_study(study_name="study", storage=storage)
    assert len([t for t in study.trials if t.state.name == "COMPLETE"]) == len(complete) + 1


# --------------------------------------------------------------------------- pruning
class StubTrial:
    """Just what Trials.trial asks of an Optuna trial; prunes at step `prune_at`."""

    def __init__(self, prune_at: int):
        self.number, self.prune_at, self.user_attrs, self.reported = 0, prune_at, {}, []

    def suggest_float(self, name, low, high, log=False):
        return 0.003 if name == "lr" else low

    def report(self, value, step):
        self.reported.append(step)

    def should_prune(self):
        return self.reported[-1] == self.prune_at

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


@pytest.mark.parametrize("prune_at", [1, 3, 4])
def test_a_pruned_trial_stops_at_once_and_says_what_it_saved(prune_at):
    optuna = optuna_or_skip()
    from engine.results.sweep import Setups
    from engine.results.tune import Dimension, Trials
    from engine.training.data import load_cifar10
    from engine.training.ops import make_ops

    data = load_cifar10("synthetic", False, 256, seed=0)
    recipe = find_recipe("seed")
    make_config = lambda settings: recipe.make_config(train_images=256, base_width=4, batch_size=64, epochs=2,
                                                      ema_epochs=1, **settings)
    setups = Setups(data, make_ops("eager"), torch.device("cpu"), torch.float32, False, "default", warm_up=False)
    trials = Trials(optuna, None, [Dimension("lr", "lr=0.001..0.01", 0.001, 0.01, log=True)], make_config, setups,
                    runs=2, first_seed=0, total=1, two_objectives=False, pruning=True, every_epoch=True, quiet=True,
                    worker="test")
    trial = StubTrial(prune_at)
    if prune_at == 4:                                 # the last step: pruning would save nothing, lose the value
        assert trials.trial(trial) == trial.user_attrs["summary"]["mean_ema_accuracy"]
        assert trial.reported == [1, 2, 3, 4] and "pruned" not in trial.user_attrs
        return
    with pytest.raises(optuna.TrialPruned):
        trials.trial(trial)
    assert trial.reported == list(range(1, prune_at + 1))             # run r, epoch e: step 2r + e
    pruned = trial.user_attrs["pruned"]
    assert (pruned["step"], pruned["epochs_trained"], pruned["epochs_saved"]) == (prune_at, prune_at, 4 - prune_at)
    assert pruned["seconds_saved"] > 0
    assert len(trial.user_attrs["runs"]) == (prune_at - 1) // 2       # the runs that finished are kept


@pytest.mark.parametrize("name", ["median", "hyperband"])
def test_no_trial_is_pruned_before_the_last_epoch_of_its_first_run(name):
    optuna = optuna_or_skip()
    from engine.results.tune import make_pruner
    epochs = 3
    study = optuna.create_study(direction="maximize", pruner=make_pruner(optuna, name, epochs))
    for _ in range(6):                                # good trials: 0.5 at every step of two runs
        trial = study.ask()
        for step in range(1, 2 * epochs + 1):
            trial.report(0.5, step)
            assert not trial.should_prune()           # (hyperband keeps its rungs when asked)
        study.tell(trial, 0.5)
    bad = study.ask()                                 # far behind from the first epoch on
    prunable = []
    for step in range(1, 2 * epochs + 1):
        bad.report(0.1, step)
        prunable.append(bad.should_prune())
    assert prunable[:epochs - 1] == [False] * (epochs - 1) and any(prunable[epochs - 1:])


# --------------------------------------------------------------------------- without Optuna
@pytest.mark.slow
def test_without_optuna_tune_says_how_to_install_it_and_the_rest_is_unchanged(tmp_path):
    script = f"""
import importlib.abc, json, sys
class NoOptuna(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "optuna" or name.startswith("optuna."):
            raise ModuleNotFoundError("No module named 'optuna'", name="optuna")
sys.meta_path.insert(0, NoOptuna())
from engine.command import main
codes = {{}}
for key, argv in {{"help": ["tune", "--help"],
                  "tune": ["tune", *{TINY!r}, "--space", "lr=0.1..1", "--json", {str(tmp_path / 's.json')!r}],
                  "train": {TINY!r}}}.items():
    try:
        codes[key] = main(argv)
    except SystemExit as exit:
        codes[key] = exit.code
print(json.dumps(codes))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True)
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    assert codes["help"] == 0 and codes["tune"] == 2, proc.stderr
    assert codes["train"] in (0, 1) and "summary over 1 run(s)" in proc.stdout, proc.stderr   # 1: learned nothing
    assert "tune needs Optuna, which is not installed: pip install 'cifar-speedrun[tune]'" in proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- a sweep against PFLOP
def test_training_flops_are_counted_on_the_meta_device():
    from engine.results.sweep import train_flops
    seed = find_recipe("seed")
    config = seed.make_config()
    # docs/recipe.md: about 826 GFLOP per 512-image step, forward and backward
    assert train_flops(config) / config.total_steps == pytest.approx(825.6e9, rel=1e-3)
    twice = seed.make_config(epochs=config.epochs * 2)
    assert train_flops(twice) == pytest.approx(2 * train_flops(config), rel=1e-3)


@pytest.mark.slow
def test_a_sweep_plot_draws_each_point_against_its_training_pflop(tmp_path):
    plot = tmp_path / "sweep.png"
    argv = [*TINY, "--set", "epochs=1,2", "--runs", "1", "--plot", str(plot), "--json", str(tmp_path / "s.json")]
    argv.remove("--epochs"), argv.remove("2")
    assert main(argv) in (0, 1)                       # 1: no run learned anything on tiny data
    points = load(tmp_path / "s.json")["points"]
    assert points[1]["train_pflop"] == pytest.approx(2 * points[0]["train_pflop"])
    assert plot.read_bytes()[:4] == PNG and (tmp_path / "sweep.points.png").read_bytes()[:4] == PNG
