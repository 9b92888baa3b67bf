"""The command line: `python run.py [options]`. See README.md for every option."""
from __future__ import annotations

import glob
import os
import signal
import sys
import time

import torch

from engine.api import default_dtype, default_kernels, evaluate, make_deterministic
from engine.results.checkpoint import CheckpointError, rebuild
from engine.checks import DTYPES, dtype_name, require_network_fits, require_seeds, require_synthetic_fits
from engine.training.data import DataError, convert, load_cifar10, take_subset
from engine.results.distributed import PeersMissing, World, barrier, finish, start, world_from_env
from engine.errors import explain
from engine.training.ops import make_ops
from engine.options import (OVERRIDES, SYNTHETIC_SIZE, build_convert_parser, build_evaluate_parser, build_parser,
                            pointless_data_flags, pointless_flags, program_name, refused_overrides)
from engine.outputs import OutputError, OutputLocks
from engine.results.plots import require_matplotlib
from engine.results.progress import Progress, Ticker
from engine.recipe_files import CLI_NAMES, find_recipe
from engine.results.report import device_name, environment
from engine.results.session import EXIT_STATUS, Outputs, Session, signals_stop, write_json_or_rescue
from engine.results.sweep import (Setups, SweepSession, count_points, parse_settings, require_sweep_size,
                                  sweep_points)

