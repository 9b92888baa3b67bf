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

import os

import torch

from torch import nn

from engine.data import Cifar10, CifarLoader, load_cifar10
from engine.evaluation import evaluate as evaluate_loader
from engine.ops import make_ops
from engine.progress import Progress
from engine.recipes.seed import Config
from engine.train import RunResult, Trainer


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device) -> torch.dtype:
    """float16 on CUDA (the recipe), float32 on the CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def default_kernels(device) -> str:
    """The Triton kernels on CUDA, their eager twins elsewhere."""
    return "triton" if torch.device(device).type == "cuda" else "eager"


def make_deterministic():
    """Ask torch for bit-reproducible CUDA results: deterministic algorithms only, cuDNN
    deterministic and not benchmarking, and the cuBLAS workspace setting this requires.
    Call it before any CUDA work. The CPU path is deterministic already."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def fit(config: Config | None = None, data: str | Cifar10 = "synthetic", *, seed: int = 0,
        device=None, dtype: torch.dtype | None = None, kernels: str | None = None,
        compile: bool = False, synthetic_size: int = 50_000, progress: bool = False) -> RunResult:
    """Train one run of the recipe and return its `RunResult`.

    config: the recipe's Config (default: the seed recipe's `Config()`, the numbers of
      docs/recipe.md; another recipe's from `make_config(name, ...)`); its train_images is set
      to the data's size. data: "synthetic", an .npz file, an image folder, a torchvision
      CIFAR-10 root, or a `Cifar10` from `load_cifar10`. seed: the run's seed (and the
      synthetic data's, as in run.py). device/dtype/kernels: default CUDA + float16 + triton
      when present, else CPU + float32 + eager. compile: torch.compile (warm-up included).
      progress: print the per-epoch table (a bar in a terminal).
    The result holds `ema_model` (the reported network), `model`, `ema_accuracy`,
    `accuracy`, `epochs` (per-epoch rows) and the seconds; `to_dict()` gives the figures.
    Raises TrainingDiverged if the loss turns NaN or infinite.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    if not isinstance(data, Cifar10):
        data = load_cifar10(data, synthetic_size=synthetic_size, seed=seed)
    config = (config or Config()).replace(train_images=len(data.train_labels))
    trainer = Trainer(config, make_ops(kernels or default_kernels(device)), device, dtype, compile=compile)
    train = CifarLoader(data.train_images, data.train_labels, config, True, device, dtype)
    test = CifarLoader(data.test_images, data.test_labels, config, False, device, dtype)
    if compile:
        trainer.warm_up(train, test)
    shown = Progress("auto" if progress else "quiet")
    shown.start_run(0, 1, seed, config.total_steps, config.epochs)
    try:
        result = trainer.run(train, test, seed, on_epoch=shown.epoch, on_step=shown.step)
    finally:
        shown.close()
    shown.end_run(f"final: EMA accuracy {100 * result.ema_accuracy:.2f}%, accuracy {100 * result.accuracy:.2f}%")
    return result


def evaluate(model: nn.Module, data: CifarLoader | Cifar10, views=None, batch_size: int | None = None) -> float:
    """Test accuracy of `model` (a network built by a recipe: BatchNorm in eval mode) with its
    recipe's final evaluation views (the seed recipe: flip test-time augmentation), or with
    `views(forward, images) -> logits` (engine.evaluation: plain_logits, flip_averaged_logits).
    data: a test `CifarLoader`, or a `Cifar10` whose test split is loaded onto the model's
    device and dtype (normalised as the recipe says; batches of `batch_size`, default the
    recipe's)."""
    config = model.config
    views = views or config.evaluation_views(final=True)
    if isinstance(data, Cifar10):
        parameter = next(model.parameters())
        config = config.replace(test_batch_size=batch_size or config.test_batch_size)
        data = CifarLoader(data.test_images, data.test_labels, config, False, parameter.device, parameter.dtype)
    return evaluate_loader(model, data, views)
