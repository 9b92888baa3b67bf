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
and the SHA-256 of its contents (`recipe_record`), so that it can be rebuilt
later and a changed or missing file is said plainly (`checkpoint_recipe`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import sys
from dataclasses import dataclass, field

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
        raise ValueError(f"--recipe {where}: a recipe defines a dataclass named Config deriving from "
                         f"engine.training.config.RecipeConfig (or from a built-in recipe's Config, e.g. "
                         f"engine.recipes.seed.Config); this one has none (see docs/own-recipe.md)")
    missing = [f"{name} ({dict(RECIPE_PROTOCOL)[name]})" for name in lacking(config)]
    if missing:
        raise ValueError(f"--recipe {where}: its Config lacks {'; '.join(missing)} (see docs/own-recipe.md)")
    name = config.__dict__.get("recipe") if isinstance(config.__dict__.get("recipe"), str) else None
    if not name or name in RECIPES:
        raise ValueError(f"--recipe {where}: its Config needs a name of its own, not "
                         f"{config.recipe!r}: add `recipe: ClassVar[str] = 'my-recipe'` (reports and "
                         f"checkpoints tell recipes apart by it)")
    presets = getattr(module, "PRESETS", {})
    if not isinstance(presets, dict) or not isinstance(presets.get(name, {}), dict):
        raise ValueError(f"--recipe {where}: PRESETS must be a dict of {{name: {{field: value}}}}")
    unknown = sorted(set(presets.get(name, {})) - config.field_names())
    if unknown:
        raise ValueError(f"--recipe {where}: PRESETS[{name!r}] sets {', '.join(unknown)}, which its Config lacks")


def _load_file(path: str):
    name = "cifar_speedrun_recipe_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module             # dataclasses look their module up while building the class
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _loading_error(where: str, error: BaseException) -> ValueError:
    line = f" (line {error.lineno})" if isinstance(error, SyntaxError) and error.lineno else ""
    return ValueError(f"--recipe {where} could not be loaded: {type(error).__name__}: {error}{line}; "
                      f"fix the file or give a built-in recipe ({', '.join(RECIPES)})")


def find_recipe(spec: str) -> Recipe:
    """The recipe `spec` names: a built-in name, a .py file, or a dotted module name.
    ValueError with a one-line message when it is none of these, cannot be imported, or
    lacks what a recipe needs."""
    if spec in RECIPES:
        cls, preset = RECIPES[spec]
        return Recipe(spec, cls, dict(preset))
    if spec.endswith(".py") or os.sep in spec or os.path.isfile(spec):
        if not os.path.isfile(spec):
            raise ValueError(f"--recipe {spec}: no such file; give a built-in recipe ({', '.join(RECIPES)}), "
                             f"a recipe file (my_recipe.py) or a module (package.module)")
        path = os.path.abspath(spec)
        try:
            module = _load_file(path)
        except Exception as error:
            raise _loading_error(spec, error) from None
        module_name = None
    elif MODULE_NAME.match(spec):
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as error:
            if error.name and spec.startswith(error.name):
                raise ValueError(f"--recipe {spec}: not a built-in recipe ({', '.join(RECIPES)}) and no module "
                                 f"of that name can be imported; give a recipe file (my_recipe.py) or a module "
                                 f"on the Python path") from None
            raise _loading_error(spec, error) from None
        except Exception as error:
            raise _loading_error(spec, error) from None
        path, module_name = getattr(module, "__file__", None), spec
    else:
        raise ValueError(f"--recipe {spec}: choose a built-in recipe ({', '.join(RECIPES)}), a recipe file "
                         f"(my_recipe.py) or a module (package.module)")
    check_recipe_module(module, spec)
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


def checkpoint_recipe(payload: dict, where: str, recipe: str | None = None) -> tuple[type, str | None]:
    """(Config class, warning or None) to rebuild a checkpoint's network: from `recipe` (what
    `evaluate --recipe` was given) when given, else from what the checkpoint records (a
    built-in name, or a recipe file that must still be there). ValueError says what to do
    when it cannot be found; the warning says when the file changed since training."""
    saved_name = payload.get("recipe", "seed")
    saved_file, saved_hash = payload.get("recipe_file"), payload.get("recipe_sha256")
    if recipe is not None:
        found = find_recipe(recipe)
        if found.name != saved_name and found.config_class.recipe != saved_name:
            raise ValueError(f"{where} was trained with recipe {saved_name!r}, but --recipe {recipe} is "
                             f"recipe {found.name!r}; give the recipe it was trained with")
    elif saved_file:
        if not os.path.isfile(saved_file):
            raise ValueError(f"{where} was trained with the recipe file {saved_file}, which is not there "
                             f"any more; pass --recipe FILE with that recipe's file")
        found = find_recipe(saved_file)
    elif saved_name in RECIPES:
        return RECIPES[saved_name][0], None
    else:
        raise ValueError(f"{where} was trained with recipe {saved_name!r}, which is not built in and whose "
                         f"file the checkpoint does not record; pass --recipe FILE with that recipe's file")
    warning = None
    if saved_hash and found.sha256 and found.sha256 != saved_hash:
        warning = (f"the recipe file {found.file} changed since {where} was written (SHA-256 "
                   f"{found.sha256[:12]} now, {saved_hash[:12]} then): the network is rebuilt from "
                   f"today's file")
    return found.config_class, warning
