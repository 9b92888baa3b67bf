"""The recipes, by the names `--recipe` takes.

Each recipe is one file here holding its numbers (a `Config` dataclass), its
network, whitening, optimizer groups, loss, augmentation and evaluation views;
its `PRESETS` name the configurations it offers (a preset is the Config's
defaults with some fields changed). Everything else is the engine's, shared.

    seed             hlb-CIFAR10's "under 10 seconds" release (the default)
    seed-long        the same with base width 128 and 80 epochs (about 95.8%)
    airbench94-muon  cifar10-airbench's airbench94 with the Muon optimizer
    hiverge          hiverge/cifar10-speedrun, the 2025 record (airbench94-muon's descendant)
"""
from __future__ import annotations

import importlib

BUILT_IN = ("seed", "airbench94_muon", "hiverge")     # the modules here, in --recipe's order (--help reads these
DEFAULT_RECIPE = "seed"                    # two lines without importing them: engine/options.py)
RECIPES = {name: (module.Config, fields)
           for module in (importlib.import_module(f"engine.recipes.{name}") for name in BUILT_IN)
           for name, fields in module.PRESETS.items()}


def config_class(recipe: str):
    """The Config class of a recipe or preset name; ValueError naming the choices."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[recipe][0]


def make_config(recipe: str = DEFAULT_RECIPE, **overrides):
    """The named recipe's Config with `overrides` applied on top of its preset."""
    cls = config_class(recipe)
    unknown = sorted(set(overrides) - cls.field_names())
    if unknown:
        raise ValueError(f"recipe {recipe} has no setting {', '.join(unknown)}")
    return cls.from_overrides(**{**RECIPES[recipe][1], **overrides})
