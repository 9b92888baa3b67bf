"""What the command line accepts: its parsers, their choices and the recipes' defaults
they show (engine/command.py answers `--help` with them before torch is imported).

Nothing here imports torch (a `--help` answers at once): the built-in recipes' names,
presets and defaults are read from the source of engine/recipes/ (their `Config` fields,
their `PRESETS`), tests/test_options.py holds what is read to the imported classes, and the
engine's own modules take their menus (dtypes, kernels, compile modes) from here.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import functools
import operator
import os

DTYPE_NAMES = ("float16", "bfloat16", "float32")
KERNEL_CHOICES = ("eager", "triton")
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
JOIN_SECONDS = 300            # how long torchrun's processes wait for each other to join (--join-timeout)
GATHER_SECONDS = 24 * 3600    # how long a finished process waits for the others' runs (--gather-timeout)
ENGINE_DIR = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------- the recipes' defaults
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _value(node: ast.AST, where: str):
    """A default written as a literal or arithmetic on literals (`1.15 * 1.35 / 512`)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_value(item, where) for item in node.elts)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.operand, where))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(node.left, where), _value(node.right, where))
    raise ValueError(f"{where}:{node.lineno}: a recipe default must be a literal or arithmetic on literals "
                     f"(the command line reads it without importing the recipe)")


@functools.lru_cache(maxsize=None)
def _module_tree(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as file:
        return ast.parse(file.read(), path)


def _module_path(module: str) -> str:
    return os.path.join(os.path.dirname(ENGINE_DIR), *module.split(".")) + ".py"


def _literals(path: str) -> dict:
    """The module's top-level `NAME = literal` assignments."""
    found = {}
    for node in _module_tree(path).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return found


def _class_defaults(path: str, name: str) -> dict:
    """{field: default} of dataclass `name` in the module at `path`, its bases' first
    (a base imported with `from engine.x import Y` is read from engine/x.py)."""
    tree = _module_tree(path)
    imported = {alias.asname or alias.name: (node.module, alias.name) for node in tree.body
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine")
                for alias in node.names}
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == name)
    fields = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in imported:
            module, base_name = imported[base.id]
            fields.update(_class_defaults(_module_path(module), base_name))
        elif isinstance(base, ast.Name):
            fields.update(_class_defaults(path, base.id))
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None):
            continue
        annotation = node.annotation
        if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", None) == "ClassVar":
            continue
        if isinstance(annotation, ast.Constant) and str(annotation.value).startswith("ClassVar"):
            continue
        fields[node.target.id] = _value(node.value, path)
    return fields


@functools.lru_cache(maxsize=None)
def _recipes_package() -> dict:
    return _literals(os.path.join(ENGINE_DIR, "recipes", "__init__.py"))


@functools.lru_cache(maxsize=None)
def built_in_recipes() -> dict:
    """{--recipe name: {field: default}} of every built-in recipe and preset, in
    engine/recipes' order."""
    recipes = {}
    for module in _recipes_package()["BUILT_IN"]:
        path = os.path.join(ENGINE_DIR, "recipes", f"{module}.py")
        fields = _class_defaults(path, "Config")
        for name, preset in _literals(path)["PRESETS"].items():
            recipes[name] = {**fields, **preset}
    return recipes


def default_recipe() -> str:
    return _recipes_package()["DEFAULT_RECIPE"]


# --------------------------------------------------------------------------- the parsers
SYNTHETIC_SIZE = 50_000              # --synthetic-size when not given

# Recipe overrides: option -> (Config field, type, what it is). Each applies to the recipes
# whose Config has that field; given with another recipe, it is refused.
OVERRIDES = {
    "--epochs": ("epochs", "positive_number", "training epochs (a fraction where the recipe's epochs are one)"),
    "--batch-size": ("batch_size", "positive_int", "training batch size"),
    "--base-width": ("base_width", "positive_int", "every layer's width scales with it (small: quick CPU runs)"),
    "--label-smoothing": ("label_smoothing", float, "label smoothing of the cross-entropy"),
    "--lr": ("lr", float, "peak learning rate of the non-bias group"),
    "--weight-decay": ("weight_decay", float, "weight decay of the non-bias group"),
    "--momentum": ("momentum", float, "Nesterov momentum"),
    "--ema-epochs": ("ema_epochs", "non_negative_int",
                     "last epochs run with EMA and at the final lr (at most --epochs - 1)"),
    "--ema-decay": ("ema_decay", float, "EMA decay per step"),
    "--cutout": ("cutout", "non_negative_int", "cutout square size (0: off)"),
    "--whiten-chunk": ("whiten_chunk", "positive_int",
                       "images per whitening statistics chunk (lower it if whitening runs out of memory)"),
}


