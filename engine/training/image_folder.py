"""CIFAR-10 as a folder of image files, decoded once and then read from an .npz cache.

Layout (that of the popular image-file copies of CIFAR-10):

    ROOT/train/<class>/<image>      ROOT/test/<class>/<image>

Images are 32x32 RGB PNG or JPEG files (.png, .jpg, .jpeg, any case); names
starting with a dot are ignored. Labels follow torchvision's CIFAR-10 classes
(airplane 0, automobile 1, ..., truck 9) when every class folder is named after
one of them, else the sorted folder names get 0, 1, ...; images are read in
sorted file-name order.

Decoding 60,000 files takes seconds, so the arrays are cached as an .npz: inside
ROOT when it is writable, else in ~/.cache/cifar-speedrun (or $XDG_CACHE_HOME),
in a file named after ROOT's path. The cache records a fingerprint of the file
list (names, sizes, modification times, and each file's inode number and status-change
time, which no copy tool or `touch -r` can set back), so a changed folder is decoded
anew, even when an image was replaced by another of the same size and modification time.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings

import numpy as np

from engine.training.config import NUM_CLASSES
from engine.training.npz import ARRAYS, DataError, read_npz, save_npz

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CACHE_NAME = "cifar-speedrun-cache.npz"
CACHE_FORMAT = "2"        # raise when the cache's layout or decoding changes


def is_image_folder(root: str) -> bool:
    """Whether `root` is meant as an image folder: a train/ or test/ folder and no torchvision files."""
    return (any(os.path.isdir(os.path.join(root, split)) for split in SPLITS)
            and not os.path.isdir(os.path.join(root, "cifar-10-batches-py")))


def load_image_folder(root: str) -> dict:
    """The four arrays (and `classes`) of the image folder `root`, from the cache when it
    matches the folder's files, else decoded and cached. DataError names what is wrong."""
    try:
        listing = list_images(root)
        fingerprint = folder_fingerprint(listing)
    except OSError as error:           # a symbolic link loop, an unreadable folder, a file gone meanwhile
        raise DataError(f"cannot read {error.filename or root} in the image folder {root} "
                        f"({error.strerror or error}); fix its permissions or the link, or move it out.") from None
    classes, labels = class_labels([name for name, _ in listing["train"]])
    unknown = sorted({name for name, _ in listing["test"]} - set(labels))
    if unknown:
        raise DataError(f"{os.path.join(root, 'test')} has class folder(s) {', '.join(unknown)} that "
                        f"{os.path.join(root, 'train')} lacks; the network learns only the training "
                        f"classes. Rename or remove them.")
    places = cache_places(root)
    for place in places:
        cached = read_cache(place, fingerprint)
        if cached is not None:
            return cached
    count = sum(len(files) for split in SPLITS for _, files in listing[split])
    print(f"decoding the {count} images of {root} (once: they are cached for later runs)",
          file=sys.stderr, flush=True)
    arrays = {"classes": np.array(classes), "fingerprint": np.array(fingerprint)}
    for split in SPLITS:
        arrays[f"{split}_images"] = decode_images([entry.path for _, files in listing[split] for entry in files])
        arrays[f"{split}_labels"] = np.array([labels[name] for name, files in listing[split]
                                              for _ in files], dtype=np.int64)
    write_cache(places, arrays)
    return {name: arrays[name] for name in (*ARRAYS, "classes")}


def list_images(root: str) -> dict:
    """{split: [(class name, [its image files as os.DirEntry, by name]), ...]}, classes by name."""
    listing = {}
    for split in SPLITS:
        folder = os.path.join(root, split)
        if not os.path.isdir(folder):
            raise DataError(f"{root} has no {split}/ folder. An image folder needs both "
                            f"{os.path.join(root, 'train', '<class>')}/ and "
                            f"{os.path.join(root, 'test', '<class>')}/ holding the images.")
        names = sorted(entry.name for entry in os.scandir(folder)
                       if entry.is_dir() and not entry.name.startswith("."))
        if not names:
            raise DataError(f"{folder} holds no class folders; put each class's images in "
                            f"{os.path.join(folder, '<class>')}/.")
        if len(names) > NUM_CLASSES:
            raise DataError(f"{folder} has {len(names)} class folders; the network has "
                            f"{NUM_CLASSES} outputs. Keep at most {NUM_CLASSES} classes.")
        listing[split] = [(name, _class_images(os.path.join(folder, name))) for name in names]
    return listing


