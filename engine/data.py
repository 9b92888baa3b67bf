"""CIFAR-10 on the device: loading, checking, and the batched augmentation loader.

Sources (`load_cifar10`):
  * a torchvision root directory holding `cifar-10-batches-py` (`download=True`
    lets torchvision fetch it there);
  * an `.npz` file with `train_images` (N, 32, 32, 3) uint8, `train_labels`,
    `test_images`, `test_labels` (what ../shared/cifar10-jpeg/unpack.py writes);
  * "synthetic": generated images whose labels a small network can learn.

The loader keeps the whole set on the device, normalised and reflect-padded
once; each epoch crops, flips (and cuts out) every training image in a few
batched tensor operations, then yields a fresh permutation in batches.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.checks import as_device, as_dtype, require_images, require_labels, require_type
from engine.config import CIFAR10_MEAN, CIFAR10_STD, NUM_CLASSES, Config


class DataError(ValueError):
    """Bad data input; the message says what to do."""


@dataclass
class Cifar10:
    """The four arrays of a split set, as uint8 (N, 32, 32, 3) images and int64 labels."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str           # human-readable: where it came from, for every report
    synthetic: bool = False


def load_cifar10(data: str, download: bool = False, synthetic_size: int = 50_000,
                 seed: int = 0) -> Cifar10:
    """Load CIFAR-10 from `data` ("synthetic", an .npz file or a torchvision root)."""
    if data == "synthetic":
        return make_synthetic(synthetic_size, seed=seed)
    if data.endswith(".npz"):
        if not os.path.isfile(data):
            raise DataError(f"no such file: {data}. Pass an existing .npz (for the JPEG copy, run "
                            f"`python3 ../shared/cifar10-jpeg/unpack.py {data}` first), a torchvision "
                            f"root directory, or 'synthetic'.")
        return _check(_load_npz(data), f"npz file {data}")
    if not os.path.exists(data):
        if download:
            os.makedirs(data, exist_ok=True)
        else:
            raise DataError(f"no such directory: {data}. Pass --download to fetch CIFAR-10 there "
                            f"with torchvision, an .npz file, or 'synthetic'.")
    if not os.path.isdir(data):
        raise DataError(f"{data} is neither a directory nor an .npz file. Pass a torchvision root "
                        f"directory (with --download to fetch CIFAR-10), an .npz file, or 'synthetic'.")
    return _check(_load_torchvision(data, download), f"CIFAR-10 (torchvision, {data})")


def _load_npz(path: str) -> dict:
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # a truncated or non-zip file
        raise DataError(f"cannot read {path} as an .npz archive ({error}). Re-create it, e.g. with "
                        f"../shared/cifar10-jpeg/unpack.py.") from None
    with archive:
        needed = ("train_images", "train_labels", "test_images", "test_labels")
        missing = [name for name in needed if name not in archive.files]
        if missing:
            raise DataError(f"{path} lacks the array(s) {', '.join(missing)}; it holds "
                            f"{', '.join(archive.files) or 'nothing'}. Expected {', '.join(needed)} "
                            f"(the layout ../shared/cifar10-jpeg/unpack.py writes).")
        return {name: archive[name] for name in needed}


def _load_torchvision(root: str, download: bool) -> dict:
    from torchvision.datasets import CIFAR10

    arrays = {}
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = CIFAR10(root, train=train, download=download)
        except RuntimeError as error:
            raise DataError(f"{root} does not hold CIFAR-10 ({error.args[0] if error.args else error}). "
                            f"Add --download to fetch it into {root} with torchvision, or pass an "
                            f".npz file or 'synthetic'.") from None
        except OSError as error:
            raise DataError(f"could not read or download CIFAR-10 in {root}: {error}. Check the "
                            f"network and the directory, or pass an .npz file or 'synthetic'.") from None
        arrays[f"{split}_images"] = np.asarray(dataset.data)
        arrays[f"{split}_labels"] = np.asarray(dataset.targets)
    return arrays


def _check(arrays: dict, source: str) -> Cifar10:
    """Validate shapes, dtypes and label ranges; raise DataError saying what is wrong."""
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
            raise DataError(f"{source}: {split}_images has shape {images.shape}; expected "
                            f"(N, 32, 32, 3) RGB images.")
        if images.dtype != np.uint8:
            raise DataError(f"{source}: {split}_images has dtype {images.dtype}; expected uint8 "
                            f"pixels 0..255.")
        if len(images) == 0:
            raise DataError(f"{source}: the {split} split is empty; it needs at least one image.")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{source}: {split}_labels has shape {labels.shape}; expected one label "
                            f"per image ({len(images)},).")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source}: {split}_labels has dtype {labels.dtype}; expected integers.")
        if labels.min() < 0 or labels.max() >= NUM_CLASSES:
            raise DataError(f"{source}: {split}_labels range over {labels.min()}..{labels.max()}; "
                            f"expected class indices 0..{NUM_CLASSES - 1}.")
    return Cifar10(arrays["train_images"], arrays["train_labels"].astype(np.int64),
                   arrays["test_images"], arrays["test_labels"].astype(np.int64), source)


