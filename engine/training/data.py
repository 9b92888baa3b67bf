"""CIFAR-10 on the device: loading, checking, and the batched augmentation loader.

Sources (`load_cifar10`; any str or os.PathLike path):
  * a torchvision root directory holding `cifar-10-batches-py` (`download=True`
    lets torchvision fetch it there);
  * an `.npz` file with `train_images` (N, 32, 32, 3) uint8, `train_labels`,
    `test_images`, `test_labels` (what `convert` writes);
  * an image folder, ROOT/train/<class>/*.png|jpg and ROOT/test/<class>/*
    (engine/training/image_folder.py: decoded once, then cached as an .npz);
  * "synthetic": generated images whose labels a small network can learn.

The loader keeps the whole set on the device, normalised and reflect-padded
once; each epoch crops, flips (and cuts out) every training image in a few
batched tensor operations, then yields a fresh permutation in batches.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from engine.checks import SYNTHETIC_MIN_IMAGES, as_device, as_dtype, require_images, require_labels, require_type
from engine.training.config import IMAGE_SIZE, NUM_CLASSES, RecipeConfig
from engine.training.npz import CONVERT_HINT, DataError, read_npz, save_npz
from engine.outputs import OutputError, check_output_path

SYNTHETIC_OVERLAP = 1.1    # the other class's pattern reaches up to 1.1 x the image's own
SYNTHETIC_NOISE = 45.0     # standard deviation of the per-pixel noise (pixel values 0..255)
SOURCES = ("a torchvision CIFAR-10 root (with --download to fetch it), an .npz file, an image folder "
           "(ROOT/train/<class>/*.png|jpg and ROOT/test/<class>/*) or 'synthetic'")


@dataclass
class Cifar10:
    """The four arrays of a split set, as uint8 (N, 32, 32, 3) images and int64 labels."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str           # human-readable: where it came from, for every report
    synthetic: bool = False
    classes: tuple | None = None   # class names by label, when the source names them


def as_path(value, name: str) -> str:
    """A str or os.PathLike path as str; TypeError naming the argument otherwise."""
    try:
        return os.fsdecode(value)
    except TypeError:
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}") from None


def load_cifar10(data, download: bool = False, synthetic_size: int = 50_000,
                 seed: int = 0) -> Cifar10:
    """Load CIFAR-10 from `data`: "synthetic", an .npz file, an image folder or a torchvision root."""
    data = as_path(data, "data")
    if data == "synthetic":
        return make_synthetic(synthetic_size, seed=seed)
    unreadable = unreadable_reason(data)
    if unreadable:
        raise DataError(f"cannot read {data}: {unreadable}. Check its permissions (and its folders'); "
                        f"--download would not help.")
    if os.path.isdir(data):
        from engine.training.image_folder import is_image_folder, load_image_folder

        if is_image_folder(data):
            return _check(load_image_folder(data), f"image folder {data}")
        return _check(_load_torchvision(data, download), f"CIFAR-10 (torchvision, {data})")
    if data.lower().endswith(".npz"):
        if not os.path.isfile(data):
            raise DataError(f"no such file: {data}. Pass an existing .npz ({CONVERT_HINT}), or "
                            f"another source: {SOURCES}.")
        return _check(read_npz(data), f"npz file {data}")
    if os.path.exists(data):
        raise DataError(f"{data} is neither a directory nor an .npz file. Pass {SOURCES}.")
    if not download:
        raise DataError(f"no such directory: {data}. Pass --download to fetch CIFAR-10 there with "
                        f"torchvision, or another source: {SOURCES}.")
    created = first_missing(data)
    os.makedirs(data, exist_ok=True)
    try:
        return _check(_load_torchvision(data, download), f"CIFAR-10 (torchvision, {data})")
    except BaseException:              # a failed download (no network, Ctrl-C) leaves no folder of ours
        shutil.rmtree(created, ignore_errors=True)
        raise


def first_missing(path: str) -> str:
    """The outermost folder of `path` that does not exist yet (what os.makedirs would create first)."""
    path = os.path.abspath(path)
    while not os.path.exists(os.path.dirname(path)):
        path = os.path.dirname(path)
    return path


