"""Sweeps in one process: `--set NAME=V1,V2,...` (repeatable) and `--recipe A,B`.

The points of a sweep are every combination of the recipes and the values set
(recipes outermost, then the --set options in the order given). Each point runs
`--runs N` runs, seeds `--seed` .. `--seed`+N-1, so every point sees the same
seeds. The data is loaded once; `Setups` builds a recipe's Trainer once and
hands it each point's Config (Trainer.use_config), so the compiled functions are
reused: a learning rate is a tensor in the compiled update and changes nothing
in it; a setting compiled in as a constant (weight decay, momentum, label
smoothing) or a new shape (width, batch size) compiles another graph, in a
warm-up before the point's runs that says so, never inside a timed run.

`SweepSession` is a Session over all the runs of all the points (run index i is
point i // N, seed --seed + i % N): Ctrl-C, failures, progress files, torchrun and
--save work as for runs; every run record holds its "point", the JSON's "points"
each point's recipe, settings, config and summary, and "comparisons" each point
against the first (Welch's t-test, engine.results.compare). The summary is one row per
point with that comparison. Each point also holds "train_pflop", the arithmetic of one
run's training (train_flops), and --plot PATH draws beside the runs' figure
PATH.points.png: each point's result against it and against its training seconds.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import sys
from dataclasses import dataclass

from engine.results.compare import format_difference, point_label, welch
from engine.options import did_you_mean
from engine.results.report import summarize
from engine.results.session import Session, reported_as

MAX_POINTS = 10_000         # a sweep of more points is refused (counted before anything is built)
BOOLEANS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
PARSERS = {"int": int, "float": float, "str": str, "bool": lambda text: BOOLEANS[text.lower()]}


@dataclass(frozen=True)
class Point:
    """One point of a sweep: its recipe (an engine.recipe_files.Recipe) and settings."""
    recipe: object
    settings: dict

    def label(self, with_recipe: bool) -> str:
        text = point_label(self.settings)
        return f"{self.recipe.name} {text}".strip() if with_recipe else text or self.recipe.name


def field_type(cls, name: str) -> str | None:
    for field in dataclasses.fields(cls):
        if field.name == name:
            return field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    return None


def parse_settings(texts: list[str], recipes: list) -> list[tuple[str, list]]:
    """[(field, values)] from --set texts 'NAME=V1,V2,...', each value of the field's type in
    every recipe of the sweep. ValueError, naming the option, for a malformed text, a field
    a recipe lacks, a value of the wrong type, a field set twice."""
    settings = []
    for text in texts:
        name, equals, values = text.partition("=")
        name = name.strip().replace("-", "_")
        if not equals or not name or not values.strip():
            raise ValueError(f"--set {text}: write NAME=VALUE or NAME=V1,V2,... (e.g. --set lr=0.001,0.002)")
        if name in (n for n, _ in settings):
            raise ValueError(f"--set {name} is given twice; give all its values in one --set {name}=V1,V2")
        parsed = None
        for recipe in recipes:
            kind = field_type(recipe.config_class, name)
            if kind is None:
                fields = ", ".join(sorted(recipe.config_class.field_names() - {"train_images"}))
                raise ValueError(f"--set {name}: recipe {recipe.name} has no setting {name}"
                                 f"{did_you_mean(name, recipe.config_class.field_names() - {'train_images'})}; "
                                 f"its settings: {fields}")
            if kind not in PARSERS:
                raise ValueError(f"--set {name}: a {kind} setting cannot be set on the command line; "
                                 f"change it in a recipe file of your own (docs/own-recipe.md)")
            try:
                these = [PARSERS[kind](value.strip()) for value in values.split(",")]
            except (ValueError, KeyError):
                raise ValueError(f"--set {text}: {name} takes {kind} values") from None
            parsed = parsed or these
        settings.append((name, parsed))
    return settings


def count_points(recipes: int, texts: list[str]) -> int:
    """The number of points `recipes` recipes and the --set texts 'NAME=V1,V2,...' make,
    counted from the texts alone (nothing parsed or built)."""
    return recipes * math.prod(text.partition("=")[2].count(",") + 1 for text in texts)


def require_sweep_size(count: int):
    """ValueError, with the count, for a sweep of more than MAX_POINTS points."""
    if count > MAX_POINTS:
        shown = f"{count:,}" if count < 10 ** 15 else f"more than 10^{len(str(count)) - 1}"
        raise ValueError(f"--set and --recipe make {shown} points (every combination), more than the "
                         f"{MAX_POINTS:,} a sweep may have; give fewer values")


def sweep_points(recipes: list, settings: list[tuple[str, list]]) -> list[Point]:
    """Every combination of `recipes` and the (field, values) of `settings`, recipes outermost.
    ValueError for more than MAX_POINTS points, counted before any is built."""
    require_sweep_size(len(recipes) * math.prod(len(values) for _, values in settings))
    names = [name for name, _ in settings]
    return [Point(recipe, dict(zip(names, values)))
            for recipe in recipes for values in itertools.product(*(values for _, values in settings))]


def train_flops(config) -> float | None:
    """The arithmetic of a run's training: one step's forward, loss and backward counted by
    torch.utils.flop_counter on the meta device (no memory, no arithmetic done) times the
    run's steps; the optimizer's updates and the evaluations are left out. None when the
    recipe's network cannot be built on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from engine.training.ops import make_ops

    meta = torch.device("meta")
    try:
        model = config.build_network(make_ops("eager"), meta, torch.float32)
        images = torch.empty(config.batch_size, 3, 32, 32, device=meta).contiguous(memory_format=torch.channels_last)
        labels = torch.zeros(config.batch_size, dtype=torch.long, device=meta)
        with FlopCounterMode(display=False) as counter:
            config.loss(model(images), labels).backward()
    except Exception:                 # an operation without a meta kernel in a recipe of one's own
        return None
    return float(counter.get_total_flops()) * config.total_steps


def compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process so far (its own counter)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


class Setups:
    """Builds, for a point's config, the Trainer and loaders that train it: one Trainer per
    recipe, kept across the points (compiled functions reused); the loaders rebuilt only
    when what they depend on changes; a warm-up (on CUDA, or with compile) after every
    change, whose line says how long it took and, with compile, what it compiled. ops: the
    operation table (an engine.training.ops.Ops) of every recipe, or {Config class: Ops}, one
    per recipe (each recipe's default kernels on CUDA)."""

    def __init__(self, data, ops, device, dtype, compile: bool, compile_mode: str, warm_up: bool):
        self.data, self.ops, self.device, self.dtype = data, ops, device, dtype
        self.compile, self.compile_mode, self.warm_up = compile, compile_mode, warm_up
        self.trainers, self.loaders, self.loader_key = {}, None, None
        self.warmup_seconds = 0.0

    def ops_for(self, config):
        """The operation table `config`'s recipe trains with."""
        return self.ops[type(config)] if isinstance(self.ops, dict) else self.ops

    def get(self, config) -> tuple:
        """(trainer, train loader, test loader, a line about the warm-up or None)."""
        from engine.training.data import CifarLoader
        from engine.errors import check_kernels
        from engine.training.train import Trainer

        trainer = self.trainers.get(type(config))
        new = trainer is None
        if new:
            check_kernels(self.ops_for(config), self.device, self.dtype, config)
            trainer = self.trainers[type(config)] = Trainer(config, self.ops_for(config), self.device, self.dtype,
                                                            compile=self.compile, compile_mode=self.compile_mode)
        changed = new or trainer.config != config
        trainer.use_config(config)
        key = (type(config), config.batch_size, config.test_batch_size, config.mean, config.std, config.augmentation)
        if key != self.loader_key:
            d = self.data
            self.loaders = (CifarLoader(d.train_images, d.train_labels, config, True, self.device, self.dtype),
                            CifarLoader(d.test_images, d.test_labels, config, False, self.device, self.dtype))
            self.loader_key = key
        note = None
        if self.warm_up and changed:
            before = compiled_graphs() if self.compile else 0
            seconds = trainer.warm_up(*self.loaders)
            self.warmup_seconds += seconds
            note = f"warm-up{' and compilation' if self.compile else ''}: {seconds:.1f} s (not counted in run times)"
            if self.compile and not new:
                graphs = compiled_graphs() - before
                note += (f"; {graphs} graph(s) compiled again for this point (new shapes, or a setting "
                         f"compiled in as a constant)" if graphs else "; nothing compiled again")
        return (trainer, *self.loaders, note)