def _class_images(folder: str) -> list:
    images = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if entry.name.startswith("."):
            continue
        if not entry.name.lower().endswith(IMAGE_EXTENSIONS) or not entry.is_file():
            raise DataError(f"{entry.path} is not an image file; class folders may hold only "
                            f"{', '.join(IMAGE_EXTENSIONS)} files. Move it out.")
        images.append(entry)
    if not images:
        raise DataError(f"the class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                        f"add its images or remove the folder.")
    return images


def class_labels(names: list) -> tuple:
    """(class names by label, {folder name: label}). When every folder is named after a
    CIFAR-10 class (any case), torchvision's labels and names, so that a subset of the
    classes keeps CIFAR-10's labels; else the sorted folder names, labelled 0, 1, ..."""
    if all(name.lower() in CIFAR10_CLASSES for name in names):
        return CIFAR10_CLASSES, {name: CIFAR10_CLASSES.index(name.lower()) for name in names}
    ordered = sorted(names)
    return tuple(ordered), {name: label for label, name in enumerate(ordered)}


def folder_fingerprint(listing: dict) -> str:
    """A digest of every image's split, class, name, size, modification time, inode number
    and status-change time (ctime: set by the system on every change, never by a copy)."""
    digest = hashlib.sha256(CACHE_FORMAT.encode())
    for split in SPLITS:
        for name, files in listing[split]:
            for entry in files:
                status = entry.stat()
                digest.update(f"{split}/{name}/{entry.name}\t{status.st_size}\t{status.st_mtime_ns}\t"
                              f"{status.st_ino}\t{status.st_ctime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def cache_places(root: str) -> list:
    """Where the cache may be: inside `root`, then in the user's cache folder."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.sha256(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = f"{os.path.basename(os.path.realpath(root)) or 'root'}-{key}.npz"
    return [os.path.join(root, CACHE_NAME), os.path.join(base, "cifar-speedrun", name)]


def read_cache(path: str, fingerprint: str) -> dict | None:
    """The cached arrays at `path` if they were decoded from the same files, else None."""
    if not os.path.isfile(path):
        return None
    try:
        cached = read_npz(path, (*ARRAYS, "fingerprint"))
    except DataError:                  # damaged or foreign: decode again and overwrite it
        return None
    if str(cached.pop("fingerprint")) != fingerprint:
        return None
    return cached


def write_cache(places: list, arrays: dict):
    """Save the decoded arrays in the first place that takes them; warn if none does."""
    errors = []
    for path in places:
        try:
            save_npz(path, arrays)                 # creates the folder
            return
        except OSError as error:
            errors.append(f"{path}: {error.strerror or error}")
    warnings.warn(f"could not cache the decoded images ({'; '.join(errors)}); the next run decodes "
                  f"them again", stacklevel=3)


def decode_images(paths: list) -> np.ndarray:
    """(N, 32, 32, 3) uint8 from the image files, one after another (for 32x32 images
    the per-file Python work dominates: threads did not help)."""
    images = np.empty((len(paths), 32, 32, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        images[index] = read_image(path)
    return images


def read_image(path: str) -> np.ndarray:
    """One 32x32 RGB image file as (32, 32, 3) uint8; DataError names the file otherwise."""
    from PIL import Image

    try:
        with Image.open(path) as image:      # reads the header only: the size is known before decoding
            size, mode = image.size, image.mode
            if (size, mode) == ((32, 32), "RGB"):
                image.load()
                pixels = np.asarray(image)
            else:
                pixels = None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # not an image, cut short, a bomb
        raise DataError(f"cannot read the image {path} ({type(error).__name__}: {error}); replace or "
                        f"remove it.") from None
    if pixels is None:
        raise DataError(f"{path} is a {size[0]}x{size[1]} {mode} image; CIFAR-10 images are 32x32 RGB. "
                        f"Convert or remove it.")
    return pixels