def unreadable_reason(path: str) -> str | None:
    """Why `path` exists but cannot be read (permission denied, a link loop), else None."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or str(error)
    if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
        return "permission denied (the folder cannot be listed)"
    return None


def convert(source, out, download: bool = False) -> Cifar10:
    """Load any supported source (see `load_cifar10`) and write it to `out` as an .npz of
    train_images, train_labels, test_images, test_labels (and classes when known).
    Atomic: a failure leaves `out` as it was. Returns the data written."""
    source, out = as_path(source, "source"), as_path(out, "out")
    if not out.lower().endswith(".npz"):
        raise DataError(f"{out}: the output must end in .npz (the extension --data recognises).")
    if os.path.isdir(out):
        raise DataError(f"{out} is a directory; give a file name ending in .npz.")
    if source == "synthetic":
        raise DataError("'synthetic' is generated on every run from --synthetic-size and --seed; "
                        "there is nothing to convert. Pass a torchvision root, an image folder or an .npz.")
    try:                                       # before the (possibly long) loading
        check_output_path("OUT", out)
    except OutputError as error:
        raise DataError(str(error)) from None
    data = load_cifar10(source, download)
    arrays = {"train_images": data.train_images, "train_labels": data.train_labels,
              "test_images": data.test_images, "test_labels": data.test_labels}
    if data.classes:
        arrays["classes"] = np.array(data.classes)
    try:
        save_npz(out, arrays)
    except OSError as error:
        raise DataError(f"cannot write {out}: {error.strerror or error}. Free some space or choose "
                        f"another place.") from None
    return data


def _load_torchvision(root: str, download: bool) -> dict:
    from torchvision.datasets import CIFAR10

    arrays = {}
    for split, train in (("train", True), ("test", False)):
        try:
            dataset = CIFAR10(root, train=train, download=download)
        except RuntimeError as error:
            raise DataError(f"{root} does not hold CIFAR-10 ({error.args[0] if error.args else error}). "
                            f"Add --download to fetch it into {root} with torchvision, or pass an "
                            f".npz file, an image folder with train/ and test/, or 'synthetic'.") from None
        except OSError as error:
            raise DataError(f"could not read or download CIFAR-10 in {root}: {error}. Check the "
                            f"network and the directory, or pass an .npz file or 'synthetic'.") from None
        arrays[f"{split}_images"] = np.asarray(dataset.data)
        arrays[f"{split}_labels"] = np.asarray(dataset.targets)
    arrays["classes"] = np.array(dataset.classes)
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
    classes = arrays.get("classes")
    classes = tuple(str(name) for name in classes) if classes is not None and classes.ndim == 1 else None
    return Cifar10(arrays["train_images"], arrays["train_labels"].astype(np.int64),
                   arrays["test_images"], arrays["test_labels"].astype(np.int64), source,
                   classes=classes)


def make_synthetic(train_size: int = 50_000, seed: int = 0, test_size: int | None = None) -> Cifar10:
    """CIFAR-10-shaped images a small network can learn, but not perfectly: each class
    has its own colour tint and low-frequency pattern (both mirror-symmetric so flips
    keep the class); each image carries its class's, plus another class's at a random
    strength of 0 to SYNTHETIC_OVERLAP times it (the classes overlap: where the other
    one is the stronger, the label cannot be told), under per-image noise. So accuracies
    stay below 100% and recipes and settings differ. The same size and seed give the same
    images. `train_size / 5` test images unless `test_size` is given."""
    if train_size < SYNTHETIC_MIN_IMAGES:
        raise DataError(f"--synthetic-size must be at least {SYNTHETIC_MIN_IMAGES}, got {train_size}")
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=(NUM_CLASSES, 3, 4, 4))
    coarse = coarse + coarse[..., ::-1]                       # symmetric left-right
    patterns = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(32, 32),
                                               mode="bilinear", align_corners=False).numpy()
    tints = rng.normal(size=(NUM_CLASSES, 3, 1, 1))
    signals = 28 * patterns + 30 * tints

    def split(n: int):
        labels = rng.integers(0, NUM_CLASSES, size=n)
        others = (labels + rng.integers(1, NUM_CLASSES, size=n)) % NUM_CLASSES      # another class each
        strengths = rng.uniform(0, SYNTHETIC_OVERLAP, size=(n, 1, 1, 1))
        noise = rng.normal(size=(n, 3, 32, 32))
        images = 128 + signals[labels] + strengths * signals[others] + SYNTHETIC_NOISE * noise
        images = np.clip(images, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), labels.astype(np.int64)

    train_images, train_labels = split(train_size)
    test_images, test_labels = split(test_size or max(train_size // 5, 1))
    return Cifar10(train_images, train_labels, test_images, test_labels,
                   f"synthetic ({train_size} train images, seed {seed})", synthetic=True)


def stratified_indices(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` indices into `labels`, in their original order, with each class's share of
    them as close as can be to its share of `labels` (largest remainders), drawn at random
    within each class by `rng`."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / len(labels)
    taken = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - taken), kind="stable")
    taken[by_remainder[:size - taken.sum()]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:count] for label, count in zip(classes, taken)]
    return np.sort(np.concatenate(chosen))


def take_subset(data: Cifar10, train: int | None = None, test: int | None = None, seed: int = 0) -> Cifar10:
    """`data` with `train` of its training images and `test` of its test images (None: all),
    stratified by class (each class keeps its share) and drawn by `seed`: the same numbers
    and seed give the same images. DataError when a split has fewer images than asked, or
    when a part is too small to hold one image of each class present."""
    arrays, named = {}, []
    for split, size, option in (("train", train, "--train-subset"), ("test", test, "--test-subset")):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        if size is None or size == len(labels):
            arrays[split] = (images, labels)
            continue
        if size > len(labels):
            raise DataError(f"{option} {size} is more than the {len(labels)} {split} images of {data.source}; "
                            f"give at most {len(labels)}, or leave {option} out to use them all.")
        present = len(np.unique(labels))
        if size < present:
            raise DataError(f"{option} {size} cannot hold one image of each of the {present} classes of "
                            f"{data.source}; give at least {present}.")
        rng = np.random.default_rng([seed, 0 if split == "train" else 1])
        chosen = stratified_indices(labels, size, rng)
        arrays[split] = (images[chosen], labels[chosen])
        named.append(f"{split} {size} of {len(labels)}")
    if not named:
        return data
    return Cifar10(*arrays["train"], *arrays["test"],
                   f"{data.source}, part: {', '.join(named)} (stratified, seed {seed})",
                   synthetic=data.synthetic, classes=data.classes)


# ---- on the device ----

def normalize(images_uint8: np.ndarray, device, dtype, mean, std) -> torch.Tensor:
    """(N, 32, 32, 3) uint8 -> (N, 3, 32, 32) scaled to [0, 1] and normalised per channel."""
    images = torch.from_numpy(images_uint8).to(device).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=device).view(1, 3, 1, 1)
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


def alternating_flip(images: torch.Tensor, epoch: int, first_epoch_flips: torch.Tensor) -> torch.Tensor:
    """Mirror the images whose `first_epoch_flips` differs from the parity of `epoch`: each
    image keeps a coin drawn once per run and alternates orientation from epoch to epoch.
    (airbench mirrors the chosen images once before padding and cropping, then the whole set
    every odd epoch; cropping a mirrored image equals mirroring a crop at the mirrored
    offset, and offsets are uniform, so the augmented images have the same distribution.)"""
    flipped = first_epoch_flips ^ bool(epoch % 2)
    return torch.where(flipped.view(-1, 1, 1, 1), images.flip(-1), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image at a random position (clipped at the border)."""
    n, _, height, width = images.shape
    centres = torch.randint(0, height, (n, 2), device=images.device, generator=generator)
    rows = torch.arange(height, device=images.device).view(1, height, 1)
    cols = torch.arange(width, device=images.device).view(1, 1, width)
    top, left = (centres[:, 0] - size // 2).view(n, 1, 1), (centres[:, 1] - size // 2).view(n, 1, 1)
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside.unsqueeze(1), 0)


