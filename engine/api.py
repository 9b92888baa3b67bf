"""The library face of the engine (`import engine`), for notebooks and scripts.

    result = engine.fit(engine.Config(...), data="synthetic", seed=0)
    result.ema_model, result.ema_accuracy, result.epochs       # network and figures
    engine.evaluate(result.ema_model, data)                    # its recipe's test accuracy
    engine.make_config("airbench94-muon", epochs=8)            # another recipe's Config

`fit` trains one run of the recipe exactly as `run.py` does (same seed, same
numbers); `CifarLoader` is the on-device loader on its own; `save_checkpoint` /
`load_checkpoint` keep a trained network with its config.
"""
from __future__ import annotations

import numbers
import os

import torch

from torch import nn

from engine.checks import (as_device, as_dtype, dtype_name, require_labels, require_network_fits, require_seeds,
                           require_synthetic_fits, require_type)
from engine.training.config import NUM_CLASSES, RecipeConfig
from engine.training.data import Cifar10, CifarLoader, load_cifar10
from engine.training.evaluation import evaluate as evaluate_loader
from engine.training.ops import make_ops
from engine.results.progress import Progress
from engine.recipes.seed import Config
from engine.results.session import final_line, flag_learned_nothing
from engine.training.train import RunResult, Trainer


def require_integer(name: str, value):
    """TypeError naming `name` unless `value` is an integer (a bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device) -> torch.dtype:
    """float16 on CUDA (the recipe), float32 on the CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def default_kernels(device, config=RecipeConfig) -> str:
    """The kernels when none are named: on CUDA the recipe's choice (`cuda_kernels` of its
    Config, an instance or the class: triton unless the recipe says eager), their eager
    twins elsewhere."""
    return config.cuda_kernels if torch.device(device).type == "cuda" else "eager"


