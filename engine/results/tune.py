"""`run.py tune`: search a recipe's numbers with Optuna, and prove the best point on fresh seeds.

`--space NAME=LOW..HIGH[:log][:int]` (or `NAME=A,B,C`) names the fields searched. Each
trial is one point of the sweep machinery (engine.results.sweep.Setups: the data loaded
once, one Trainer per recipe whose compiled functions are reused, new graphs only for new
shapes or constants) trained `--runs-per-trial` times on the seeds --seed, --seed+1, ...
(the same seeds in every trial, so trials differ by their settings alone). A trial's value
is the mean result of its runs; its user attributes keep the runs, their summary (95%
interval of the mean) and, for a pruned trial, what pruning saved. With `--objective
result+seconds` it also minimises the mean training seconds: a Pareto front.

The study lives in an Optuna storage: by default an SQLite file beside --json
(PATH.optuna.db), or any `--storage URL` Optuna takes. Every finished trial is written
there as it ends, so Ctrl-C loses only the trial in progress, and the same command again
continues the study up to `--trials` trials in all. Several workers (processes, machines,
torchrun ranks) on one storage share the study; the study's user attributes record what
it was made with (recipe, data, fixed settings, runs per trial, seeds, objective) and a
worker that differs is refused. A trial whose worker died (killed, machine lost) stops
its heartbeat and is marked failed by the next worker; it does not count.

Pruning (`--pruner median|hyperband`, one objective) watches each run's per-epoch result,
reported at step run * epochs + epoch, and stops trials that fall behind, from the last
epoch of their first run on (earlier epochs say little about where a run ends; the last
step never prunes: it would save nothing); the epochs and (estimated) seconds they did not
train are reported.

At the end, the worker that confirms (the one with --runs above 0; rank 0 under torchrun)
waits for the other workers' trials, writes the best point (for two objectives: the point
of the front with the best result) as a recipe file PATH.tuned.py that `--recipe` runs,
draws PATH.history.png, PATH.importances.png (PED-ANOVA, computed by Optuna itself) and
PATH.pareto.png (two objectives), and runs the starting recipe and the tuned one `--runs`
times each on seeds after the trials' (never the ones it was tuned on), written as a
sweep's result to PATH.confirm.json and printed as `run.py compare` prints it.

Optuna is an optional extra: without it `tune` says how to install it and nothing else
changes. This module imports neither torch nor Optuna at import time.
"""
from __future__ import annotations

import copy
import math
import os
import re
import socket
import sys
import time
import warnings
from dataclasses import dataclass

INSTALL = "pip install 'cifar-speedrun[tune]'"
WAIT_SECONDS = 5                  # how often the confirming worker looks at the other workers' trials
HEARTBEAT_SECONDS = 60            # a trial's worker writes it this often; silent for GRACE_SECONDS: dead
GRACE_SECONDS = 180
SQLITE_TIMEOUT = 60               # seconds a worker waits for another's write on an SQLite store
DERIVED = {"storage": ".optuna.db", "recipe": ".tuned.py", "confirm": ".confirm.json",
           "history": ".history.png", "importances": ".importances.png", "pareto": ".pareto.png"}


class TuneError(ValueError):
    """A bad input to tune; the message says what to do."""


