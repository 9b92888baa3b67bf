"""Your own recipe: `--recipe path/to/my_recipe.py` or `--recipe package.module`.

A recipe is a module of the shape of engine/recipes/seed.py: a frozen dataclass
named `Config` deriving from engine.training.config.RecipeConfig, holding every number,
with the methods and properties the engine calls (RECIPE_PROTOCOL below, the one
list of them; docs/own-recipe.md says how to write one). Optionally a `PRESETS`
dict like the built-in recipes' ({name: fields changed}); the one named after
the Config's `recipe` is applied.

`find_recipe(spec)` turns what `--recipe` was given into a `Recipe`: a built-in
name (seed, seed-long, airbench94-muon), a .py file, or an importable dotted
module name. A loaded module is checked once by `check_recipe_module`, whose
ValueError names everything it lacks. A checkpoint records the recipe's file
and the SHA-256 of its contents (`recipe_record`), but nothing a checkpoint holds
is ever imported: `checkpoint_recipe` rebuilds an own recipe only from the file the
caller names, after comparing its SHA-256 with the recorded one (a different file is
refused unless the caller allows it). Loading code that exits or raises
KeyboardInterrupt is a one-line ValueError like any other failure.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import signal
import sys
import threading
from dataclasses import dataclass, field

from engine.checks import require_type
from engine.options import KERNEL_CHOICES
from engine.training.config import RecipeConfig
from engine.recipes import RECIPES

# What the engine asks of a recipe's Config, besides the RecipeConfig fields
# (train_images, batch_size, test_batch_size, epochs, base_width): (name, what it is).
RECIPE_PROTOCOL = (
    ("recipe", "its own name, a class attribute: recipe: ClassVar[str] = 'my-recipe'"),
    ("reported_as", "what reports call a run's result, e.g. 'EMA accuracy'"),
    ("mean", "per-channel mean of the training images (pixels / 255), a field"),
    ("std", "per-channel standard deviation, a field"),
    ("whiten_kernel", "side of the whitening patches, a field"),
    ("whiten_chunk", "images per whitening statistics chunk, a field"),
    ("augmentation", "property: an engine.training.data.Augmentation"),
    ("build_network", "method (ops, device, dtype) -> the network, with .config set"),
    ("set_whitening", "method (model, train_images, ops): sets the frozen whitening filters"),
    ("optimizer_groups", "method (model) -> list of engine.training.optim.Group"),
    ("loss", "method (logits, labels) -> the loss to back-propagate"),
    ("has_ema", "whether the reported network is an EMA copy"),
    ("ema_updates_after", "method (step) -> whether the EMA acts after optimizer step `step`"),
    ("ema_step_decay", "the EMA's decay per update (used when has_ema)"),
    ("evaluation_views", "method (final) -> views(forward, images) -> logits (engine.training.evaluation)"),
    ("warm_up_config", "method () -> a short Config whose run compiles every function"),
)
MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@dataclass(frozen=True)
class Recipe:
    """A recipe found by `find_recipe`: its name in reports, its Config class, the preset
    fields applied before overrides, and where it came from (file and its SHA-256, or
    the dotted module name; none for a built-in)."""
    name: str
    config_class: type
    preset: dict = field(default_factory=dict)
    file: str | None = None
    sha256: str | None = None
    module: str | None = None

    @property
    def builtin(self) -> bool:
        return self.file is None and self.module is None

    def make_config(self, **overrides):
        unknown = sorted(set(overrides) - self.config_class.field_names())
        if unknown:
            raise ValueError(f"recipe {self.name} has no setting {', '.join(unknown)}")
        return self.config_class.from_overrides(**{**self.preset, **overrides})

    def record(self) -> dict:
        """What the JSON and a checkpoint keep of where the recipe came from."""
        if self.builtin:
            return {"recipe": self.name}
        return {"recipe": self.name, "recipe_file": self.file, "recipe_sha256": self.sha256,
                **({"recipe_module": self.module} if self.module else {})}


def file_sha256(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.sha256(file.read()).hexdigest()


def lacking(config: type) -> list[str]:
    """The names of RECIPE_PROTOCOL a Config class lacks (ema_step_decay only matters when
    the class says has_ema; a recipe without EMA sets has_ema = False)."""
    return [name for name, _ in RECIPE_PROTOCOL if not hasattr(config, name)
            and not (name == "ema_step_decay" and getattr(config, "has_ema", None) is False)]


def check_recipe_module(module, where: str):
    """ValueError naming everything `module` lacks to be a recipe (RECIPE_PROTOCOL)."""
    config = getattr(module, "Config", None)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config) and issubclass(config, RecipeConfig)):
        raise ValueError(f"{where}: a recipe defines a dataclass named Config deriving from "
                         f"engine.training.config.RecipeConfig (or from a built-in recipe's Config, e.g. "
                         f"engine.recipes.seed.Config); this one has none (see docs/own-recipe.md)")
    missing = [f"{name} ({dict(RECIPE_PROTOCOL)[name]})" for name in lacking(config)]
    if missing:
        raise ValueError(f"{where}: its Config lacks {'; '.join(missing)} (see docs/own-recipe.md)")
    name = config.__dict__.get("recipe") if isinstance(config.__dict__.get("recipe"), str) else None
    if not name or name in RECIPES:
        raise ValueError(f"{where}: its Config needs a name of its own, not "
                         f"{config.recipe!r}: add `recipe: ClassVar[str] = 'my-recipe'` (reports and "
                         f"checkpoints tell recipes apart by it)")
    if config.cuda_kernels not in KERNEL_CHOICES:
        raise ValueError(f"{where}: its Config's cuda_kernels (the kernels on CUDA without --kernels) is "
                         f"{config.cuda_kernels!r}; give one of {', '.join(KERNEL_CHOICES)}")
    presets = getattr(module, "PRESETS", {})
    if not isinstance(presets, dict) or not isinstance(presets.get(name, {}), dict):
        raise ValueError(f"{where}: PRESETS must be a dict of {{name: {{field: value}}}}")
    unknown = sorted(set(presets.get(name, {})) - config.field_names())
    if unknown:
        raise ValueError(f"{where}: PRESETS[{name!r}] sets {', '.join(unknown)}, which its Config lacks")


class _Interrupted(KeyboardInterrupt):
    """A real Ctrl-C while a recipe file loads (not one the file raised itself)."""


def _load_file(path: str):
    name = "cifar_speedrun_recipe_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module             # dataclasses look their module up while building the class
    try:
        with _real_interrupts():
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


@contextlib.contextmanager
def _real_interrupts():
    """Ctrl-C during the block raises _Interrupted, so that a KeyboardInterrupt the loaded
    code raises itself is told apart from the user's (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum, frame):
        raise _Interrupted()
    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)


