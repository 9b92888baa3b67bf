"""Every number of every recipe reaches the arithmetic, and every command-line override
reaches its number.

For each field of each recipe's Config, a tiny run (whitening, training, the EMA or the
recipe's last phase, the final evaluation: every part the numbers control) is repeated
with that field changed alone; the run's losses, accuracies and final weights must
change. Runs in one process on one CPU are bit-for-bit repeatable (the baseline is run
twice to show it), so "changed at all" is a verdict that holds on every CPU and thread
count. A number that stops reaching its arithmetic (a loss reading the class default
instead of the run's value, a flag that is parsed and dropped) leaves the run
bit-identical and fails here, named. tests/test_seed_recipe_reference.py checks the
seed recipe's arithmetic itself against an independent float64 computation.
"""
import dataclasses
import math

import pytest
import torch

from engine.cli import OVERRIDES, build_parser, recipe_config
from engine.recipe_files import find_recipe
from engine.training.data import make_synthetic
from engine.api import fit
from engine.recipes import RECIPES

# The smallest runs that still have every phase: 4 steps an epoch, 3 epochs.
TINY = dict(base_width=4, train_images=128, batch_size=32, test_batch_size=64, epochs=3,
            ema_epochs=1, whiten_images=64, whiten_bias_epochs=1)
# Fields that bound memory or batching only, and do not change what is computed.
NOT_ARITHMETIC = {"whiten_chunk", "test_batch_size"}
# Fields whose effect a float32 run need not show, each proved by its own test below: the
# loss scale is divided out again (in float32 it moves at most the rounding, on some torch
# versions not even that); in half precision it multiplies every loss.
OWN_TEST = {"loss_scale": "test_the_loss_scale_reaches_the_half_precision_products",
            # The share of test images given six views: on a tiny test set it may move no
            # prediction, so its own test counts the images it sends through the views.
            "tta_fraction": "test_the_tta_fraction_reaches_the_views"}
# Changes that a plain halving would not make visible (e.g. an epsilon far below the
# variances it is added to), or that need a value of their own kind.
CHANGED = {"bn_eps": 0.5, "initial_lr_ratio": 0.5, "cutout": 6, "ema_epochs": 2, "whiten_images": 32,
           "whiten_bias_epochs": 2, "whiten_kernel": 3, "base_width": 6}
RECIPE_CLASSES = {cls: name for name, (cls, _) in reversed(list(RECIPES.items()))}   # first name each


def tiny(cls):
    return cls.from_overrides(**{k: v for k, v in TINY.items() if k in cls.field_names()})


def changed_value(name, value):
    if name in CHANGED:
        return CHANGED[name]
    if isinstance(value, bool):
        return not value
    if isinstance(value, tuple):
        return tuple(0.5 * v for v in value)
    if isinstance(value, int):
        return value + 1
    return 0.5 * value if value else 0.1


# The fields checked by the quick subset (pytest -m "not slow"); the full suite checks them all.
QUICK_FIELDS = {"lr", "muon_lr", "label_smoothing", "brightness"}


def cases():
    for cls, name in RECIPE_CLASSES.items():
        for field in dataclasses.fields(cls):
            if field.name not in NOT_ARITHMETIC and field.name not in OWN_TEST:
                yield pytest.param(cls, field.name, id=f"{name}-{field.name}",
                                   marks=() if field.name in QUICK_FIELDS else pytest.mark.slow)


def fingerprint(config):
    data = make_synthetic(config.train_images, seed=7, test_size=64)
    result = fit(config, data, seed=3, device="cpu", dtype=torch.float32, kernels="eager")
    figures = [(row["train_loss"], row["train_accuracy"], row["val_accuracy"], row["ema_val_accuracy"])
               for row in result.epochs] + [(result.accuracy, result.ema_accuracy)]
    weights = {k: v.clone() for k, v in result.model.state_dict().items()}
    weights.update({"ema." + k: v.clone() for k, v in result.ema_model.state_dict().items()})
    return figures, weights