def make_synthetic(train_size: int = 50_000, seed: int = 0, test_size: int | None = None) -> Cifar10:
    """CIFAR-10-shaped images a small network can learn: each class has its own
    colour tint and low-frequency pattern (both mirror-symmetric so flips keep
    the class), drawn over per-image noise. `train_size / 5` test images unless
    `test_size` is given."""
    if train_size < 10:
        raise DataError(f"--synthetic-size must be at least 10, got {train_size}")
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(NUM_CLASSES, 3, 4, 4))
    coarse = coarse + coarse[..., ::-1]                       # symmetric left-right
    patterns = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(32, 32),
                                               mode="bilinear", align_corners=False).numpy()
    tints = rng.normal(size=(NUM_CLASSES, 3, 1, 1))

    def split(n: int):
        labels = rng.integers(0, NUM_CLASSES, size=n)
        noise = rng.normal(size=(n, 3, 32, 32))
        images = 128 + 28 * patterns[labels] + 30 * tints[labels] + 40 * noise
        images = np.clip(images, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), labels.astype(np.int64)

    train_images, train_labels = split(train_size)
    test_images, test_labels = split(test_size or max(train_size // 5, 1))
    return Cifar10(train_images, train_labels, test_images, test_labels,
                   f"synthetic ({train_size} train images, seed {seed})", synthetic=True)


# ---- on the device ----

def normalize(images_uint8: np.ndarray, device, dtype) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> (N, 3, 32, 32) scaled to [0, 1] and normalised per channel."""
    images = torch.from_numpy(images_uint8).to(device).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)
    return ((images - mean) / std).to(dtype).contiguous()


def random_crop(padded: torch.Tensor, size: int, generator: torch.Generator):
    """Crop every image of (N, C, P, P) at its own offset in 0..P-size, each direction.

    Returns the crops (N, C, size, size) and the offsets (N, 2) as (row, column).
    One gather: rows and columns are index tensors built per image.
    """
    n, channels, padded_size, _ = padded.shape
    offsets = torch.randint(0, padded_size - size + 1, (n, 2), device=padded.device, generator=generator)
    steps = torch.arange(size, device=padded.device)
    rows = (offsets[:, 0:1] + steps).view(n, 1, size, 1)
    cols = (offsets[:, 1:2] + steps).view(n, 1, 1, size)
    image_index = torch.arange(n, device=padded.device).view(n, 1, 1, 1)
    channel_index = torch.arange(channels, device=padded.device).view(1, channels, 1, 1)
    return padded[image_index, channel_index, rows, cols], offsets


def random_flip(images: torch.Tensor, generator: torch.Generator):
    """Mirror each image left-right with probability 1/2; returns images and the mask."""
    flipped = torch.rand(images.shape[0], device=images.device, generator=generator) < 0.5
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images), flipped


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image at a random position (clipped at the border)."""
    n, _, height, width = images.shape
    centres = torch.randint(0, height, (n, 2), device=images.device, generator=generator)
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    top, left = (centres[:, 0] - size // 2).view(n, 1, 1), (centres[:, 1] - size // 2).view(n, 1, 1)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside.unsqueeze(1), 0)


class CifarLoader:
    """The whole split on the device. Training: augmented anew each epoch, shuffled,
    full batches only. Test: plain batches covering every image."""

    def __init__(self, images_uint8: np.ndarray, labels: np.ndarray, config: Config, train: bool,
                 device, dtype):
        require_images("images_uint8", images_uint8)
        require_labels("labels", labels, len(images_uint8))
        require_type("config", config, Config, "an engine.Config")
        device, dtype = as_device(device), as_dtype(dtype)
        self.config, self.train = config, train
        self.images = normalize(images_uint8, device, dtype)
        self.labels = torch.from_numpy(labels).to(device)
        self.batch_size = config.batch_size if train else config.test_batch_size
        if train and config.pad:
            # Padded once, kept for the whole run; crops draw from it every epoch.
            self.padded = F.pad(self.images, (config.pad,) * 4, mode="reflect")
        else:
            self.padded = self.images
        self.last_permutation = None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def augment(self, generator: torch.Generator) -> torch.Tensor:
        images = self.padded
        if self.config.pad:
            images, _ = random_crop(images, 32, generator)
        if self.config.flip:
            images, _ = random_flip(images, generator)
        if self.config.cutout > 0:
            images = cutout(images, self.config.cutout, generator)
        return images.contiguous(memory_format=torch.channels_last)

    def epoch(self, generator: torch.Generator | None = None):
        """Yield (images, labels) batches: one epoch."""
        if not self.train:
            for start in range(0, len(self.labels), self.batch_size):
                end = start + self.batch_size
                images = self.images[start:end].contiguous(memory_format=torch.channels_last)
                yield images, self.labels[start:end]
            return
        permutation = torch.randperm(len(self.labels), device=self.labels.device, generator=generator)
        self.last_permutation = permutation
        images = self.augment(generator)[permutation].contiguous(memory_format=torch.channels_last)
        labels = self.labels[permutation]
        for step in range(len(self)):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            yield images[batch], labels[batch]
