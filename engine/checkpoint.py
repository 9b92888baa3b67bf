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

import os
import tempfile

import torch

from torch import nn

from engine.ops import make_ops
from engine.recipes import config_class

FORMAT = "cifar-speedrun checkpoint 1"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class CheckpointError(ValueError):
    """A checkpoint cannot be read; the message says why and what to do."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_checkpoint(path: str, model: nn.Module, config, *, accuracy: float | None = None,
                    data_source: str | None = None, data: dict | None = None, recipe: str | None = None,
                    **extra) -> str:
    """Write `model` (e.g. a run's `ema_model`) with its config to `path` atomically.

    accuracy: its measured test accuracy (flip TTA), checked again by `evaluate`;
    data_source: how reports name the data; data: how to load it again, e.g.
    {"data": "synthetic", "synthetic_size": 50000, "seed": 0}; extra: anything else
    worth keeping (seed, kernels, ...); recipe: the --recipe name (default: the config's recipe).
    Returns `path`."""
    parameter = next(model.parameters())
    payload = {
        "format": FORMAT,
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
        "recipe": recipe or config.recipe,
        "config": config.to_dict(),
        "accuracy": accuracy,
        "data_source": data_source,
        "data": data or {},
        "dtype": dtype_name(parameter.dtype),
        "device": str(parameter.device),
        "torch": str(torch.__version__),
        **extra,
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    return path


def read_checkpoint(path: str) -> dict:
    """The checkpoint's contents (tensors on the CPU); CheckpointError if unreadable."""
    if not os.path.isfile(path):
        raise CheckpointError(f"no such checkpoint: {path}. Write one with `python run.py --save {path} ...`.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:      # truncated, not a torch file, or foreign objects inside
        raise CheckpointError(f"cannot read {path} as a checkpoint: it was not written by `run.py --save`, "
                              f"or it is damaged ({type(error).__name__}). Re-create it with "
                              f"`python run.py --save {path} ...`.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cifar-speedrun checkpoint (written by `run.py --save`).")
    return payload


def load_checkpoint(path: str, device=None, dtype: torch.dtype | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the saved network of its recipe (eager operations, eval mode) on `device`
    (default: CUDA when present) in `dtype` (default: the saved one). Returns (network,
    checkpoint dict); the dict's "config" is the recipe's `Config`."""
    payload = read_checkpoint(path)
    try:
        fields = {name: tuple(value) if isinstance(value, list) else value
                  for name, value in payload["config"].items()}
        config = config_class(payload.get("recipe", "seed"))(**fields)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: its config does not fit this version of the engine ({error}).") from None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or DTYPES[payload["dtype"]]
    model = config.build_network(make_ops("eager"), device, dtype)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: the saved weights do not fit the network its config "
                              f"describes ({str(error).splitlines()[0]}).") from None
    model.eval()
    return model, {**payload, "config": config}