def same(a, b) -> bool:
    (figures_a, weights_a), (figures_b, weights_b) = a, b
    return figures_a == figures_b and weights_a.keys() == weights_b.keys() and all(
        weights_a[k].shape == weights_b[k].shape and torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


BASELINES = {}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster than two that wait on each other (and the verdict
    does not depend on it: both runs of a comparison use the same count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def baseline(cls):
    if cls not in BASELINES:
        BASELINES[cls] = fingerprint(tiny(cls))
    return BASELINES[cls]


@pytest.mark.parametrize("cls", RECIPE_CLASSES, ids=RECIPE_CLASSES.values())
def test_a_tiny_run_repeats_bit_for_bit(cls):
    assert same(baseline(cls), fingerprint(tiny(cls)))


@pytest.mark.parametrize("cls, name", cases())
def test_the_number_reaches_the_run(cls, name):
    config = tiny(cls)
    value = changed_value(name, getattr(config, name))
    changed = config.replace(**{name: value})
    assert getattr(changed, name) == value
    assert not same(baseline(cls), fingerprint(changed)), f"{name} = {value!r} left the run bit-identical"


def override_value(field, kind, default):
    if kind == float:
        return 0.5 * default if default else 0.1
    return default + 2 if field == "base_width" else default + 1          # base widths are even


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_every_override_the_recipe_takes_reaches_its_field(recipe):
    """Each option of OVERRIDES that the recipe has, given a value away from the recipe's,
    arrives in the run's Config as that value (and nothing else moves but what the recipe
    derives from it)."""
    cls, preset = RECIPES[recipe]
    default = cls.from_overrides(train_images=50_000, **preset)
    tried = 0
    for option, (field, kind, _) in OVERRIDES.items():
        if field not in cls.field_names():
            continue
        value = override_value(field, kind, getattr(default, field))
        if field == "ema_epochs":
            value = max(1, min(value, default.epochs - 1))
        if field == "ema_epochs" and value == default.ema_epochs:
            value = default.ema_epochs - 1
        args = build_parser().parse_args(["--recipe", recipe, option, str(value)])
        config = recipe_config(args, find_recipe(recipe), 50_000)
        assert getattr(config, field) == pytest.approx(value) and not math.isnan(getattr(config, field)), option
        tried += 1
    assert tried >= 4


def test_the_loss_scale_reaches_the_half_precision_products():
    """The per-sample losses are multiplied by the run's loss_scale in the logits' dtype
    before the sum and divided after it. In float16, 64 losses of about 20 times the recipe's
    1/16 are exact (a power of two) and their sum is the float64 sum to float16's rounding;
    times 4096 each product passes float16's 65,504 and the loss is infinite. So the run's
    loss_scale, not the class default, is what multiplies."""
    from engine.recipes.seed import Config, loss_function
    labels = torch.arange(64) % 10
    logits = torch.zeros(64, 10)
    logits[torch.arange(64), (labels + 1) % 10] = 20.0       # confidently wrong: a loss of about 20 each
    logits = logits.half()
    exact = loss_function(logits.double(), labels, Config()).item()
    scaled = loss_function(logits, labels, Config())
    assert scaled.dtype == torch.float16 and scaled.item() == pytest.approx(exact, rel=1e-3)
    assert math.isinf(loss_function(logits, labels, Config(loss_scale=4096.0)).item())
    assert math.isfinite(loss_function(logits.float(), labels, Config(loss_scale=4096.0)).item())


@pytest.mark.parametrize("fraction,viewed", [(0.25, 10), (0.5, 20)])
def test_the_tta_fraction_reaches_the_views(fraction, viewed):
    """The run's tta_fraction, not the class default, sets how many of 40 test images the
    reported evaluation sends through the six views (each view batch: 6 images per image)."""
    from engine.recipes.hiverge import Config
    torch.manual_seed(0)
    linear = torch.nn.Linear(3 * 32 * 32, 10)
    seen = []

    def forward(x):
        seen.append(len(x))
        return linear(x.flatten(1))
    views = Config(tta_fraction=fraction).evaluation_views(final=True)
    views(forward, torch.randn(40, 3, 32, 32))
    assert seen[0] == 40 and sum(seen[1:]) == 6 * viewed


def test_each_field_excused_from_the_run_check_is_a_field_with_a_test_of_its_own():
    fields = set().union(*(cls.field_names() for cls in RECIPE_CLASSES))
    assert set(OWN_TEST) | NOT_ARITHMETIC <= fields
    assert all(callable(globals().get(test)) and test.startswith("test_") for test in OWN_TEST.values())
