"""Small checks of what callers pass in, each raising TypeError or ValueError with a
message that names the argument and says what it should be.

Any recipe's config can call the value checks from its `__post_init__`
(`require_field_types`, `require_finite`, ...); the library face (`engine.fit`,
`engine.evaluate`, `Trainer`, `CifarLoader`) calls the type checks; the command
line calls `require_seeds` and `require_synthetic_fits` before loading any data.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import resource

import numpy as np
import torch

from engine.options import DTYPE_NAMES
from engine.plain_checks import require_path, require_type     # noqa: F401 (torch-free; offered here too)

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}     # --dtype's names (engine/options.py)
SEED_RANGE = (0, 2**64 - 1)          # what torch.manual_seed and numpy's generators both accept
# Peak bytes per synthetic training image (its fifth of test images included): on the host
# while the images are generated (float64 temporaries; about 77 kB measured), on the device
# for the normalised, padded and augmented copies of the loaders.
SYNTHETIC_MIN_IMAGES = 10                     # one per class
SYNTHETIC_HOST_BYTES_PER_IMAGE = 80_000
SYNTHETIC_DEVICE_BYTES_PER_IMAGE = 60_000


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_images(name: str, images):
    """A numpy array of uint8 images (N, 32, 32, 3), N >= 1."""
    require_type(name, images, np.ndarray, "a numpy array of uint8 images (N, 32, 32, 3)")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3) or not len(images):
        raise ValueError(f"{name} must hold uint8 images of shape (N, 32, 32, 3), got {images.dtype} {images.shape}")


def require_labels(name: str, labels, count: int, classes: int | None = None):
    """A numpy array of `count` integer labels, each in 0 .. classes - 1 when `classes` is
    given (the network's outputs: engine.training.config.NUM_CLASSES)."""
    require_type(name, labels, np.ndarray, "a numpy array of integer labels (N,)")
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (count,):
        raise ValueError(f"{name} must hold one integer label per image ({count},), got {labels.dtype} "
                         f"{labels.shape}")
    if classes is not None and count and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name} range over {labels.min()} .. {labels.max()}; the network has {classes} outputs, "
                         f"so labels must lie in 0 .. {classes - 1}")


def require_finite(name: str, value: float):
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def require_finite_non_negative(name: str, value: float):
    require_finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")