# What a recipe without a seed-recipe override's field may have in its place (the Muon recipes'
# per-group settings), named by the refusal and by --set's "did you mean".
INSTEAD = {
    "lr": (("muon_lr", "head_lr", "bias_lr"), "its learning rates, one per group"),
    "weight_decay": (("weight_decay_per_image",), "its weight decay, per training image"),
    "momentum": (("muon_momentum", "sgd_momentum"), "its momenta, Muon's and SGD's"),
}


def close_names(name: str, names) -> list[str]:
    """The names in `names` a mistyped or foreign setting `name` may have meant: INSTEAD's
    alternatives first, then the nearest spellings."""
    names = sorted(names)
    alternatives = [n for n in INSTEAD.get(name, ((), ""))[0] if n in names]
    spelled = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return alternatives + [n for n in spelled if n not in alternatives]


def did_you_mean(name: str, names) -> str:
    """' (did you mean muon_lr?)', or '' when nothing in `names` is close to `name`."""
    close = close_names(name, names)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def refused_overrides(options: list, recipe: str, fields) -> str:
    """The refusal of recipe overrides (their options, e.g. ["--lr"]) that recipe `recipe`
    (whose Config has `fields`) has no setting for: drop them, and where it has settings in
    their place (INSTEAD), the --set that sets them, with the built-in recipe's defaults."""
    defaults = built_in_recipes().get(recipe, {})

    def shown(name: str) -> str:          # 'muon_lr 0.205' (a built-in recipe's default), else 'muon_lr'
        return f"{name} {defaults[name]:.4g}" if isinstance(defaults.get(name), float) else name
    text = (f"{', '.join(options)} do{'es' if len(options) == 1 else ''} not apply to --recipe {recipe}; "
            f"drop {'it' if len(options) == 1 else 'them'}")
    instead = []
    for option in options:
        alternatives, what = INSTEAD.get(OVERRIDES[option][0], ((), ""))
        present = [name for name in alternatives if name in fields]
        if present:
            instead.append(f"--set {present[0]}=V instead of {option} ({what}: {', '.join(map(shown, present))})")
    if instead:
        return text + ", and use " + "; ".join(instead)
    return text + " (the recipes each option applies to are listed in --help)"


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def positive_number(text: str):
    """A positive int, or a positive float where the text is not a whole number (7.59)."""
    try:
        return positive_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


SUBSET_MIN = 10     # --train-subset and --test-subset: one image of each CIFAR-10 class


def subset_size(text: str) -> int:
    """--train-subset / --test-subset: a whole number of images, at least one per class."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of images, got {text}") from None
    if value < SUBSET_MIN:
        raise argparse.ArgumentTypeError(f"must be at least {SUBSET_MIN} (one image per class), got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def output_path(text: str) -> str:
    """An output option's path: refused up front when empty or blank (it names no file)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty or blank path, which names no file; give a file name")
    return text


def program_name(argv0: str) -> str:
    """How the user started us, for messages: the installed command or run.py."""
    return "cifar-speedrun" if os.path.basename(argv0) == "cifar-speedrun" else "run.py"


def invocation(prog: str) -> str:
    return "python run.py" if prog == "run.py" else prog