def resolve_device(parser, name: str | None, world: World = World()) -> torch.device:
    if name is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            parser.error(f"--device {name}: not a device; use cuda, cuda:N or cpu")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {name}: only cuda and cpu are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        parser.error(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if world.distributed and device.type == "cuda":     # torchrun: one GPU per process
        if device.index is not None:
            parser.error(f"--device {name}: under torchrun every process takes cuda:LOCAL_RANK; "
                         f"pass --device cuda or leave --device out")
        if world.local_rank >= torch.cuda.device_count():
            parser.error(f"process {world.local_rank} on this machine has no GPU of its own "
                         f"({torch.cuda.device_count()} here); lower --nproc_per_node")
        device = torch.device("cuda", world.local_rank)
    return device


def data_input(data: str | None) -> list[tuple[str, str]]:
    """--data as an input that no output may overwrite (none for synthetic data)."""
    return [("--data", data)] if data and data != "synthetic" else []


def main(argv=None, prog: str | None = None) -> int:
    """`python run.py ...` and the `cifar-speedrun` command; `prog` names us in messages
    (default: from how the process was started). `tune` enters through engine/command.py."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = prog or program_name(sys.argv[0])
    if argv[:1] == ["evaluate"]:
        return interruptible(evaluate_main, argv[1:], prog)
    if argv[:1] == ["convert"]:
        return interruptible(convert_main, argv[1:], prog)
    if argv[:1] == ["compare"]:
        from engine.results.compare import compare_main
        return interruptible(compare_main, argv[1:], prog)
    return interruptible(train_main, argv, prog)


def interruptible(command, argv: list, prog: str) -> int:
    """command(argv, prog), with SIGTERM and SIGHUP stopping it like Ctrl-C; an interruption
    that no Session summarised (it came before any run finished) is one line."""
    try:      # a Session summarises its own interruptions: this one came before any run finished
        with signals_stop():
            return command(argv, prog)
    except KeyboardInterrupt as stop:
        signum = getattr(stop, "signum", signal.SIGINT)
        print(f"\n{prog}: interrupted before any result was ready ({signal.Signals(signum).name}); "
              f"nothing was written", file=sys.stderr)
        return EXIT_STATUS.get(signum, 130)


def train_main(argv: list, prog: str = "run.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    for problem in pointless_flags(args):
        parser.error(problem)
    try:
        require_seeds(args.seed, args.runs, name="--seed")
        world = world_from_env()
        require_sweep_size(count_points(len(args.recipe.split(",")), args.set))   # before anything is built
        recipes = [find_recipe(spec.strip()) for spec in args.recipe.split(",")]
        points = sweep_points(recipes, parse_settings(args.set, recipes))
        # A typo should not wait for the data to load.
        for point in points:
            recipe_config(args, point.recipe, args.batch_size or point.recipe.config_class.batch_size, point.settings)
    except (ValueError, TypeError) as error:   # TypeError: a value of the wrong kind for its field
        parser.error(str(error))
    if args.plot:
        try:
            require_matplotlib()
        except ImportError as error:
            parser.error(str(error))
    device = resolve_device(parser, args.device, world)
    if args.device is None and device.type == "cpu" and world.main:
        print(f"{parser.prog}: {no_gpu_note(args)}", file=sys.stderr, flush=True)
    outputs, seeds = Outputs(args.json, args.save, args.plot), range(args.seed, args.seed + args.runs)
    sweep = len(points) if len(points) > 1 else 0
    try:     # every output, before any work
        outputs.check(seeds, world, inputs=data_input(args.data), points=sweep)
        if args.data == "synthetic":
            require_synthetic_fits(args.synthetic_size or SYNTHETIC_SIZE, device)
    except ValueError as error:
        parser.error(str(error))
    if args.deterministic:
        make_deterministic()
    dtype = DTYPES[args.dtype] if args.dtype else default_dtype(device)
    kernels = recipe_kernels(args, [point.recipe for point in points], device)
    with OutputLocks() as locks:      # a second process on the same files is refused
        try:
            for option, path in outputs.locked_by(seeds, world, sweep):
                locks.acquire(option, path)
        except OutputError as error:
            parser.error(str(error))
        try:
            peers = start(world, device, args.join_timeout, args.gather_timeout)
        except PeersMissing as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 1
        try:
            return train_runs(parser, args, points, world, device, dtype, kernels, peers, locks)
        finally:
            finish(world)


def recipe_config(args, recipe, train_images: int, settings: dict | None = None):
    """The chosen recipe (an engine.recipe_files.Recipe) with the command line's overrides and
    a point's --set `settings`. ValueError names a bad value, an override the recipe has no
    setting for, or a setting given both ways."""
    given = {option: field for option, (field, _, _) in OVERRIDES.items() if getattr(args, field) is not None}
    twice = [option for option, field in given.items() if field in (settings or {})]
    if twice:
        raise ValueError(f"{twice[0]} and --set {given[twice[0]]} set the same thing; give it once")
    cls = recipe.config_class
    foreign = [option for option, field in given.items() if field not in cls.field_names()]
    if foreign:
        raise ValueError(refused_overrides(foreign, recipe.name, cls.field_names()))
    return recipe.make_config(train_images=train_images, **{field: getattr(args, field) for field in given.values()},
                              **(settings or {}))


def recipe_kernels(args, recipes: list, device) -> dict:
    """{recipe name: kernels} for the command's recipes: --kernels when given, else each
    recipe's default on `device` (engine.api.default_kernels)."""
    return {recipe.name: args.kernels or default_kernels(device, recipe.config_class) for recipe in recipes}


def train_runs(parser, args, points: list, world: World, device, dtype, kernels: dict, peers=None,
               locks: OutputLocks | None = None, data=None) -> int:
    """Load the data (unless `data`, loaded already by load_data), build the trainer and
    loaders, and hand them to a Session (a SweepSession for several points). kernels: the
    recipes' kernels (recipe_kernels)."""
    synthetic_size = args.synthetic_size or SYNTHETIC_SIZE
    if data is None:
        try:
            data = load_data(args, world)
        except DataError as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
    try:
        configs = [recipe_config(args, point.recipe, len(data.train_labels), point.settings) for point in points]
        for config in configs:
            require_network_fits(config, device, dtype)
    except (ValueError, TypeError) as error:   # what depends on the data: a training set smaller than a batch
        parser.error(str(error))

    if world.main:
        for note in dict.fromkeys(shortened_ema(args, config, point.settings) for point, config in zip(points, configs)):
            if note:
                print(f"{parser.prog}: warning: {note}", file=sys.stderr, flush=True)
    if device.type == "cuda" and not args.deterministic:
        torch.backends.cudnn.benchmark = True
    compile_mode = args.compile_mode or "default"
    show = Progress("quiet" if args.quiet else "auto" if world.main else "runs",
                    prefix=f"[rank {world.rank}] " if world.distributed else "")
    recipe, config = points[0].recipe, configs[0]
    ops = {type(c): make_ops(kernels[p.recipe.name]) for p, c in zip(points, configs)}     # one per recipe
    kernels_text = (kernels[recipe.name] if len(set(kernels.values())) == 1
                    else ", ".join(f"{name}: {kind}" for name, kind in kernels.items()))
    if world.main and not args.quiet:
        print(f"recipe: {', '.join(dict.fromkeys(point.recipe.name for point in points))} | data: {data.source} | "
              f"device: {device_name(device)}"
              f"{f' (x{world.size} processes)' if world.distributed else ''} | "
              f"dtype: {dtype_name(dtype)} | kernels: {kernels_text} | "
              f"compile: {compile_mode if args.compile else 'off'} | "
              f"{config.total_steps} steps of {config.batch_size}"
              f"{' | deterministic' if args.deterministic else ''}"
              f"{f' | sweep: {len(points)} points x {args.runs} run(s)' if len(points) > 1 else ''}", flush=True)
    try:
        setups = Setups(data, ops, device, dtype, args.compile, compile_mode,
                        warm_up=device.type == "cuda" or args.compile)
        doing = ("compiling the training and evaluation steps (torch.compile) on a short warm-up run"
                 if args.compile else "warming up (a short run that lets cuDNN choose its algorithms)")
        with Ticker(doing, quiet=args.quiet or not world.main or not setups.warm_up):
            trainer, train, test, warmup_note = setups.get(config)
    except Exception as error:
        message = explain(error, config, args.compile)
        if message is None:
            raise
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 1
    if warmup_note and len(points) == 1:
        show.print(warmup_note)
    if device.type == "cpu" and world.main and not args.quiet:
        given = [option for option, (field, *_) in OVERRIDES.items() if getattr(args, field) is not None]
        given += ["--train-subset"] if args.train_subset else []
        with Ticker("timing a few training steps for an estimate", quiet=not sys.stdout.isatty()):   # a log: no lines
            step_seconds = trainer.seconds_per_step(train)
        print(cpu_estimate(step_seconds, config, args.runs * len(points), given), flush=True)
    data_record = {"data": args.data, "synthetic_size": synthetic_size, "seed": args.seed,
                   "train_subset": args.train_subset, "test_subset": args.test_subset}
    context = {
        **recipe.record(), "data_source": data.source, "synthetic": data.synthetic, "data": data_record,
        "dtype": dtype_name(dtype),
        "kernels": kernels_text,
        "compile": args.compile, "compile_mode": compile_mode if args.compile else None,
        "deterministic": args.deterministic, "config": config.to_dict(), **environment(device),
    }
    checkpoint_fields = {"recipe": recipe.name, "data_source": data.source, "kernels": kernels[recipe.name],
                         "compile": args.compile, "data": data_record}
    common = dict(first_seed=args.seed, world=world, outputs=Outputs(args.json, args.save, args.plot), show=show,
                  data_source=data.source, context=context, checkpoint_fields=checkpoint_fields,
                  evaluate_every_epoch=not args.final_eval_only, warmup_seconds=setups.warmup_seconds,
                  quiet=args.quiet, peers=peers, locks=locks)
    try:                                  # a name derived from --json may still be refused (engine.outputs)
        if len(points) > 1:
            session = SweepSession(points, configs, setups, runs=args.runs, **common)
        else:
            session = Session(trainer, train, test, runs=args.runs, **common)
    except OutputError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return session.run()


def load_data(args, world: World = World()):
    """The data --data names, labelled as --data-label says, cut to --train-subset and
    --test-subset; DataError when it cannot be read or cut."""
    if args.download and not world.main:
        barrier(world)                    # rank 0 downloads first
    data = load_cifar10(args.data, args.download, args.synthetic_size or SYNTHETIC_SIZE, seed=args.seed)
    if args.download and world.main:
        barrier(world)
    if args.data_label:
        data.source = args.data_label + (" (synthetic)" if data.synthetic else "")
    return take_subset(data, args.train_subset, args.test_subset, seed=args.seed)


def no_gpu_note(args) -> str:
    """What a command that found no GPU will do instead, said first (before any data error)."""
    dtype, kernels = args.dtype or "float32", args.kernels or "eager"
    compiled = (" (--compile: torch.compile compiles for the CPU first, which takes minutes; the time is "
                "shown as it goes)" if args.compile else "")
    return (f"no CUDA GPU here: training runs on the CPU, {dtype} with {kernels} kernels{compiled}. A full-size "
            f"run takes hours on a CPU (an estimate follows once the data is loaded); --train-subset 5000 "
            f"--test-subset 1000 --base-width 16 make a small real run. (--device cpu: the same without this note)")


def cpu_estimate(step_seconds: float, config, runs: int, given: tuple = ()) -> str:
    """What a CPU run will take, said before it starts (from a few timed steps); for a long
    one, the options that would shorten it, leaving out those already `given` (option names)."""
    minutes = step_seconds * config.total_steps / 60
    line = (f"on this CPU: about {step_seconds:.2g} s per step, so about {minutes:.3g} min of training per run"
            + (f", {runs * minutes:.3g} min for all {runs}" if runs > 1 else "") + " (evaluations extra)")
    if minutes > 10:
        quicker = [*(["--base-width 16"] if getattr(config, "base_width", 0) > 16 else []),
                   *(["fewer --epochs"] if "--epochs" not in given else []),
                   *(["--train-subset 5000 --test-subset 1000"] if "--train-subset" not in given else [])]
        line += (f"; {', '.join(quicker[:-1])}{' and ' if len(quicker) > 1 else ''}{quicker[-1]} make quick "
                 f"CPU runs, a GPU the real ones" if quicker else "; a GPU makes the real runs")
    return line


def shortened_ema(args, config, settings: dict) -> str | None:
    """A note, said before training, when --epochs left the recipe's EMA fewer epochs than
    its own (no EMA at all below ema_epochs + 1 epochs); None when it did not."""
    own = getattr(type(config), "ema_epochs", None)
    if not isinstance(own, int) or args.ema_epochs is not None or "ema_epochs" in settings:
        return None
    if config.ema_epochs >= own:
        return None
    if config.has_ema:
        return (f"--epochs {config.epochs} shortens the recipe's EMA from its last {own} epochs to the last "
                f"{config.ema_epochs}; --epochs {own + 1} or more keep it whole, --ema-epochs sets its length")
    return (f"--epochs {config.epochs} leaves no room for the recipe's EMA (its last {own} epochs, after the "
            f"learning-rate schedule): no EMA network is trained and the run reports the trained network's "
            f"accuracy; --epochs {own + 1} or more keep the EMA")


def checkpoint_paths(given: list[str]) -> list[str]:
    """--checkpoint's paths, a glob pattern (quoted, so that the shell leaves it) expanded to
    the files it matches, sorted. ValueError for a pattern that matches nothing."""
    paths = []
    for path in given:
        if not os.path.exists(path) and glob.has_magic(path):
            matches = sorted(glob.glob(path))
            if not matches:
                raise ValueError(f"--checkpoint {path}: the pattern matches no file")
            paths += matches
        else:
            paths.append(path)
    return list(dict.fromkeys(paths))


def evaluate_main(argv, prog: str = "run.py") -> int:
    parser = build_evaluate_parser(prog)
    args = parser.parse_args(argv)
    if args.allow_recipe_change and not args.recipe:
        parser.error("--allow-recipe-change only applies with --recipe FILE (the recipe file you name); "
                     "add --recipe or drop it")
    try:
        paths = checkpoint_paths(args.checkpoint)
    except ValueError as error:
        parser.error(str(error))
    device = resolve_device(parser, args.device)
    with OutputLocks() as locks:
        if args.json:            # before any work, and never over a checkpoint or the data
            try:
                Outputs(json=args.json).check(range(1), inputs=[*(("--checkpoint", path) for path in paths),
                                                                *data_input(args.data)])
                locks.acquire("--json", args.json)
            except OutputError as error:
                parser.error(str(error))
        return evaluate_all(parser, args, paths, device)


def evaluate_all(parser, args, paths: list, device) -> int:
    """Evaluate each checkpoint; write the JSON of those that could be (--json)."""
    status, payloads, datasets = 0, [], {}
    for path in paths:
        code, payload = evaluate_checkpoint(parser, args, path, device, datasets)
        status = max(status, code)
        payloads += [payload] if payload else []
    if args.json and payloads:
        payload = payloads[0] if len(paths) == 1 else {"checkpoints": payloads}
        if write_json_or_rescue(args.json, payload) != args.json:
            return max(status, 1)
    return status


def evaluate_checkpoint(parser, args, path: str, device, datasets: dict) -> tuple[int, dict | None]:
    """Re-measure one checkpoint; (exit status, its JSON record or None). `datasets` keeps
    the data loaded for earlier checkpoints."""
    try:
        model, saved = rebuild(path, device, DTYPES[args.dtype] if args.dtype else None, args.recipe,
                               args.allow_recipe_change, CLI_NAMES)
    except CheckpointError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2, None
    if saved.get("recipe_warning"):
        print(f"{parser.prog}: warning: {saved['recipe_warning']}", file=sys.stderr)
    recorded = saved.get("data") or {}
    data_name = args.data or recorded.get("data")
    if not data_name:
        parser.error("--data is needed: the checkpoint does not say what it was trained on")
    synthetic_size = args.synthetic_size or recorded.get("synthetic_size", SYNTHETIC_SIZE)
    data_seed = args.data_seed if args.data_seed is not None else recorded.get("seed", 0)
    problems = pointless_data_flags(data_name, args.download, {"--synthetic-size": args.synthetic_size,
                                                               "--data-seed": args.data_seed})
    if problems:
        parser.error(problems[0])
    try:
        if data_name == "synthetic":
            require_seeds(data_seed, name="--data-seed")
            require_synthetic_fits(synthetic_size, device)
    except ValueError as error:
        parser.error(str(error))
    data_key = (data_name, synthetic_size, data_seed)
    try:
        if data_key not in datasets:
            datasets[data_key] = load_cifar10(data_name, args.download, synthetic_size, seed=data_seed)
        data = datasets[data_key]
        if recorded.get("test_subset") and data_name == recorded.get("data"):   # the part it was measured on
            data = take_subset(data, None, recorded["test_subset"], seed=data_seed)
    except DataError as error:
        relative = "" if os.path.isabs(data_name) or data_name == "synthetic" else \
            f", a path relative to the folder {path} was trained in"
        recorded_here = "" if args.data else (f" (--data {data_name} is what {path} records it was trained "
                                              f"on{relative}; pass --data to use other data)")
        print(f"{parser.prog}: error: {error}{recorded_here}", file=sys.stderr)
        return 2, None
    config = saved["config"]
    accuracy = evaluate(model, data)
    dtype = next(model.parameters()).dtype
    print(f"checkpoint: {path} | seed {saved.get('seed')} | trained on: {saved.get('data_source')} | "
          f"kernels at training: {saved.get('kernels')} | dtype: {dtype_name(dtype)} | "
          f"device: {device_name(device)}")
    line = f"test accuracy {100 * accuracy:.2f}% on {data.source}"
    if saved.get("accuracy") is not None:
        line += (f"; recorded {100 * saved['accuracy']:.2f}% "
                 f"(difference {100 * (accuracy - saved['accuracy']):+.2f} points)")
    print(line)
    payload = {
        "checkpoint": path, "accuracy": accuracy, "recorded_accuracy": saved.get("accuracy"),
        "difference": None if saved.get("accuracy") is None else accuracy - saved["accuracy"],
        "data_source": data.source, "synthetic": data.synthetic, "dtype": dtype_name(dtype),
        "recipe": saved.get("recipe", "seed"),
        "trained": {key: saved.get(key) for key in ("seed", "data_source", "data", "dtype", "device", "kernels",
                                                    "compile", "ema_accuracy", "network_accuracy", "torch",
                                                    "recipe_file", "recipe_sha256")},
        "config": config.to_dict(), **environment(device), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return 0, payload


def convert_main(argv, prog: str = "run.py") -> int:
    parser = build_convert_parser(prog)
    args = parser.parse_args(argv)
    with OutputLocks() as locks:
        try:
            if os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
                locks.acquire("OUT", args.out)
            data = convert(args.source, args.out, args.download)
        except (DataError, OutputError) as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
    print(f"wrote {args.out}: {len(data.train_labels)} train and {len(data.test_labels)} test images "
          f"from {data.source}")
    return 0