def require_optuna():
    """The optuna module; TuneError with the install command when it is missing."""
    try:
        import optuna
    except ImportError:
        raise TuneError(f"tune needs Optuna, which is not installed: {INSTALL} (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)       # the trials' lines (a failed one's too) are ours
    return optuna


def derived_paths(json_path: str) -> dict:
    """{what: path} of the files named beside --json PATH (DERIVED)."""
    root = os.path.splitext(json_path)[0]
    return {what: root + suffix for what, suffix in DERIVED.items()}


# --------------------------------------------------------------------------- the space
@dataclass(frozen=True)
class Dimension:
    """One field searched: a range (low, high; log scale; whole numbers) or choices."""
    name: str
    text: str                     # as given, for messages
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    integer: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def ends(self) -> list:
        """The values a trial can reach at the edges: both ends, or every choice."""
        return list(self.choices) if self.choices else [self.low, self.high]


SPACE_FORM = "write NAME=LOW..HIGH[:log][:int] or NAME=A,B,... (e.g. --space lr=0.5..5:log)"


def parse_space(texts: list[str], recipe) -> list[Dimension]:
    """The Dimensions of --space texts for `recipe`; TuneError naming the text for a malformed
    one, a field the recipe lacks, an empty or inverted range, a log range reaching zero,
    fewer than two choices, a field given twice."""
    from engine.results.sweep import PARSERS, field_type
    space = []
    for text in texts:
        name, equals, rest = text.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or not name or not rest.strip():
            raise TuneError(f"--space {text}: {SPACE_FORM}")
        if name in (d.name for d in space):
            raise TuneError(f"--space {name} is given twice; give it once")
        kind = field_type(recipe.config_class, name)
        if kind is None or name == "train_images":
            fields = ", ".join(sorted(recipe.config_class.field_names() - {"train_images"}))
            raise TuneError(f"--space {text}: recipe {recipe.name} has no setting {name}; its settings: {fields}")
        values, *flags = [part.strip() for part in rest.split(":")]
        unknown = [flag for flag in flags if flag not in ("log", "int")]
        if unknown:
            raise TuneError(f"--space {text}: unknown :{unknown[0]}; a range takes :log and :int")
        if ".." not in values:
            if flags:
                raise TuneError(f"--space {text}: :{flags[0]} applies to a range LOW..HIGH, not to choices")
            if kind not in PARSERS:
                raise TuneError(f"--space {text}: a {kind} setting cannot be searched from the command line")
            try:
                choices = tuple(dict.fromkeys(PARSERS[kind](value.strip()) for value in values.split(",")))
            except (ValueError, KeyError):
                raise TuneError(f"--space {text}: {name} takes {kind} values") from None
            if len(choices) < 2:
                raise TuneError(f"--space {text}: one value is no choice; give two or more (A,B) or fix it "
                                f"with --set {name}={values.strip()}")
            space.append(Dimension(name, text, choices=choices))
            continue
        if kind not in ("int", "float"):
            raise TuneError(f"--space {text}: {name} is a {kind} setting; a range needs a number field "
                            f"(give choices: {name}=A,B)")
        integer = kind == "int" or "int" in flags
        low_text, _, high_text = values.partition("..")
        try:
            low, high = ((int(low_text), int(high_text)) if integer else (float(low_text), float(high_text)))
        except ValueError:
            raise TuneError(f"--space {text}: LOW and HIGH must be {'whole ' if integer else ''}numbers; "
                            f"{SPACE_FORM}") from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise TuneError(f"--space {text}: LOW and HIGH must be finite numbers")
        if low == high:
            raise TuneError(f"--space {text}: an empty range; give LOW below HIGH, or fix the value with "
                            f"--set {name}={low_text}")
        if low > high:
            raise TuneError(f"--space {text}: an inverted range (LOW above HIGH); write {name}={high_text}..{low_text}")
        if "log" in flags and low <= 0:
            raise TuneError(f"--space {text}: a log range must lie above zero (LOW {low_text} is not); "
                            f"raise LOW or drop :log")
        space.append(Dimension(name, text, low, high, log="log" in flags, integer=integer))
    return space


# --------------------------------------------------------------------------- the study
def open_storage(optuna, url: str):
    """An Optuna RDBStorage for `url` with heartbeats (dead workers' trials are failed);
    TuneError when it cannot be opened."""
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")       # heartbeats are "experimental" in Optuna's words
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                                              grace_period=GRACE_SECONDS)
    except Exception as error:                # a bad URL, a missing driver, a server that does not answer
        reason = (str(error).strip().splitlines() or [""])[0][:200]
        raise TuneError(f"--storage {shown_url(url)}: cannot be opened ({type(error).__name__}: {reason}); give a "
                        f"URL Optuna takes, e.g. sqlite:///study.db or postgresql://user@host/database") from None


def shown_url(url: str) -> str:
    """The URL without its password."""
    return re.sub(r"(://[^:/@]+:)[^@/]*@", r"\1***@", url)