def build_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    command = invocation(prog)
    p = argparse.ArgumentParser(
        prog=prog, description="Train a CIFAR-10 speed-run recipe (--recipe): hlb-CIFAR10's by default, "
                               "airbench94 with Muon, or hiverge's 2025 record.",
        epilog=f"`{command} evaluate --checkpoint PATH [--data ...]` re-measures a network saved with "
               f"--save. `{command} convert SRC OUT.npz` writes any data source as one .npz. "
               f"`{command} compare A.json B.json` says whether a change helped (Welch's t-test). "
               "`torchrun --nproc_per_node=K run.py --runs N ...` spreads the runs over K processes. "
               "The recipes, number by number: docs/recipe.md, docs/record-recipe.md and docs/hiverge-recipe.md.")
    g = p.add_argument_group("data")
    g.add_argument("--data", default="data",
                   help="a torchvision CIFAR-10 root directory, an .npz file (train_images, train_labels, "
                        "test_images, test_labels), an image folder (ROOT/train/<class>/*.png|jpg, "
                        "ROOT/test/<class>/*) or 'synthetic' (default: data)")
    g.add_argument("--data-label", metavar="TEXT",
                   help="how reports name the data, e.g. 'CIFAR-10 (JPEG copy)' (default: from --data)")
    g.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data")
    g.add_argument("--synthetic-size", type=positive_int, default=None,
                   help=f"training images of --data synthetic; test images are a fifth (default {SYNTHETIC_SIZE})")
    g.add_argument("--train-subset", type=subset_size, default=None, metavar="N",
                   help="train on N of the training images, stratified by class (each class keeps its share), "
                        "drawn by --seed; recorded in the JSON (default: all). With --test-subset: a small real "
                        "run on the CPU")
    g.add_argument("--test-subset", type=subset_size, default=None, metavar="N",
                   help="measure on N of the test images, drawn the same way (default: all)")
    g = p.add_argument_group("device and speed")
    g.add_argument("--device", default=None,
                   help="cuda, cuda:N or cpu (default: cuda when present, else cpu)")
    g.add_argument("--dtype", choices=DTYPE_NAMES, default=None,
                   help="network dtype (default: float16 on CUDA, float32 on CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the training step")
    g.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                   help="torch.compile mode, with --compile (default: default)")
    g.add_argument("--kernels", choices=KERNEL_CHOICES, default=None,
                   help="elementwise kernels: triton or eager twins (default on CUDA: the recipe's choice, triton "
                        "or, where Inductor's own code moves fewer bytes, eager; on CPU: eager)")
    g.add_argument("--deterministic", action="store_true",
                   help="torch's deterministic algorithms and cuDNN settings on CUDA (slower; see README)")
    g = p.add_argument_group("runs and output")
    g.add_argument("--runs", type=positive_int, default=1, help="independent runs (default 1)")
    g.add_argument("--seed", type=int, default=0, help="seed of the first run; run i uses seed+i (default 0)")
    g.add_argument("--json", metavar="PATH", type=output_path, help="write every run and the summary to this JSON file")
    g.add_argument("--plot", metavar="PATH.png", type=output_path,
                   help="draw every run's training curves and the spread of final accuracies (needs matplotlib)")
    g.add_argument("--save", metavar="PATH", type=output_path,
                   help="write each run's reported network (the EMA network for the seed recipes) with its "
                        "recipe, config, data and accuracy (with "
                        f"--runs above 1, PATH gets -seedS before its extension); see `{prog} evaluate`")
    g.add_argument("--quiet", action="store_true", help="print only the summary (no per-run tables or bar)")
    g.add_argument("--final-eval-only", action="store_true",
                   help="evaluate only after the last epoch (the per-epoch val columns stay empty; faster on CPU)")
    g.add_argument("--join-timeout", type=positive_float, default=JOIN_SECONDS, metavar="SECONDS",
                   help=f"under torchrun: how long each process waits for the others to start (default {JOIN_SECONDS})")
    g.add_argument("--gather-timeout", type=positive_float, default=GATHER_SECONDS, metavar="SECONDS",
                   help="under torchrun: how long a process that finished its runs waits for the others' "
                        f"(default {GATHER_SECONDS}, a day; above the longest run)")
    g = p.add_argument_group("recipe (docs/recipe.md, docs/record-recipe.md, docs/hiverge-recipe.md)")
    g.add_argument("--recipe", default=default_recipe(), metavar="{" + ",".join(built_in_recipes()) + "}|FILE.py|MODULE[,...]",
                   help="seed: hlb-CIFAR10's 'under 10 seconds' release (default); seed-long: its long "
                        "configuration, base width 128 and 80 epochs (about 95.8%%); airbench94-muon: "
                        "airbench94 with the Muon optimizer, the record recipe; hiverge: hiverge/cifar10-speedrun's 2025 "
                        "record, its descendant; or your own: a recipe file "
                        "(my_recipe.py) or module (package.module), see docs/own-recipe.md. Several, comma-separated: "
                        "a sweep over them, on the same data and seeds")
    g.add_argument("--set", action="append", default=[], metavar="NAME=V1[,V2...]",
                   help="set any field of the recipe's Config (e.g. lr=0.002, dropout=0.1); several values: "
                        "a sweep, --runs runs of each; repeated: every combination (one process, data loaded "
                        "once, compiled graphs reused)")
    g = p.add_argument_group("recipe overrides (default: the recipe's own; refused where the recipe has no "
                             "such setting)")
    for option, (field, kind, meaning) in OVERRIDES.items():
        g.add_argument(option, dest=field, default=None, metavar=field.upper(),
                       type={"positive_int": positive_int, "non_negative_int": non_negative_int,
                             "positive_number": positive_number}.get(kind, kind),
                       help=f"{meaning} ({override_defaults(field)})")
    return p