def brightness_contrast_jitter(images: torch.Tensor, brightness: float, contrast: float,
                               generator: torch.Generator) -> torch.Tensor:
    """Per image, in the normalised space: x = (x + s) * c, with s uniform in
    [-brightness, brightness] and c uniform in [1 - contrast, 1 + contrast]."""
    n = images.shape[0]
    draws = torch.rand(n, 2, device=images.device, generator=generator, dtype=torch.float32) * 2 - 1
    shift = (draws[:, 0] * brightness).view(n, 1, 1, 1)
    scale = (1 + draws[:, 1] * contrast).view(n, 1, 1, 1)
    return ((images.float() + shift) * scale).to(images.dtype)


@dataclass(frozen=True)
class Augmentation:
    """What a recipe does to its training images each epoch (on the device, batched)."""
    pad: int = 0             # reflect padding each side, once; crops draw offsets 0..2*pad per axis
    flip: str = "random"     # "none", "random" (a fresh coin per image and epoch) or "alternating"
    cutout: int = 0          # cutout square size; 0 disables it
    brightness: float = 0.0  # after crop and flip: x = (x + s) * c, s in [-brightness, brightness],
    contrast: float = 0.0    # c in [1 - contrast, 1 + contrast], per image and epoch (0: off)

    def __post_init__(self):
        if self.flip not in ("none", "random", "alternating"):
            raise ValueError(f"unknown flip {self.flip!r}; choose none, random or alternating")


