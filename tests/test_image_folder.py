"""CIFAR-10 as ROOT/train/<class>/* and ROOT/test/<class>/* image files (engine/training/image_folder.py)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import engine.training.image_folder as image_folder
from engine.training.data import DataError, load_cifar10

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache_folder(tmp_path, monkeypatch):
    """The fallback cache goes under the test's own folder, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def make_folder(root: Path, classes=("cat", "dog"), per_class=2, test_classes=None, extension=".png"):
    """PNG images with known pixels; returns {(split, class): [arrays, in file-name order]}."""
    rng = np.random.default_rng(0)
    written = {}
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            written[split, name] = []
            for i in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}{extension}", format="PNG")
                written[split, name].append(pixels)
    return written


def test_images_load_with_labels_in_cifar10_order(tmp_path):
    written = make_folder(tmp_path, classes=("truck", "airplane", "cat"))
    data = load_cifar10(tmp_path)
    assert data.classes == image_folder.CIFAR10_CLASSES
    expected = {"airplane": 0, "cat": 3, "truck": 9}            # torchvision's labels
    for split in ("train", "test"):
        images, labels = getattr(data, f"{split}_images"), getattr(data, f"{split}_labels")
        assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
        for name in expected:
            chosen = labels == expected[name]
            assert np.array_equal(images[chosen], np.stack(written[split, name]))
    assert data.source == f"image folder {tmp_path}" and not data.synthetic


def test_other_class_names_are_sorted_and_extensions_may_be_upper_case(tmp_path):
    make_folder(tmp_path, classes=("zebra", "Apple", "mango"), extension=".PNG")
    jpeg = tmp_path / "train" / "mango" / "extra.JpEg"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(jpeg, format="JPEG")
    (tmp_path / "train" / "mango" / ".DS_Store").write_bytes(b"junk")     # hidden files are skipped
    data = load_cifar10(str(tmp_path))
    assert data.classes == ("Apple", "mango", "zebra")
    assert np.bincount(data.train_labels).tolist() == [2, 3, 2]


def test_the_second_load_reads_the_cache_and_a_changed_folder_is_decoded_again(tmp_path, monkeypatch):
    make_folder(tmp_path)
    first = load_cifar10(tmp_path)
    assert (tmp_path / image_folder.CACHE_NAME).is_file()

    def no_decoding(paths):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(image_folder, "decode_images", no_decoding)
        second = load_cifar10(tmp_path)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(first, name), getattr(second, name))
    assert second.classes == first.classes

    changed = tmp_path / "test" / "dog" / "0001.png"
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(changed, format="PNG")
    os.utime(changed, ns=(0, 10**18))                           # a different modification time
    third = load_cifar10(tmp_path)
    assert np.all(third.test_images[-1] == 7)


def test_a_read_only_folder_is_cached_in_the_users_cache_folder(tmp_path, monkeypatch):
    root = tmp_path / "images"
    make_folder(root)
    save = image_folder.save_npz

    def refuse_inside_root(path, arrays):
        if Path(path).parent == root:
            raise PermissionError(13, "Permission denied")
        save(path, arrays)

    monkeypatch.setattr(image_folder, "save_npz", refuse_inside_root)
    first = load_cifar10(root)
    cached = list((tmp_path / "xdg-cache" / "cifar-speedrun").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith("images-") and not (root / image_folder.CACHE_NAME).exists()
    monkeypatch.setattr(image_folder, "decode_images", lambda paths: pytest.fail("decoded again"))
    assert np.array_equal(load_cifar10(root).train_images, first.train_images)


def test_a_damaged_cache_is_decoded_again(tmp_path):
    make_folder(tmp_path)
    first = load_cifar10(tmp_path)
    (tmp_path / image_folder.CACHE_NAME).write_bytes(b"PK\x03\x04 cut short")
    assert np.array_equal(load_cifar10(tmp_path).train_images, first.train_images)


def error(root) -> str:
    with pytest.raises(DataError) as caught:
        load_cifar10(root)
    return str(caught.value)


def test_a_missing_split_or_missing_class_folders_are_named(tmp_path):
    make_folder(tmp_path)
    for image in (tmp_path / "test").rglob("*.png"):
        image.unlink()
    for folder in (tmp_path / "test").iterdir():
        folder.rmdir()
    assert "holds no class folders" in error(tmp_path)
    (tmp_path / "test").rmdir()
    assert "has no test/ folder" in error(tmp_path)


def test_a_test_class_that_train_lacks_is_refused(tmp_path):
    make_folder(tmp_path, classes=("cat", "dog"), test_classes=("cat", "wolf"))
    message = error(tmp_path)
    assert "wolf" in message and "lacks" in message


def test_an_empty_class_and_a_stray_file_are_named(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "train" / "bird").mkdir()
    assert "bird holds no images" in error(tmp_path)
    (tmp_path / "train" / "bird").rmdir()
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    assert "notes.txt is not an image file" in error(tmp_path)


def test_more_classes_than_the_network_has_outputs_are_refused(tmp_path):
    make_folder(tmp_path, classes=tuple(f"class{i}" for i in range(11)), per_class=1)
    assert "11 class folders" in error(tmp_path)


@pytest.mark.parametrize("size, mode, described", [
    ((28, 28), "RGB", "28x28 RGB"),
    ((32, 32), "L", "32x32 L"),
    ((32, 32), "RGBA", "32x32 RGBA"),
])
def test_images_that_are_not_32x32_rgb_are_named(tmp_path, size, mode, described):
    make_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "0001.png"
    Image.new(mode, size).save(bad, format="PNG")
    message = error(tmp_path)
    assert str(bad) in message and described in message and "32x32 RGB" in message


def test_an_unreadable_image_is_named(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / "test" / "cat" / "0000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    message = error(tmp_path)
    assert str(bad) in message and "cannot read the image" in message


@pytest.mark.slow
def test_run_py_convert_turns_an_image_folder_into_an_npz(tmp_path):
    root = tmp_path / "images"
    make_folder(root, classes=("cat", "dog"))
    out = tmp_path / "out.npz"
    result = subprocess.run([sys.executable, str(ROOT / "run.py"), "convert", str(root), str(out)],
                            capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache")})
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "image folder" in result.stdout
    converted, direct = load_cifar10(out), load_cifar10(root)
    assert np.array_equal(converted.train_images, direct.train_images)
    assert converted.classes == image_folder.CIFAR10_CLASSES and converted.train_labels.tolist() == [3, 3, 5, 5]