def override_defaults(field: str) -> str:
    """'seed 10, seed-long 80, airbench94-muon 8': the recipes that have `field`, with their defaults."""
    shown = []
    for name, fields in built_in_recipes().items():
        if field in fields:
            value = fields[field]
            shown.append(f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(shown).replace("%", "%%")


def build_evaluate_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} evaluate",
                                description=f"Reload a network saved with `{prog} --save` and measure its test "
                                            "accuracy (with its recipe's test-time augmentation) next to the one recorded at "
                                            "training.")

    p.add_argument("--checkpoint", required=True, nargs="+", metavar="PATH",
                   help=f"one or more files written by {prog} --save, or a quoted glob pattern ('runs/m-*.pt')")
    p.add_argument("--recipe", metavar="RECIPE", help="the recipe it was trained with: a name, or your own recipe's "
                                                      "file or module, which runs (the checkpoint names none: it "
                                                      "never runs code); checked against the SHA-256 recorded "
                                                      "at training before it runs")
    p.add_argument("--allow-recipe-change", action="store_true",
                   help="rebuild the network even when --recipe FILE differs from the file it was trained with")
    p.add_argument("--data", help=f"as {prog} --data (default: the data the checkpoint was trained on)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into --data")
    p.add_argument("--synthetic-size", type=positive_int, help="for --data synthetic (default: as recorded)")
    p.add_argument("--data-seed", type=int, help="for --data synthetic (default: as recorded)")
    p.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda when present)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, help="(default: the saved network's)")
    p.add_argument("--json", metavar="PATH", type=output_path, help="write both accuracies, the checkpoint's record, device and "
                                                  "versions to this JSON file")
    return p


def build_convert_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} convert",
                                description="Write a CIFAR-10 source as one .npz file (train_images, train_labels, "
                                            "test_images, test_labels, classes): the quickest to load and to copy.")
    p.add_argument("source", metavar="SRC", help="a torchvision CIFAR-10 root, an image folder "
                                                 "(ROOT/train/<class>/*, ROOT/test/<class>/*) or an .npz file")
    p.add_argument("out", metavar="OUT.npz", type=output_path, help="the file to write (atomically: replaced only when complete)")
    p.add_argument("--download", action="store_true", help="let torchvision download CIFAR-10 into SRC first")
    return p


# --------------------------------------------------------------------------- checks before torch loads
def pointless_data_flags(data: str, download: bool, synthetic_only: dict) -> list[str]:
    """Data flags that would do nothing for `data`. synthetic_only: {flag: value or None when
    not given} of the flags that only apply to synthetic data."""
    problems = [f"{flag} only applies to --data synthetic, not {data}; drop it"
                for flag, value in synthetic_only.items() if value is not None and data != "synthetic"]
    if download and (data == "synthetic" or data.lower().endswith(".npz")):
        problems.append(f"--download only fetches CIFAR-10 into a directory, not for --data {data}; drop it")
    return problems


def pointless_flags(args) -> list[str]:
    """Flags that would do nothing with the others given: refused, never silently ignored."""
    problems = pointless_data_flags(args.data, args.download, {"--synthetic-size": args.synthetic_size})
    if args.compile_mode is not None and not args.compile:
        problems.append("--compile-mode has no effect without --compile; add --compile or drop --compile-mode")
    return problems


