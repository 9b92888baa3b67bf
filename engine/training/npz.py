"""CIFAR-10 as an .npz file: reading one safely (never unpickling; a damaged, truncated or
mistaken file is named for what it is) and writing one atomically. Shared by the data
sources (engine/training/data.py) and the image-folder cache (engine/training/image_folder.py)."""
from __future__ import annotations

import zipfile
import zlib

import numpy as np

from engine.outputs import atomic_write

ARRAYS = ("train_images", "train_labels", "test_images", "test_labels")
CONVERT_HINT = ("`python run.py convert SRC OUT.npz` writes one from a torchvision CIFAR-10 root "
                "or an image folder")


class DataError(ValueError):
    """Bad data input; the message says what to do."""


FILE_SIGNATURES = (            # how a file that is not a zip archive begins, and what it then is
    (b"\x93NUMPY", "is a single .npy array (np.save); an .npz holds several (np.savez)"),
    (b"\x89PNG", "is a PNG image"),
    (b"\xff\xd8\xff", "is a JPEG image"),
    (b"\x1f\x8b", "is gzip-compressed (the official cifar-10-python.tar.gz? unpack it and pass the "
                  "folder holding cifar-10-batches-py)"),
    (b"\x80", "is a Python pickle, which is never loaded here"),
)


def describe_content(head: bytes) -> str:
    """What a file beginning with `head` is, in words ("is a PNG image", "holds text", ...)."""
    if not head:
        return "is empty"
    for signature, description in FILE_SIGNATURES:
        if head.startswith(signature):
            return description
    try:
        head.decode("utf-8").encode("ascii")
        return "holds text"
    except UnicodeError:
        return "holds binary data of an unknown kind"


def read_npz(path: str, names=ARRAYS) -> dict:
    """The arrays `names` of the .npz at `path` (and its `classes` when readable). Never
    unpickles; DataError says what is wrong with a file that is not a sound .npz of arrays."""
    try:
        with open(path, "rb") as file:
            head = file.read(64)
    except OSError as error:
        raise DataError(f"cannot open {path}: {error.strerror or error}. Check the path and its "
                        f"permissions.") from None
    if not head.startswith(b"PK"):         # every zip archive, hence every .npz, starts so
        raise DataError(f"{path} is not an .npz archive: it {describe_content(head)}. Pass an .npz "
                        f"of uint8 images and integer labels ({CONVERT_HINT}).")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:   # e.g. cut short
        raise DataError(f"cannot read {path} as an .npz archive ({type(error).__name__}: {error}); it "
                        f"is damaged or incomplete. Copy it again or re-create it ({CONVERT_HINT}).") from None
    with archive:
        missing = [name for name in names if name not in archive.files]
        if missing:
            raise DataError(f"{path} lacks the array(s) {', '.join(missing)}; it holds "
                            f"{', '.join(archive.files) or 'nothing'}. Expected {', '.join(names)} "
                            f"({CONVERT_HINT}).")
        arrays = {name: _read_member(archive, path, name) for name in names}
        if "classes" in archive.files:
            try:
                arrays["classes"] = _read_member(archive, path, "classes")
            except DataError:
                pass                           # names are a courtesy; the arrays are what counts
    return arrays


def _read_member(archive, path: str, name: str) -> np.ndarray:
    try:
        value = archive[name]
    except ValueError as error:
        if "allow_pickle" in str(error):       # numpy's refusal of an object array
            raise DataError(f"{path}: {name} holds Python objects, which are never loaded here (they "
                            f"could run code). Save plain numeric arrays: uint8 images and integer "
                            f"labels ({CONVERT_HINT}).") from None
        raise _damaged(path, name, error) from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise _damaged(path, name, error) from None
    if not isinstance(value, np.ndarray):      # a zip member that is not an .npy
        raise DataError(f"{path}: {name} is not a numpy array. Save the arrays with np.savez "
                        f"({CONVERT_HINT}).")
    return value


def _damaged(path: str, name: str, error: Exception) -> DataError:
    return DataError(f"{path}: the array {name} is damaged ({type(error).__name__}: {error}). Copy the "
                     f"file again or re-create it ({CONVERT_HINT}).")


def save_npz(path: str, arrays: dict):
    """Write `arrays` as an uncompressed .npz atomically (a temporary file in the same
    folder, then a rename), with the permissions the user's umask gives new files."""
    atomic_write(path, lambda file: np.savez(file, **arrays))