def _import(load, where: str):
    """`load()` (an import of a recipe the user named); what the loaded code raises or exits
    with, sys.exit and KeyboardInterrupt included, as a ValueError of one line."""
    try:
        return load()
    except _Interrupted:
        raise KeyboardInterrupt() from None
    except BaseException as error:         # SystemExit, KeyboardInterrupt, GeneratorExit included
        raise _loading_error(where, error) from None


def _loading_error(where: str, error: BaseException) -> ValueError:
    line = f" (line {error.lineno})" if isinstance(error, SyntaxError) and error.lineno else ""
    what = ("it called sys.exit" if isinstance(error, SystemExit) else
            f"it raised {type(error).__name__}" if not isinstance(error, Exception) else None)
    try:
        text = " ".join(str(error).split())[:300]
    except Exception:                      # an exception whose text cannot be made
        text = "(its message cannot be shown)"
    detail = f"{what} ({text})" if what and text else what or f"{type(error).__name__}: {text}{line}"
    return ValueError(f"{where} could not be loaded: {detail}; "
                      f"fix the file or give a built-in recipe ({', '.join(RECIPES)})")


def recipe_source(spec: str, option: str = "--recipe") -> str | None:
    """The file a recipe `spec` loads, found without running it: a .py file's absolute path,
    a dotted module's file (its parent packages are imported to find it), or None for a
    built-in name. ValueError (one line) when `spec` names no recipe file or module."""
    require_type(option, spec, str, "a recipe: a built-in name, a recipe file (.py) or a module name")
    where = f"{option} {spec if spec.strip() else repr(spec)}"
    if spec in RECIPES:
        return None
    if os.path.isdir(spec) and not (MODULE_NAME.match(spec) and not spec.endswith(".py")):
        raise ValueError(f"{where}: is a folder, not a recipe file; give the .py file in it")
    if spec.endswith(".py") or os.sep in spec or os.path.isfile(spec):
        if not os.path.isfile(spec):
            if os.path.exists(spec):
                raise ValueError(f"{where}: not a regular file; give a recipe file (my_recipe.py)")
            raise ValueError(f"{where}: no such file; give a built-in recipe ({', '.join(RECIPES)}), "
                             f"a recipe file (my_recipe.py) or a module (package.module)")
        if not spec.endswith(".py"):
            raise ValueError(f"{where}: a recipe file is Python source ending in .py; give a .py file "
                             f"(or a built-in recipe: {', '.join(RECIPES)})")
        return os.path.abspath(spec)
    if not MODULE_NAME.match(spec):
        raise ValueError(f"{where}: choose a built-in recipe ({', '.join(RECIPES)}), a recipe file "
                         f"(my_recipe.py) or a module (package.module)")
    try:
        found = _import(lambda: importlib.util.find_spec(spec), where)
    except ValueError as error:
        if isinstance(error.__context__, ModuleNotFoundError):
            found = None
        else:
            raise
    if found is None:
        raise ValueError(f"{where}: not a built-in recipe ({', '.join(RECIPES)}) and no module "
                         f"of that name can be imported; give a recipe file (my_recipe.py) or a module "
                         f"on the Python path")
    return found.origin if found.origin and os.path.isfile(found.origin) else None