def open_study(optuna, storage, name: str, setup: dict, sampler, pruner, where: str):
    """Create the study, or load it when it exists and was made with the same `setup`
    (kept in its user attributes); TuneError naming the difference otherwise."""
    try:
        study_id = storage.get_study_id_from_name(name)
    except KeyError:
        study_id = None
    if study_id is not None:
        made = storage.get_study_user_attrs(study_id).get("setup")
        if made is not None:
            refuse_other_setup(made, setup, name, where)
    directions = ["maximize"] + (["minimize"] if setup["objective"] == "result+seconds" else [])
    try:
        study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner,
                                    directions=directions, load_if_exists=True)
    except ValueError as error:
        raise TuneError(f"study {name} in {where}: {error}; give another --study-name") from None
    if "setup" not in study.user_attrs:
        study.set_user_attr("setup", setup)
    return study


SETUP_OPTIONS = {"recipe": "--recipe", "data": "--data", "fixed": "the fixed settings (overrides and --set)",
                 "runs_per_trial": "--runs-per-trial", "first_seed": "--seed", "objective": "--objective"}


def refuse_other_setup(made: dict, setup: dict, name: str, where: str):
    for key, option in SETUP_OPTIONS.items():
        if made.get(key) != setup.get(key):
            if key == "recipe":
                raise TuneError(f"study {name} in {where} was made by recipe {made.get(key)}, not {setup[key]}; "
                                f"give another --study-name (or --json) for this recipe")
            raise TuneError(f"study {name} in {where} was made with {option} {made.get(key)}, not "
                            f"{setup.get(key)}; give the same to continue it, or another --study-name (or --json)")


def counted(optuna, study) -> int:
    """Trials that count towards --trials: finished, pruned, running, or failed for a reason
    of their own (a diverged run, an invalid config); not those cut short by Ctrl-C or a dead
    worker."""
    State = optuna.trial.TrialState
    return sum(t.state in (State.COMPLETE, State.PRUNED, State.RUNNING, State.WAITING)
               or (t.state == State.FAIL and "failure" in t.user_attrs) for t in study.get_trials(deepcopy=False))


def make_sampler(optuna, name: str, objectives: int):
    samplers = optuna.samplers
    try:
        if name == "tpe":
            return samplers.TPESampler(multivariate=True) if objectives == 1 \
                else samplers.TPESampler()
        if name == "random":
            return samplers.RandomSampler()
        if name == "qmc":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")       # "experimental" in Optuna's words
                return samplers.QMCSampler()
        if name == "nsga2":
            return samplers.NSGAIISampler()
        if name == "cmaes":
            import cmaes  # noqa: F401   (Optuna imports it only at the first trial)
            return samplers.CmaEsSampler()
        if name == "gp":
            import scipy  # noqa: F401
            return samplers.GPSampler()
    except ImportError as error:
        raise TuneError(f"--sampler {name} needs the {error.name} package, which is not installed "
                        f"(pip install {error.name}); or use --sampler tpe") from None
    raise TuneError(f"--sampler {name}: unknown")