def make_deterministic():
    """Ask torch for bit-reproducible CUDA results: deterministic algorithms only, cuDNN
    deterministic and not benchmarking, and the cuBLAS workspace setting this requires.
    Call it before any CUDA work. The CPU path is deterministic already."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def fit(config: Config | None = None, data: str | os.PathLike | Cifar10 = "synthetic", *, seed: int = 0,
        device=None, dtype: torch.dtype | None = None, kernels: str | None = None,
        compile: bool = False, synthetic_size: int = 50_000, progress: bool = False) -> RunResult:
    """Train one run of the recipe and return its `RunResult`.

    config: the recipe's Config (default: the seed recipe's `Config()`, the numbers of
      docs/recipe.md; another recipe's from `make_config(name, ...)`); its train_images is set
      to the data's size. data: "synthetic", an .npz file, an image folder, a torchvision
      CIFAR-10 root (a str or pathlib.Path), or a `Cifar10` from `load_cifar10`. seed: the run's seed (and the
      synthetic data's, as in run.py). device/dtype/kernels: default CUDA + float16 + the
      recipe's kernels (default_kernels) when present, else CPU + float32 + eager.
      compile: torch.compile (warm-up included). progress: print the per-epoch table (a bar
      in a terminal).
    The result holds `ema_model` (the reported network), `model`, `ema_accuracy`,
    `accuracy`, `epochs` (per-epoch rows), the seconds and `learned_nothing` (True when the
    accuracy stayed at chance or the loss at its start); `to_dict()` gives the figures.
    Raises TrainingDiverged if the loss turns NaN or infinite; TypeError or ValueError,
    naming the argument, for an argument of the wrong kind.
    The same seed gives the same result on the same device with the same number of CPU
    threads, one `fit` at a time: it seeds torch's global generator, which the threads of a
    process share (train concurrent runs in separate processes).
    """
    config = Config() if config is None else config
    require_type("config", config, RecipeConfig, "a recipe's Config (engine.Config, engine.make_config(...))")
    require_type("data", data, (str, os.PathLike, Cifar10),
                 "'synthetic', a path (str or pathlib.Path) or an engine.Cifar10 from load_cifar10")
    require_seeds(seed)
    for name, value in (("compile", compile), ("progress", progress)):
        require_type(name, value, bool, "True or False")
    require_integer("synthetic_size", synthetic_size)
    if kernels is not None:
        require_type("kernels", kernels, str, "'eager' or 'triton'")
    device = as_device(device) if device is not None else default_device()
    dtype = as_dtype(dtype) if dtype is not None else default_dtype(device)
    ops = make_ops(kernels or default_kernels(device, config))
    require_network_fits(config, device, dtype, name="the config's base_width")
    if not isinstance(data, Cifar10):
        data = os.fspath(data)
        if not data.strip():
            raise ValueError("data is an empty path; give 'synthetic', a CIFAR-10 root, an .npz file or an "
                             "image folder")
        if data == "synthetic":
            require_synthetic_fits(synthetic_size, device, name="synthetic_size")
        elif not os.path.exists(data):
            raise ValueError(f"data {data!r}: no such file or folder; give 'synthetic', an .npz file, an image "
                             f"folder or a CIFAR-10 root (engine.load_cifar10(path, download=True) fetches it)")
        data = load_cifar10(data, synthetic_size=synthetic_size, seed=seed)
    for split in ("train", "test"):     # a Cifar10 built by hand: labels the network can output
        require_labels(f"data.{split}_labels", getattr(data, f"{split}_labels"),
                       len(getattr(data, f"{split}_images")), NUM_CLASSES)
    config = config.replace(train_images=len(data.train_labels))
    trainer = Trainer(config, ops, device, dtype, compile=compile)
    train = CifarLoader(data.train_images, data.train_labels, config, True, device, dtype)
    test = CifarLoader(data.test_images, data.test_labels, config, False, device, dtype)
    if compile:
        trainer.warm_up(train, test)
    shown = Progress("auto" if progress else "quiet")
    shown.start_run(0, 1, seed, config.total_steps, config.epoch_count)
    try:
        result = trainer.run(train, test, seed, on_epoch=shown.epoch, on_step=shown.step,
                             on_loss=shown.loss)
    finally:
        shown.close()
    shown.end_run(final_line(result, config, flag_learned_nothing(result, len(data.test_labels))))
    return result


def evaluate(model: nn.Module, data: CifarLoader | Cifar10, views=None, batch_size: int | None = None) -> float:
    """Test accuracy of `model` (a network built by a recipe: BatchNorm in eval mode) with its
    recipe's final evaluation views (the seed recipe: flip test-time augmentation), or with
    `views(forward, images) -> logits` (engine.training.evaluation: plain_logits, flip_averaged_logits).
    data: a test `CifarLoader`, or a `Cifar10` whose test split is loaded onto the model's
    device and dtype (normalised as the recipe says; batches of `batch_size`, default the
    recipe's)."""
    require_type("model", model, torch.nn.Module, "a network, e.g. a RunResult's ema_model")
    require_type("data", data, (CifarLoader, Cifar10), "a test CifarLoader or an engine.Cifar10")
    require_type("model.config", getattr(model, "config", None), RecipeConfig,
                 "the recipe's Config: build the network with a recipe (Config.build_network, fit, load_checkpoint)")
    if batch_size is not None:
        require_integer("batch_size", batch_size)
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if views is not None and not callable(views):
        raise TypeError(f"views must be a function views(forward, images) -> logits (engine.training.evaluation: "
                        f"plain_logits, flip_averaged_logits) or None, got {type(views).__name__} {views!r}")
    config = model.config
    views = views or config.evaluation_views(final=True)
    if isinstance(data, Cifar10):
        parameter = next(model.parameters())
        config = config.replace(test_batch_size=batch_size or config.test_batch_size)
        data = CifarLoader(data.test_images, data.test_labels, config, False, parameter.device, parameter.dtype)
    parameter = next(model.parameters())
    if (data.images.dtype, data.images.device) != (parameter.dtype, parameter.device):
        raise ValueError(f"data holds {dtype_name(data.images.dtype)} images on {data.images.device} but the "
                         f"network is {dtype_name(parameter.dtype)} on {parameter.device}; build the CifarLoader "
                         f"with the network's device and dtype, or pass the Cifar10 itself")
    return evaluate_loader(model, data, views)
