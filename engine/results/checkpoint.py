"""Checkpoints: a trained network with what it takes to rebuild and re-check it.

A checkpoint is one `torch.save` file holding the network's state dict, the
recipe and `Config` it was built from, the data it was trained on (source text and how to
load it again), its measured test accuracy, the seed, the dtype and the kernels
used. It is written atomically (a temporary file in the same directory, then a
rename), so an interrupted save never leaves a half-written file behind.
`load_checkpoint` rebuilds the recipe's network with the eager operations, on any device.
Checkpoints written before recipes existed hold the seed recipe.
"""
from __future__ import annotations

import glob
import numbers
import os
import zipfile

import torch

from torch import nn

from engine.checks import (DTYPES, as_device, as_dtype, dtype_name, require_network_fits, require_path,
                           require_type)
from engine.training.ops import make_ops
from engine.outputs import NotAFileError, atomic_write, replaceable
from engine.recipe_files import LIBRARY_NAMES, checkpoint_recipe, recipe_record

FORMAT = "cifar-speedrun checkpoint 1"


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message says why and what to do."""


def save_checkpoint(path, model: nn.Module, config, *, accuracy: float | None = None,
                    data_source: str | None = None, data: dict | None = None, recipe: str | None = None,
                    **extra) -> str:
    """Write `model` (e.g. a run's `ema_model`) with its config to `path` atomically.

    accuracy: its measured test accuracy (flip TTA), checked again by `evaluate`;
    data_source: how reports name the data; data: how to load it again, e.g.
    {"data": "synthetic", "synthetic_size": 50000, "seed": 0}; extra: anything else
    worth keeping (seed, kernels, ...); recipe: the --recipe name (default: the config's recipe).
    `path`: a str or pathlib.Path. Returns it as a str. The file gets the user's usual
    permissions (0666 less the umask). TypeError or ValueError, naming the argument, for an
    argument of the wrong kind."""
    require_save_arguments(path, model, config, accuracy, data_source, data, recipe)
    parameter = next(model.parameters())
    payload = {
        "format": FORMAT,
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        **recipe_record(config, recipe),      # its name; an own recipe's file and SHA-256 too
        "config": config.to_dict(),
        "accuracy": accuracy,
        "data_source": data_source,
        "data": data or {},
        "dtype": dtype_name(parameter.dtype),
        "device": str(parameter.device),
        "torch": str(torch.__version__),
        **extra,
    }
    return atomic_write(path, lambda file: torch.save(payload, file))


def require_save_arguments(path, model, config, accuracy, data_source, data, recipe):
    """TypeError or ValueError, naming the argument, unless save_checkpoint's arguments make a
    checkpoint: a path to a file, a network with weights, a recipe's Config, an accuracy in
    0..1 (or None), text, a dict."""
    from engine.training.config import RecipeConfig

    path = require_path("path", path)
    if not path.strip():
        raise ValueError("path is empty; give the checkpoint's file name (e.g. 'model.pt')")
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ValueError(f"path {path} is a folder; give a file name inside it (e.g. {os.path.join(path, 'model.pt')})")
    try:
        replaceable(path)
    except NotAFileError as error:
        raise ValueError(f"path {error}") from None
    require_type("model", model, nn.Module, "a network, e.g. a RunResult's ema_model")
    if next(model.parameters(), None) is None:
        raise ValueError("model has no weights; give a network built by a recipe")
    require_type("config", config, RecipeConfig, "the recipe's Config the network was built from")
    if accuracy is not None:
        if isinstance(accuracy, bool) or not isinstance(accuracy, numbers.Real):
            raise TypeError(f"accuracy must be a number in 0..1 or None, got {type(accuracy).__name__} {accuracy!r}")
        if not 0 <= accuracy <= 1:
            raise ValueError(f"accuracy must lie in 0..1 (a fraction, not a percentage), got {accuracy}")
    for name, value, kind in (("data_source", data_source, str), ("recipe", recipe, str), ("data", data, dict)):
        if value is not None:
            require_type(name, value, kind, f"a {kind.__name__} or None")


def _missing_fields(payload: dict) -> list[str]:
    """The fields load_checkpoint needs that are absent or of the wrong kind."""
    state = payload.get("state_dict")
    accuracy = payload.get("accuracy")
    data = payload.get("data", {})
    integer = lambda value: value is None or (isinstance(value, numbers.Integral) and not isinstance(value, bool))
    problems = {
        "state_dict": not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()),
        "config": not isinstance(payload.get("config"), dict),
        "recipe": not isinstance(payload.get("recipe", "seed"), str),   # files from before recipes: seed
        "recipe_file": not isinstance(payload.get("recipe_file", ""), (str, type(None))),
        "recipe_sha256": not isinstance(payload.get("recipe_sha256", ""), (str, type(None))),
        "dtype": payload.get("dtype") not in DTYPES,
        "accuracy": accuracy is not None and not isinstance(accuracy, numbers.Real),
        "data": not isinstance(data, dict) or not isinstance(data.get("data", ""), (str, type(None)))
                or not integer(data.get("synthetic_size")) or not integer(data.get("seed")),
        "seed": not integer(payload.get("seed")),
    }
    return [name for name, bad in problems.items() if bad]


def state_mismatch(expected: dict, saved: dict) -> str | None:
    """What differs between the network's state dict and the saved one: the missing and
    unexpected names and the shapes that differ (a few of each), or None."""
    def few(names):
        names = sorted(names)
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    missing, unexpected = expected.keys() - saved.keys(), saved.keys() - expected.keys()
    shapes = [f"{name} is {tuple(saved[name].shape)}, the network's {tuple(expected[name].shape)}"
              for name in sorted(expected.keys() & saved.keys()) if saved[name].shape != expected[name].shape]
    problems = ([f"missing {few(missing)}"] if missing else []) + \
               ([f"unexpected {few(unexpected)}"] if unexpected else []) + shapes[:3]
    return "; ".join(problems) or None


def inflated_size(path: str) -> int:
    """The bytes the entries of the zip archive `path` hold once inflated (0 for a file
    that is not a zip archive: torch.load then refuses it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return 0


def read_checkpoint(path) -> dict:
    """The checkpoint's contents (tensors on the CPU); CheckpointError if unreadable,
    foreign, or lacking a field that load_checkpoint needs."""
    path = require_path("path", path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint; pass a file in it "
                              f"(e.g. '{os.path.join(path, '*.pt')}', quoted).")
    if os.path.exists(path) and not os.path.isfile(path):
        raise CheckpointError(f"{path} is not a regular file (a device, FIFO or socket), so not a checkpoint; "
                              f"pass a file written by `python run.py --save`.")
    if not os.path.isfile(path):
        root, extension = os.path.splitext(path)
        several = sorted(glob.glob(f"{glob.escape(root)}-*seed*{glob.escape(extension or '.pt')}"))
        if several:
            raise CheckpointError(f"no such checkpoint: {path}. With several runs --save {path} wrote one file "
                                  f"per run: {', '.join(several[:4])}{' ...' if len(several) > 4 else ''}; pass "
                                  f"one of them, or all with '{root}-*seed*{extension or '.pt'}' (quoted).")
        raise CheckpointError(f"no such checkpoint: {path}. Write one with `python run.py --save {path} ...`.")
    inflated = inflated_size(path)
    if inflated > 2 * os.path.getsize(path) + 2**20:
        raise CheckpointError(f"{path} would inflate to {inflated / 1e9:.1f} GB from {os.path.getsize(path) / 1e6:.1f} "
                              f"MB on reading: `run.py --save` never compresses, so it was not written by "
                              f"`run.py --save`; it is not read.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:      # truncated, not a torch file, or foreign objects inside
        raise CheckpointError(f"cannot read {path} as a checkpoint: it was not written by `run.py --save`, "
                              f"or it is damaged ({type(error).__name__}). Re-create it with "
                              f"`python run.py --save {path} ...`.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifar-speedrun checkpoint (written by `run.py --save`).")
    missing = _missing_fields(payload)
    if missing:
        raise CheckpointError(f"{path} is marked as a cifar-speedrun checkpoint but its {', '.join(missing)} "
                              f"{'is' if len(missing) == 1 else 'are'} missing or malformed: it is damaged "
                              f"or was not written by `run.py --save`. Re-create it with "
                              f"`python run.py --save {path} ...`.")
    return payload


def load_checkpoint(path, device=None, dtype: torch.dtype | None = None, recipe: str | None = None,
                    allow_recipe_change: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the saved network of its recipe (eager operations, eval mode) from `path` (str
    or pathlib.Path) on `device` (default: CUDA when present) in `dtype` (default: the saved
    one). Nothing the file holds is run: a built-in recipe is rebuilt by its name; your own
    recipe needs `recipe`, its FILE.py or package.module named by you (it runs), whose
    SHA-256 must match the one recorded at training unless `allow_recipe_change`. Returns
    (network, checkpoint dict); the dict's "config" is the recipe's `Config`, its
    "recipe_warning" a message when the recipe file was allowed to differ."""
    return rebuild(path, device, dtype, recipe, allow_recipe_change, LIBRARY_NAMES)


def rebuild(path, device, dtype, recipe, allow_recipe_change: bool, names: dict) -> tuple[nn.Module, dict]:
    """load_checkpoint, its messages naming the arguments as `names` says
    (engine.recipe_files.LIBRARY_NAMES or CLI_NAMES)."""
    if path is None:
        raise TypeError("path must be a checkpoint's path (str or pathlib.Path), got None")
    if recipe is not None and not isinstance(recipe, str):
        raise TypeError(f"{names['recipe']} must be a recipe's name, file or module (a str), "
                        f"got {type(recipe).__name__}")
    if not isinstance(allow_recipe_change, bool):
        raise TypeError(f"allow_recipe_change must be True or False, got {type(allow_recipe_change).__name__}")
    device = as_device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    dtype = as_dtype(dtype) if dtype is not None else None
    payload = read_checkpoint(path)
    try:
        config_class, warning = checkpoint_recipe(payload, os.fspath(path), recipe, allow_recipe_change, names)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    try:
        fields = {name: tuple(value) if isinstance(value, list) else value
                  for name, value in payload["config"].items()}
        config = config_class(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its config does not fit this version of the engine ({error}).") from None
    dtype = dtype or DTYPES[payload["dtype"]]
    try:                                   # an edited config must not allocate without bound
        require_network_fits(config, device, dtype, name="base_width")
    except ValueError as error:
        raise CheckpointError(f"{path}: its config describes a network that cannot be built here ({error}).") from None
    model = config.build_network(make_ops("eager"), device, dtype)
    mismatch = state_mismatch(model.state_dict(), payload["state_dict"])
    if mismatch:
        raise CheckpointError(f"{path}: the saved weights do not fit the network its config describes "
                              f"({mismatch}); it was edited or damaged. Re-create it with "
                              f"`python run.py --save {path} ...`.")
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {**payload, "config": config, "recipe_warning": warning}