def make_pruner(optuna, name: str, epochs: int):
    """The pruner `name`; no trial is pruned before the last epoch of its first run (`epochs`
    of the starting config): the first epochs say little about where a run ends."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=epochs)   # first at step `epochs`
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=epochs)
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------- one trial
class Failed(Exception):
    """A trial that cannot give a value (a run diverged, an invalid config): failed, counted."""


class Pruned(Exception):
    """Raised from inside a run when the pruner stops the trial."""


class Trials:
    """Runs trials of `study` in this worker: each a point of `setups` (engine.results.sweep.Setups)
    trained `runs` times from `first_seed`. make_config(settings) gives a point's Config."""

    def __init__(self, optuna, study, space, make_config, setups, *, runs: int, first_seed: int, total: int,
                 two_objectives: bool, pruning: bool, every_epoch: bool, quiet: bool, worker: str,
                 rank: int | None = None):
        self.optuna, self.study, self.space, self.make_config, self.setups = optuna, study, space, make_config, setups
        self.runs, self.first_seed, self.total = runs, first_seed, total
        self.two_objectives, self.pruning, self.every_epoch = two_objectives, pruning, every_epoch
        self.quiet, self.worker, self.rank = quiet, worker, rank
        self.done = 0                 # trials this worker ended
        self.current = None           # the trial this worker began last

    def end_cut_trial(self):
        """After a Ctrl-C: the trial this worker began, if Optuna left it running (the signal came
        between its steps, outside the runs), is failed and marked interrupted, so it never counts."""
        State = self.optuna.trial.TrialState
        trial = self.current
        if trial is not None and any(t.number == trial.number
                                     for t in self.study.get_trials(deepcopy=False, states=(State.RUNNING,))):
            trial.set_user_attr("interrupted", True)
            self.study.tell(trial, state=State.FAIL)

    def say(self, line: str):
        if not self.quiet:
            print(line, flush=True)

    def run(self):
        """Trials until the study counts --trials (all workers together)."""
        while counted(self.optuna, self.study) < self.total:
            self.study.optimize(self.objective, n_trials=1, catch=(Failed,), gc_after_trial=False)
            self.done += 1

    def objective(self, trial):
        self.current = trial
        try:
            return self.trial(trial)
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise

    def trial(self, trial):
        from engine.results.report import summarize
        from engine.results.session import flag_learned_nothing
        from engine.training.train import TrainingDiverged

        settings = {d.name: d.suggest(trial) for d in self.space}
        label = " ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                         for name, value in settings.items())
        trial.set_user_attr("worker", self.worker)
        if self.rank is not None:
            trial.set_user_attr("rank", self.rank)
        trial.set_user_attr("seeds", [self.first_seed + r for r in range(self.runs)])
        rank = "" if self.rank is None else f", rank {self.rank}"
        self.say(f"\ntrial {trial.number + 1} of {self.total} ({self.worker}{rank}): {label}")
        try:
            config = self.make_config(settings)
        except (ValueError, TypeError) as error:
            return self.fail(trial, f"not a valid config: {error}")
        trainer, train, test, note = self.setups.get(config)
        if note:
            self.say(f"  {note}")
        runs, trained = [], {"epochs": 0, "seconds": 0.0}
        for r in range(self.runs):
            seed = self.first_seed + r

            def on_epoch(row, r=r):
                trained["epochs"] += 1
                trained["seconds"] += row.get("seconds") or 0.0
                value = row["ema_val_accuracy"] if row.get("ema_val_accuracy") is not None else row.get("val_accuracy")
                if self.pruning and value is not None:
                    step = r * config.epoch_count + row["epoch"]
                    trial.report(value, step)
                    if step < self.runs * config.epoch_count and trial.should_prune():   # the last: saves nothing
                        raise Pruned(step)
            try:
                result = trainer.run(train, test, seed, on_epoch=on_epoch, evaluate_every_epoch=self.every_epoch)
            except TrainingDiverged as error:
                trial.set_user_attr("runs", runs)
                return self.fail(trial, f"run {r + 1} (seed {seed}) diverged: {error}")
            except Pruned as stop:
                planned = self.runs * config.epoch_count
                saved_epochs = planned - trained["epochs"]
                saved_seconds = saved_epochs * trained["seconds"] / max(trained["epochs"], 1)
                trial.set_user_attr("runs", runs)
                trial.set_user_attr("pruned", {"step": stop.args[0], "epochs_trained": trained["epochs"],
                                               "epochs_saved": saved_epochs, "seconds_saved": saved_seconds})
                self.say(f"  pruned in run {r + 1}, epoch {stop.args[0] - r * config.epoch_count}: "
                         f"{saved_epochs} of {planned} epochs not trained (about {saved_seconds:.1f} s saved)")
                raise self.optuna.TrialPruned() from None
            flag_learned_nothing(result, len(test.labels))
            runs.append(result.to_dict())
            self.say(f"  run {r + 1}/{self.runs} (seed {seed}): {100 * result.ema_accuracy:.2f}%, "
                     f"{result.train_seconds:.2f} s training")
        summary = summarize(runs)
        trial.set_user_attr("runs", runs)
        trial.set_user_attr("summary", summary)
        trial.set_user_attr("config", config.to_dict())
        mean, seconds = summary["mean_ema_accuracy"], summary["mean_train_seconds"]
        interval = summary["ema_accuracy_ci95"]
        shown = f" (95% CI {100 * interval[0]:.2f}% .. {100 * interval[1]:.2f}%)" if interval else ""
        self.say(f"  trial {trial.number + 1}: mean {100 * mean:.2f}%{shown} over {len(runs)} run(s), "
                 f"{seconds:.2f} s training per run")
        return (mean, seconds) if self.two_objectives else mean

    def fail(self, trial, reason: str):
        trial.set_user_attr("failure", reason)
        self.say(f"  trial {trial.number + 1} failed: {reason}")
        raise Failed(reason)