# --------------------------------------------------------------------------- tune
TUNE_SAMPLERS = ("tpe", "random", "qmc", "nsga2", "cmaes", "gp")
TUNE_PRUNERS = ("median", "hyperband", "none")
TUNE_OBJECTIVES = ("result", "result+seconds")
TUNE_TRIALS = 20                      # --trials when not given
TUNE_RUNS_PER_TRIAL = 2               # --runs-per-trial when not given
TUNE_CONFIRM_RUNS = 8                 # tune's --runs (the confirmation on fresh seeds) when not given


def build_tune_parser(prog: str = "run.py") -> argparse.ArgumentParser:
    """`run.py tune`: the training command's options (data, device, recipe, overrides; --runs,
    --json, --plot and --save take the meanings said here) and the search's own."""
    p = build_parser(prog)
    p.prog = f"{prog} tune"
    p.description = ("Search a recipe's numbers with Optuna (--space), each trial the mean of --runs-per-trial "
                     "runs; write the best point as a recipe file and compare it with the recipe it started from "
                     "on fresh seeds. Needs Optuna: pip install 'cifar-speedrun[tune]'.")
    p.epilog = ("Rerunning the same command continues the study; more workers (processes, machines or torchrun "
                "ranks) on the same --storage share it. Files beside --json PATH: PATH's name with .optuna.db "
                "(the study, unless --storage), .tuned.py (the best point as a recipe), .confirm.json (the "
                "comparison on fresh seeds), .history.png, .importances.png and .pareto.png (two objectives).")
    changed = {
        "runs": (None, f"runs of the starting recipe and of the tuned one in the final comparison, on fresh seeds "
                       f"after the trials' (default {TUNE_CONFIRM_RUNS}; 0: this worker only runs trials)"),
        "seed": (0, "seed of every trial's first run (run i: seed+i); the comparison's seeds follow the trials' "
                    "(default 0)"),
        "json": (None, "the study's result: every trial, the best point(s) and the comparison; the other files "
                       "are named beside it (required)"),
        "plot": (None, "draw the comparison's runs, as for a sweep (needs matplotlib)"),
        "save": (None, "write the comparison runs' networks, as for a sweep"),
        "set": ([], "fix a field of the recipe's Config for every trial (one value)"),
        "recipe": (default_recipe(), "the recipe to tune: a built-in name, a recipe file or a module (one)"),
        "join_timeout": (None, argparse.SUPPRESS),
        "gather_timeout": (None, argparse.SUPPRESS),
    }
    for action in p._actions:
        if action.dest in changed:
            action.default, action.help = changed[action.dest]
            action.required = action.dest == "json"
        if action.dest == "runs":
            action.type = non_negative_int
    g = p.add_argument_group("tune")
    g.add_argument("--space", action="append", default=[], required=True,
                   metavar="NAME=LOW..HIGH[:log][:int]|NAME=A,B,...",
                   help="a field to search: a range (:log for a log scale, :int for whole numbers; an int field "
                        "is searched in whole numbers anyway) or choices; repeat for more fields")
    g.add_argument("--trials", type=positive_int, default=TUNE_TRIALS,
                   help=f"trials of the study in all, over every worker and every earlier command (default "
                        f"{TUNE_TRIALS})")
    g.add_argument("--runs-per-trial", type=positive_int, default=TUNE_RUNS_PER_TRIAL,
                   help=f"runs per trial, seeds --seed.. (default {TUNE_RUNS_PER_TRIAL}); a trial's value is "
                        f"their mean")
    g.add_argument("--objective", choices=TUNE_OBJECTIVES, default="result",
                   help="result: maximise the mean result; result+seconds: also minimise the mean training "
                        "seconds (a Pareto front) (default result)")
    g.add_argument("--sampler", choices=TUNE_SAMPLERS, default="tpe",
                   help="Optuna's sampler: tpe (default), random, qmc, nsga2, cmaes (needs the cmaes package), "
                        "gp (needs scipy)")
    g.add_argument("--pruner", choices=TUNE_PRUNERS, default=None,
                   help="stop trials whose per-epoch results fall behind, from the last epoch of their first run "
                        "on: median (default with one objective), hyperband or none (the only choice with two "
                        "objectives)")
    g.add_argument("--storage", metavar="URL",
                   help="an Optuna storage URL (sqlite:///FILE, postgresql://..., mysql://...) that several workers "
                        "share (default: an SQLite file beside --json)")
    g.add_argument("--study-name", metavar="NAME",
                   help="the study's name in the storage (default: --json's file name without its extension)")
    return p