def require_finite_positive(name: str, value: float):
    require_finite(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")


def require_fraction(name: str, value: float):
    """A number in [0, 1) (momenta, decays, label smoothing)."""
    require_finite(name, value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")


def require_unit_interval(name: str, value: float):
    """A number in [0, 1] (BatchNorm momentum)."""
    require_finite(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def require_reflect_pad(pad: int, image_size: int):
    """Reflect padding needs a pad smaller than the image."""
    if pad >= image_size:
        raise ValueError(f"pad ({pad}) must be smaller than the image ({image_size}) for reflect padding")


def require_field_types(config):
    """Every int, float and bool field of the dataclass `config` holds a value of that kind
    (an int is fine for a float); TypeError naming the field otherwise."""
    kinds = {"int": (numbers.Integral, "an integer"), "float": (numbers.Real, "a number"),
             "bool": (bool, "True or False")}
    for field in dataclasses.fields(config):
        type_name = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        if type_name not in kinds:
            continue
        value = getattr(config, field.name)
        types, what = kinds[type_name]
        if not isinstance(value, types) or (type_name != "bool" and isinstance(value, bool)):
            raise TypeError(f"{field.name} must be {what}, got {type(value).__name__} {value!r:.80}")


def as_device(value, name: str = "device") -> torch.device:
    """A torch.device for 'cpu', 'cuda', 'cuda:N' or a torch.device whose CUDA exists."""
    require_type(name, value, (str, torch.device), "'cpu', 'cuda', 'cuda:N' or a torch.device")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'cuda:N', got {value!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be a CPU or CUDA device, got {value!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} is {value!r} but CUDA is not available here; use 'cpu'")
    return device


def as_dtype(value, name: str = "dtype") -> torch.dtype:
    """torch.float16, torch.bfloat16 or torch.float32 (or their names)."""
    if isinstance(value, str) and value in DTYPES:
        return DTYPES[value]
    require_type(name, value, (torch.dtype, str), f"one of torch.{', torch.'.join(DTYPES)}")
    if value not in DTYPES.values():
        raise ValueError(f"{name} must be one of torch.{', torch.'.join(DTYPES)}, got {value}")
    return value


def require_seeds(first: int, runs: int = 1, name: str = "seed"):
    """Seeds first .. first + runs - 1 all lie in what the random generators accept."""
    if isinstance(first, bool):
        raise TypeError(f"{name} must be an integer, got bool {first!r}")
    require_type(name, first, numbers.Integral, "an integer")
    low, high = SEED_RANGE
    last = first + runs - 1
    if first < low or last > high:
        span = f"{first}" if runs == 1 else f"{first} .. {last} (one per run)"
        raise ValueError(f"{name} {span} is outside {low} .. 2**64 - 1, the seeds the random generators accept")


def address_space_left() -> int | None:
    """Bytes of address space left under an address-space limit (`ulimit -v`, RLIMIT_AS):
    the soft limit less this process's VmSize; None without a limit."""
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as file:
            used = next(int(line.split()[1]) * 1024 for line in file if line.startswith("VmSize:"))
    except (OSError, ValueError, StopIteration):
        used = 0
    return max(limit - used, 0)


def available_memory() -> int | None:
    """Bytes of host memory this process may still take: the kernel's MemAvailable, lowered
    to what a cgroup (container, batch job) leaves and to what an address-space limit
    (`ulimit -v`) leaves; None when unknown."""
    available = None
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max") as limit, open("/sys/fs/cgroup/memory.current") as current:
            text = limit.read().strip()
            if text != "max":
                left = int(text) - int(current.read())
                available = left if available is None else min(available, left)
    except (OSError, ValueError):
        pass
    left = address_space_left()
    return left if available is None else available if left is None else min(available, left)


NETWORK_COPIES = 5          # the network, its EMA copy, gradients, momenta, and room for the rest


def require_network_fits(config, device: torch.device, dtype: torch.dtype, host_bytes: int | None = None,
                         device_bytes: int | None = None, name: str = "--base-width"):
    """ValueError, naming `name` (--base-width), when NETWORK_COPIES copies of `config`'s network
    (its parameters and buffers counted on the meta device, nothing allocated) cannot fit in
    host memory (CPU) or in the device's free memory (CUDA). host_bytes/device_bytes: what
    is available (default: asked)."""
    from engine.training.ops import make_ops

    network = config.build_network(make_ops("eager"), torch.device("meta"), dtype)
    elements = sum(t.numel() for t in network.parameters()) + sum(t.numel() for t in network.buffers())
    needed = NETWORK_COPIES * elements * torch.empty((), dtype=dtype).element_size()
    if device.type == "cuda":
        where, available = f"{device} memory", (device_bytes if device_bytes is not None
                                                 else torch.cuda.mem_get_info(device)[0])
    else:
        where, available = "memory", host_bytes if host_bytes is not None else available_memory()
    if available is not None and needed > available:
        width = getattr(config, "base_width", None)
        raise ValueError(f"the network{f' of base width {width}' if width else ''} has {elements / 1e6:,.0f} M "
                         f"weights and needs about {needed / 1e9:.1f} GB of {where} to train, but only "
                         f"{available / 1e9:.1f} GB is free; lower {name}")


def require_synthetic_fits(train_images: int, device: torch.device, host_bytes: int | None = None,
                           device_bytes: int | None = None, name: str = "--synthetic-size"):
    """ValueError when `train_images` synthetic images cannot fit in host memory (or, on CUDA,
    in the device's free memory). host_bytes/device_bytes: what is available (default: asked);
    name: how the message calls the size."""
    require_type(name, train_images, numbers.Integral, "an integer")
    if train_images < SYNTHETIC_MIN_IMAGES:
        raise ValueError(f"{name} must be at least {SYNTHETIC_MIN_IMAGES} (one image per class), got {train_images}")
    host_bytes = available_memory() if host_bytes is None else host_bytes
    if device_bytes is None and device.type == "cuda":
        device_bytes = torch.cuda.mem_get_info(device)[0]
    for where, per_image, available in (("memory", SYNTHETIC_HOST_BYTES_PER_IMAGE, host_bytes),
                                        (f"{device} memory", SYNTHETIC_DEVICE_BYTES_PER_IMAGE,
                                         device_bytes if device.type == "cuda" else None)):
        if available is not None and train_images * per_image > available:
            raise ValueError(f"{name} {train_images} needs about {train_images * per_image / 1e9:.1f} GB "
                             f"of {where}, but only {available / 1e9:.1f} GB is free; lower {name} "
                             f"(at most about {available // per_image})")