# --------------------------------------------------------------------------- the end
def wait_for_others(optuna, study, quiet: bool):
    """Wait until no trial of the study is running (other workers' trials finish; a dead
    worker's are failed once its heartbeat is stale)."""
    State, told = optuna.trial.TrialState, None
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # "experimental" in Optuna's words
            optuna.storages.fail_stale_trials(study)
        running = [t.number + 1 for t in study.get_trials(deepcopy=False, states=(State.RUNNING,))]
        if not running:
            return
        if running != told and not quiet:
            print(f"waiting for trial(s) {', '.join(map(str, running))} of other workers", flush=True)
        told = running
        time.sleep(WAIT_SECONDS)


def best_trial(study, two_objectives: bool):
    """The best complete trial: the best mean result (two objectives: the point of the Pareto
    front with the best result, then the fewest seconds)."""
    if not two_objectives:
        return study.best_trial
    return max(study.best_trials, key=lambda t: (t.values[0], -t.values[1]))


def trial_record(trial) -> dict:
    attrs = dict(trial.user_attrs)
    return {"number": trial.number, "state": trial.state.name, "params": trial.params,
            "values": trial.values, **attrs,
            "datetime_start": str(trial.datetime_start) if trial.datetime_start else None,
            "datetime_complete": str(trial.datetime_complete) if trial.datetime_complete else None}


def pruning_saved(trials: list[dict]) -> dict:
    pruned = [t["pruned"] for t in trials if t.get("pruned")]
    return {"pruned_trials": len(pruned), "epochs_saved": sum(p["epochs_saved"] for p in pruned),
            "epochs_trained_by_pruned": sum(p["epochs_trained"] for p in pruned),
            "seconds_saved": sum(p["seconds_saved"] for p in pruned)}


def recipe_text(base, values: dict, note: str) -> str:
    """A recipe file (docs/own-recipe.md): `base` (an engine.recipe_files.Recipe) with `values`
    as its preset, under the name BASE-tuned."""
    spec = base.name if base.builtin else base.module or base.file
    name = f"{base.name}-tuned"
    fields = "".join(f"\n    {key!r}: {value!r}," for key, value in values.items())
    return (f'"""{note}"""\n'
            "from __future__ import annotations\n\n"
            "from dataclasses import dataclass\n"
            "from typing import ClassVar\n\n"
            "from engine.recipe_files import find_recipe\n\n"
            f"TUNED_FROM = find_recipe({spec!r})\n"
            f"PRESETS = {{{name!r}: {{**TUNED_FROM.preset,{fields}\n}}}}\n\n\n"
            "@dataclass(frozen=True)\n"
            "class Config(TUNED_FROM.config_class):\n"
            f"    recipe: ClassVar[str] = {name!r}\n")


def draw_pictures(optuna, study, paths: dict, two_objectives: bool, result: str, title: str) -> dict:
    """{what: path written, or why not} for the history, importances and Pareto front;
    `result` names a trial's value on the axes, `title` heads each picture."""
    from engine.outputs import atomic_write
    from engine.results.plots import require_matplotlib
    require_matplotlib()
    import matplotlib
    if not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    target = dict(target=lambda t: t.values[0], target_name=result) if two_objectives else dict(target_name=result)
    jobs = {"history": lambda: views.plot_optimization_history(study, **target),
            "importances": lambda: views.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), **target)}
    if two_objectives:
        jobs["pareto"] = lambda: views.plot_pareto_front(study, target_names=[result, "training seconds per run"])
    written = {}
    for what, draw in jobs.items():
        try:
            with warnings.catch_warnings(), matplotlib.rc_context():   # Optuna sets a style: kept to its pictures
                warnings.simplefilter("ignore")        # Optuna calls its matplotlib views experimental
                axes = draw()
            figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
            figure.set_size_inches(8, 5)
            figure.suptitle(title, fontsize=9)
            atomic_write(paths[what], lambda file: figure.savefig(file, dpi=100, format="png", bbox_inches="tight"))
            plt.close(figure)
            written[what] = paths[what]
        except Exception as error:               # too few trials for importances, say: said, not fatal
            plt.close("all")
            written[what] = f"not drawn: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"
    return written