class SweepSession(Session):
    """A Session over every run of every point (module docstring). points: the Points;
    configs: their Configs; setups: a Setups whose get() was already called for the first
    point (its errors are the command line's to tell); runs: runs per point."""

    def __init__(self, points: list[Point], configs: list, setups: Setups, *, runs: int, **session):
        self.points, self.configs, self.setups, self.runs_per_point = points, configs, setups, runs
        trainer, train, test, _ = setups.get(configs[0])
        super().__init__(trainer, train, test, runs=runs * len(points), **session)
        self.point = None                 # the point now set up
        self.flops = {}                   # point -> training FLOP of one run (train_flops), counted once
        self.with_recipe = len({p.recipe.name for p in points}) > 1

    def point_of(self, index: int) -> int:
        return index // self.runs_per_point

    def seed_of(self, index: int) -> int:
        return self.first_seed + index % self.runs_per_point

    def before_run(self, index: int):
        point = self.point_of(index)
        if point == self.point:
            return
        self.show.close()
        self.show.print(f"\npoint {point + 1}/{len(self.points)}: {self.points[point].label(self.with_recipe)}")
        self.point = point
        self.trainer, self.train, self.test, note = self.setups.get(self.configs[point])
        self.config = self.configs[point]
        self.checkpoint_fields["recipe"] = self.points[point].recipe.name
        self.checkpoint_fields["kernels"] = self.setups.ops_for(self.config).name
        if note:
            self.show.print(note)

    def checkpoint_path(self, seed: int) -> str:
        return self.outputs.checkpoint(seed, self.runs_per_point, self.point)

    def keep(self, index: int, record: dict):
        record["point"] = self.point_of(index)
        super().keep(index, record)

    def payload(self, runs: list, complete: bool, processes: list | None = None) -> dict:
        payload = super().payload(runs, complete, processes)
        payload["warmup_seconds"] = self.setups.warmup_seconds
        payload["sweep"] = {"runs_per_point": self.runs_per_point,
                            "recipes": list(dict.fromkeys(p.recipe.name for p in self.points)),
                            "settings": {name: list(dict.fromkeys(p.settings[name] for p in self.points))
                                         for name in self.points[0].settings}}
        payload["points"] = [{"index": k, "label": point.label(self.with_recipe), "settings": point.settings,
                              **point.recipe.record(), "reported_as": reported_as(config),
                              "kernels": self.setups.ops_for(config).name, "config": config.to_dict(),
                              "train_pflop": self.train_pflop(k),
                              "summary": summarize([run for run in runs if run.get("point") == k])}
                             for k, (point, config) in enumerate(zip(self.points, self.configs))]
        payload["comparisons"] = [compare_points(runs, 0, k) for k in range(1, len(self.points))]
        return payload

    def summary_text(self, payload: dict) -> str:
        return format_sweep(payload, self.data_source)

    def train_pflop(self, point: int) -> float | None:
        if point not in self.flops:
            self.flops[point] = train_flops(self.configs[point])
        flop = self.flops[point]
        return None if flop is None else flop / 1e15

    def report(self, processes: list) -> bool:
        """As a Session's, and with --plot PATH also PATH.points.png: each point's result
        against its training PFLOP and seconds (engine.results.plots.plot_points)."""
        json_written = super().report(processes)
        if self.outputs.plot:
            from engine.outputs import write_or_rescue
            from engine.results.plots import plot_points
            runs = [record for _, record in sorted((item for p in processes for item in p["runs"]),
                                                   key=lambda i: i[0])]
            payload, path = self.payload(runs, complete=False), self.outputs.points_plot()
            points, title = payload["points"], f"{self.data_source} | {payload['device']}"
            written, message = write_or_rescue(lambda target: plot_points(points, target, title=title), path,
                                               "the points' plot")
            if written != path:
                self.write_errors += 1
                print(f"error: {message}", file=sys.stderr, flush=True)
            elif not self.quiet:
                print(message, flush=True)
        return json_written


def compare_points(runs: list, baseline: int, other: int) -> dict:
    """Welch's t-test of point `other` against point `baseline` for the result and the seconds."""
    def values(point, key):
        return [run[key] for run in runs if run.get("point") == point and run.get("status", "ok") == "ok"
                and run.get(key) is not None]
    return {"point": other, "baseline": baseline,
            **{key: welch(values(baseline, key), values(other, key))
               for key in ("ema_accuracy", "train_seconds", "total_seconds")}}


def format_sweep(payload: dict, data_source: str) -> str:
    """One row per point (runs, mean and std of the result, seconds per run), and below each
    point after the first its difference from the first with 95% interval and p-value."""
    points, comparisons = payload["points"], {c["point"]: c for c in payload["comparisons"]}
    width = max(len(point["label"]) for point in points)
    lines = [f"sweep over {len(points)} points, {payload['sweep']['runs_per_point']} run(s) each, on "
             f"{payload['device']}, data: {data_source}"]
    pct = lambda value: "-" if value is None else f"{100 * value:.2f}%"
    sec = lambda value: "-" if value is None else f"{value:.3f} s"
    for point in points:
        s = point["summary"]
        failed = f" ({s['failed_runs']} failed)" if s["failed_runs"] else ""
        nothing = f" LEARNED NOTHING in {s['learned_nothing_runs']}" if s.get("learned_nothing_runs") else ""
        lines.append(f"  point {point['index'] + 1}  {point['label']:<{width}}  {s['runs']} run(s){failed}  "
                     f"{point['reported_as']} {pct(s['mean_ema_accuracy'])} (std {pct(s['std_ema_accuracy'])})  "
                     f"training {sec(s['mean_train_seconds'])}  in all {sec(s['mean_total_seconds'])}{nothing}")
        comparison = comparisons.get(point["index"])
        if comparison:
            lines.append(f"  {'':>7}  {'':<{width}}  vs point 1: result "
                         f"{format_difference(comparison['ema_accuracy'], 100.0, '%')}; training "
                         f"{format_difference(comparison['train_seconds'], 1.0, ' s')}")
    lines.append("  (differences: Welch's t-test, 95% CI, two-sided p; small p: the point differs from point 1)")
    return "\n".join(lines)