def find_recipe(spec: str, option: str = "--recipe") -> Recipe:
    """The recipe `spec` names: a built-in name, a .py file, or a dotted module name.
    ValueError with a one-line message when it is none of these, cannot be imported, or
    lacks what a recipe needs (messages name `option`). A file or module named here runs."""
    path = recipe_source(spec, option)
    where = f"{option} {spec}"
    if spec in RECIPES:
        cls, preset = RECIPES[spec]
        return Recipe(spec, cls, dict(preset))
    if spec.endswith(".py") or os.sep in spec or os.path.isfile(spec):
        module = _import(lambda: _load_file(path), where)
        module_name = None
    else:
        module = _import(lambda: importlib.import_module(spec), where)
        path, module_name = getattr(module, "__file__", None), spec
    check_recipe_module(module, where)
    name = module.Config.recipe
    return Recipe(name, module.Config, dict(getattr(module, "PRESETS", {}).get(name, {})), file=path,
                  sha256=file_sha256(path) if path else None, module=module_name)


def recipe_record(config, recipe: str | None = None) -> dict:
    """What a checkpoint records of `config`'s recipe: its name (`recipe`, default the
    config's), and for a recipe outside engine/recipes/ its file and the file's SHA-256,
    so that `evaluate` can rebuild it (a Config defined where no file holds it, e.g. a
    notebook, records its name alone)."""
    cls = type(config)
    if any(cls is builtin for builtin, _ in RECIPES.values()):
        return {"recipe": recipe or config.recipe}
    try:
        path = inspect.getfile(cls)
    except (TypeError, OSError):
        return {"recipe": recipe or config.recipe}
    if not os.path.isfile(path):
        return {"recipe": recipe or config.recipe}
    module = cls.__module__
    importable = module in sys.modules and not module.startswith("cifar_speedrun_recipe_") and module != "__main__"
    return {"recipe": recipe or config.recipe, "recipe_file": os.path.abspath(path),
            "recipe_sha256": file_sha256(path), **({"recipe_module": module} if importable else {})}


CLI_NAMES = {"recipe": "--recipe", "allow_recipe_change": "--allow-recipe-change"}
LIBRARY_NAMES = {"recipe": "recipe", "allow_recipe_change": "allow_recipe_change=True"}


def checkpoint_recipe(payload: dict, where: str, recipe: str | None = None, allow_recipe_change: bool = False,
                      names: dict = LIBRARY_NAMES) -> tuple[type, str | None]:
    """(Config class, warning or None) to rebuild a checkpoint's network. Nothing the
    checkpoint holds is ever imported or run: a built-in recipe is rebuilt by its name; an
    own recipe only from `recipe`, the file or module the caller names, whose SHA-256 is
    compared with the recorded one before it is imported (a different file is refused unless
    `allow_recipe_change`; then the warning says so). ValueError (one line, naming the
    arguments as `names` says: the library's or the command line's) says what to do."""
    option, allow = names["recipe"], names["allow_recipe_change"]
    saved_name = payload.get("recipe", "seed")
    saved_file, saved_hash = payload.get("recipe_file"), payload.get("recipe_sha256")
    if recipe is None:
        if saved_name in RECIPES:
            return RECIPES[saved_name][0], None
        recorded = f" (recorded as {saved_file!r})" if saved_file else ""
        raise ValueError(f"{where} was trained with your own recipe {saved_name!r}{recorded}; a checkpoint never "
                         f"runs code, so name that recipe's file yourself with {option} FILE (it is Python: "
                         f"it runs, so name only a file you trust)")
    source = recipe_source(recipe, option)
    warning = None
    if source is not None and saved_hash:
        now = file_sha256(source)
        if now != saved_hash:
            change = (f"{option} {recipe} is not the recipe file {where} was trained with (SHA-256 "
                      f"{now[:12]} now, {saved_hash[:12]} recorded)")
            if not allow_recipe_change:
                raise ValueError(f"{change}; it was not run. Give the file it was trained with, or add {allow} "
                                 f"to rebuild the network from this one")
            warning = f"{change}: the network is rebuilt from it ({allow})"
    found = find_recipe(recipe, option)
    if found.name != saved_name and found.config_class.recipe != saved_name:
        raise ValueError(f"{where} was trained with recipe {saved_name!r}, but {option} {recipe} is "
                         f"recipe {found.name!r}; give the recipe it was trained with")
    return found.config_class, warning