def write_result(path: str, payload: dict):
    from engine.results.session import write_json_or_rescue
    return write_json_or_rescue(path, payload, quiet=True)


# --------------------------------------------------------------------------- the command
REFUSED = {"join_timeout": "--join-timeout", "gather_timeout": "--gather-timeout"}


def tune_main(argv, prog: str = "run.py") -> int:
    from engine.options import TUNE_CONFIRM_RUNS, build_tune_parser
    parser = build_tune_parser(prog)
    args = parser.parse_args(argv)
    try:
        return tune(parser, args, confirm_default=TUNE_CONFIRM_RUNS)
    except TuneError as error:
        parser.error(str(error))


def tune(parser, args, confirm_default: int) -> int:
    for dest, option in REFUSED.items():
        if getattr(args, dest) is not None:
            raise TuneError(f"{option} does not apply to tune (its workers share a study, not a process group)")
    optuna = require_optuna()

    from engine import cli
    from engine.api import default_dtype, default_kernels, make_deterministic
    from engine.checks import DTYPES, dtype_name, require_seeds, require_synthetic_fits
    from engine.options import OVERRIDES, SYNTHETIC_SIZE
    from engine.outputs import OutputError, OutputLocks, check_output_path
    from engine.recipe_files import find_recipe
    from engine.results.distributed import World, world_from_env
    from engine.results.report import device_name, environment
    from engine.results.session import Outputs, reported_as
    from engine.results.sweep import Point, Setups, parse_settings
    from engine.training.data import DataError
    from engine.training.ops import make_ops

    for problem in cli.pointless_flags(args):
        raise TuneError(problem)
    if "," in args.recipe:
        raise TuneError(f"--recipe {args.recipe}: tune searches one recipe; give one")
    two = args.objective == "result+seconds"
    pruner_name = args.pruner or ("none" if two else "median")
    if two and pruner_name != "none":
        raise TuneError(f"--pruner {pruner_name} works with one objective (Optuna prunes on one value); "
                        f"drop it or use --objective result")
    try:
        world = world_from_env()
        recipe = find_recipe(args.recipe)
        fixed = {}
        for name, values in parse_settings(args.set, [recipe]):
            if len(values) > 1:
                raise TuneError(f"--set {name}: tune fixes one value; search several with --space")
            fixed[name] = values[0]
        space = parse_space(args.space, recipe)
        overrides = {field: getattr(args, field) for _, (field, _, _) in OVERRIDES.items()
                     if getattr(args, field) is not None}
        for d in space:
            if d.name in fixed or d.name in overrides:
                option = f"--set {d.name}" if d.name in fixed else \
                    next(o for o, (f, _, _) in OVERRIDES.items() if f == d.name)
                raise TuneError(f"--space {d.text} and {option} both set {d.name}; give it once")
        batch = args.batch_size or fixed.get("batch_size") or recipe.config_class.batch_size
        cli.recipe_config(args, recipe, batch, fixed)       # a typo, before the data loads
        for d in space:
            for value in d.ends():
                try:
                    images = max(batch, value if d.name == "batch_size" else 0)
                    cli.recipe_config(args, recipe, images, {**fixed, d.name: value})
                except (ValueError, TypeError) as error:
                    raise TuneError(f"--space {d.text}: {d.name}={value} is not valid ({error})") from None
        confirm = confirm_default if args.runs is None else args.runs
        if world.distributed and not world.main:
            confirm = 0                   # rank 0 confirms; the other ranks only run trials
        require_seeds(args.seed, args.runs_per_trial + confirm, name="--seed")
    except (ValueError, TypeError) as error:
        raise TuneError(str(error)) from None
    if confirm == 0 and (args.plot or args.save):
        raise TuneError("--plot and --save draw and keep the comparison's runs; this worker runs none (--runs 0 "
                        "or a torchrun rank above 0): drop them")
    device = cli.resolve_device(parser, args.device, world)
    paths = derived_paths(args.json)
    storage_url = args.storage or f"sqlite:///{os.path.abspath(paths['storage'])}"
    name = args.study_name or os.path.splitext(os.path.basename(args.json))[0]
    inputs = cli.data_input(args.data)
    try:
        if not args.storage:
            check_output_path("the study (beside --json)", paths["storage"])
        outputs = []
        if confirm:
            sweep_outputs = Outputs(paths["confirm"], args.save, args.plot)
            outputs = [("--json", args.json), ("the tuned recipe (beside --json)", paths["recipe"]),
                       *[(f"the {what} picture (beside --json)", paths[what])
                         for what in ("history", "importances", *(["pareto"] if two else []))],
                       *[(option.replace("--json", "the comparison (beside --json)"), path)
                         for option, path in sweep_outputs.named(range(confirm), points=2)]]
            from engine.outputs import check_output_paths
            check_output_paths(outputs, inputs + ([("--storage", paths["storage"])] if not args.storage else []))
            from engine.results.plots import require_matplotlib
            try:
                require_matplotlib()
            except ImportError as error:
                raise TuneError(f"tune draws its pictures with matplotlib: {error}") from None
        if args.data == "synthetic":
            require_synthetic_fits(args.synthetic_size or SYNTHETIC_SIZE, device)
    except ValueError as error:
        raise TuneError(str(error)) from None
    if args.deterministic:
        make_deterministic()
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(device)
    kernels = args.kernels or default_kernels(device, recipe.config_class)

    with OutputLocks() as locks:
        try:
            for option, path in outputs:
                locks.acquire(option, path)
        except OutputError as error:
            raise TuneError(f"{error} (a second worker on the same study: give it --runs 0)") from None
        if not args.storage:
            os.makedirs(os.path.dirname(os.path.abspath(paths["storage"])), exist_ok=True)
        storage = open_storage(optuna, storage_url)
        where = args.storage and shown_url(args.storage) or paths["storage"]
        try:
            data = cli.load_data(args, world)
        except DataError as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
        setup = {"recipe": recipe.name, "data": data.source, "fixed": {**overrides, **fixed},
                 "runs_per_trial": args.runs_per_trial, "first_seed": args.seed, "objective": args.objective}
        make_config = lambda settings: cli.recipe_config(args, recipe, len(data.train_labels), {**fixed, **settings})
        try:
            config = make_config({})
        except (ValueError, TypeError) as error:
            raise TuneError(str(error)) from None
        study = open_study(optuna, storage, name, setup, make_sampler(optuna, args.sampler, 1 + two),
                           make_pruner(optuna, pruner_name, config.epoch_count), where)
        try:
            setups = Setups(data, make_ops(kernels), device, dtype, args.compile, args.compile_mode or "default",
                            warm_up=device.type == "cuda" or args.compile)
            setups.get(config)
        except (ValueError, TypeError) as error:
            raise TuneError(str(error)) from None
        worker = f"{socket.gethostname()}:{os.getpid()}"        # the trials' "worker": host and process
        already = counted(optuna, study)
        if not args.quiet:
            print(f"tune: recipe {recipe.name} | data: {data.source} | device: {device_name(device)} | "
                  f"study {name} in {where} | {already} of {args.trials} trial(s) there | "
                  f"{args.runs_per_trial} run(s) per trial (seeds {args.seed}..{args.seed + args.runs_per_trial - 1})"
                  f" | sampler {args.sampler}, pruner {pruner_name}", flush=True)
        trials = Trials(optuna, study, space, make_config, setups, runs=args.runs_per_trial, first_seed=args.seed,
                        total=args.trials, two_objectives=two, pruning=pruner_name != "none",
                        every_epoch=not args.final_eval_only, quiet=args.quiet, worker=worker,
                        rank=world.rank if world.distributed else None)
        try:
            trials.run()
            if confirm:
                wait_for_others(optuna, study, args.quiet)
        except KeyboardInterrupt as stop:
            import signal
            from engine.results.session import EXIT_STATUS
            signum = getattr(stop, "signum", signal.SIGINT)
            trials.end_cut_trial()
            kept = sum(t.state.is_finished() and "interrupted" not in t.user_attrs
                       for t in study.get_trials(deepcopy=False))
            print(f"\n{parser.prog}: interrupted ({signal.Signals(signum).name}): the study keeps its {kept} "
                  f"finished trial(s) in {where}; the same command continues it", file=sys.stderr, flush=True)
            return EXIT_STATUS.get(signum, 130)
        if not confirm:
            print(f"this worker ran {trials.done} trial(s); the study is in {where} (the worker with --runs above 0 "
                  f"writes the tuned recipe and compares it)", flush=True)
            return 0

        State = optuna.trial.TrialState
        complete = study.get_trials(deepcopy=False, states=(State.COMPLETE,))
        records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
        saved = pruning_saved(records)
        if not complete:
            print(f"{parser.prog}: error: no trial of the study completed; nothing to tune from (see {where})",
                  file=sys.stderr)
            return 1
        best = best_trial(study, two)
        front = [t.number for t in study.best_trials] if two else [best.number]
        values = {**overrides, **fixed, **best.params}
        summary = best.user_attrs.get("summary", {})
        seeds = best.user_attrs.get("seeds", [])
        note = (f"{recipe.name}, tuned by `{parser.prog}` (study {name}, trial {best.number + 1} of "
                f"{len(records)}): mean result {100 * best.values[0]:.2f}% over {summary.get('runs')} run(s), "
                f"seeds {seeds}, on {data.source}.\nSearched: {' '.join(args.space)}. Compared with {recipe.name} "
                f"on fresh seeds in {os.path.basename(paths['confirm'])}.")
        from engine.outputs import atomic_write
        atomic_write(paths["recipe"], lambda file: file.write(recipe_text(recipe, values, note)), binary=False)
        tuned = find_recipe(paths["recipe"])
        pictures = draw_pictures(optuna, study, paths, two, f"mean {reported_as(config)} of {args.runs_per_trial} run(s)",
                                 f"study {name}: {recipe.name} on {data.source}")
        describe = lambda t: " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        print(f"\nstudy {name}: {len(records)} trial(s), {len(complete)} complete, {saved['pruned_trials']} pruned"
              + (f" (saving {saved['epochs_saved']} epochs, about {saved['seconds_saved']:.1f} s of training)"
                 if saved["pruned_trials"] else "")
              + f"\nbest: trial {best.number + 1}: {describe(best)}: mean {100 * best.values[0]:.2f}%"
              + (f", {best.values[1]:.2f} s training; Pareto front: trials "
                 f"{', '.join(str(n + 1) for n in front)}" if two else ""), flush=True)
        for what, path in pictures.items():
            print(f"{what}: {path}", flush=True)
        print(f"wrote {paths['recipe']} (run it with --recipe {paths['recipe']})", flush=True)
        payload = {"study": name, "storage": where, "recipe": recipe.name, **recipe.record(), "setup": setup,
                   "space": args.space, "objective": args.objective, "sampler": args.sampler,
                   "pruner": pruner_name, "trials_asked": args.trials, "trials": records,
                   "best_trial": best.number, "pareto_front": front, "best_settings": values,
                   "pruning": saved, "tuned_recipe": paths["recipe"], "pictures": pictures,
                   "data_source": data.source, "dtype": dtype_name(dtype), "kernels": kernels,
                   **environment(device), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "confirmation": None}
        written = write_result(args.json, payload)

        # The proof: the starting recipe and the tuned one on seeds no trial trained on.
        fresh = args.seed + args.runs_per_trial
        confirm_args = copy.copy(args)
        confirm_args.runs, confirm_args.seed, confirm_args.json = confirm, fresh, paths["confirm"]
        confirm_args.recipe = f"{args.recipe},{paths['recipe']}"
        if not args.quiet:
            print(f"\ncomparison on fresh seeds {fresh}..{fresh + confirm - 1}: {recipe.name} against "
                  f"{tuned.name}, {confirm} run(s) each", flush=True)
        status = cli.train_runs(parser, confirm_args, [Point(recipe, fixed), Point(tuned, {})], World(),
                                device, dtype, {recipe.name: kernels, tuned.name: kernels}, locks=locks, data=data)
        from engine.results.compare import CompareError, compare, format_comparison, load_entries
        try:
            entries, notes = load_entries([paths["confirm"]])
            comparison = compare(entries)
        except CompareError as error:
            print(f"{parser.prog}: error: no comparison ({error})", file=sys.stderr)
            return max(status, 1)
        print("\n" + format_comparison(comparison, notes), flush=True)
        payload["confirmation"] = {"seeds": list(range(fresh, fresh + confirm)), "json": paths["confirm"],
                                   "comparison": comparison}
        if written == args.json:
            write_result(args.json, payload)
        print(f"wrote {args.json}", flush=True)
        return status if written == args.json else max(status, 1)