class CifarLoader:
    """The whole split on the device, normalised with the recipe's mean and std. Training:
    augmented anew each epoch as `config.augmentation` says, shuffled, full batches only.
    Test: plain batches covering every image."""

    def __init__(self, images_uint8: np.ndarray, labels: np.ndarray, config: RecipeConfig, train: bool,
                 device, dtype):
        require_images("images_uint8", images_uint8)
        require_labels("labels", labels, len(images_uint8))
        require_type("config", config, RecipeConfig, "a recipe's Config (engine.Config, engine.make_config(...))")
        device, dtype = as_device(device), as_dtype(dtype)
        self.config, self.train = config, train
        self.augmentation = config.augmentation if train else Augmentation(flip="none")
        self.images = normalize(images_uint8, device, dtype, config.mean, config.std)
        self.labels = torch.from_numpy(labels).to(device)
        self.batch_size = config.batch_size if train else config.test_batch_size
        if self.augmentation.pad:
            # Padded once, kept for the whole process; crops draw from it every epoch.
            self.padded = F.pad(self.images, (self.augmentation.pad,) * 4, mode="reflect")
        else:
            self.padded = self.images
        self.first_epoch_flips = None     # "alternating": each image's coin, drawn in epoch 0 of a run
        self.last_permutation = None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def augment(self, generator: torch.Generator, epoch: int = 0) -> torch.Tensor:
        aug = self.augmentation
        images = self.padded
        if aug.flip == "alternating" and epoch == 0:
            self.first_epoch_flips = torch.rand(len(images), device=images.device, generator=generator) < 0.5
        if aug.pad:
            images, _ = random_crop(images, IMAGE_SIZE, generator)
        if aug.flip == "random":
            images, _ = random_flip(images, generator)
        elif aug.flip == "alternating":
            if self.first_epoch_flips is None:
                raise RuntimeError("alternating flips start at epoch 0 of a run")
            images = alternating_flip(images, epoch, self.first_epoch_flips)
        if aug.brightness or aug.contrast:
            images = brightness_contrast_jitter(images, aug.brightness, aug.contrast, generator)
        if aug.cutout > 0:
            images = cutout(images, aug.cutout, generator)
        return images.contiguous(memory_format=torch.channels_last)

    def epoch(self, generator: torch.Generator | None = None, epoch: int = 0):
        """Yield (images, labels) batches: one epoch (`epoch`: its 0-based index in the run)."""
        if not self.train:
            for start in range(0, len(self.labels), self.batch_size):
                end = start + self.batch_size
                images = self.images[start:end].contiguous(memory_format=torch.channels_last)
                yield images, self.labels[start:end]
            return
        permutation = torch.randperm(len(self.labels), device=self.labels.device, generator=generator)
        self.last_permutation = permutation
        images = self.augment(generator, epoch)[permutation].contiguous(memory_format=torch.channels_last)
        labels = self.labels[permutation]
        for step in range(len(self)):
            batch = slice(step * self.batch_size, (step + 1) * self.batch_size)
            yield images[batch], labels[batch]
