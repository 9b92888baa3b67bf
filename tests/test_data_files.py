"""Damaged, mislabelled and oddly named .npz files, path types, and `convert` (issues 10, 12).

Every failure is a DataError whose message says what the file is and what to do,
and never suggests loading pickled data.
"""
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from engine.training.data import DataError, convert, load_cifar10

ROOT = Path(__file__).resolve().parents[1]


def tiny_arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 20),
        "test_images": rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 5),
    }


def npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def savez(path, **arrays):
    """np.savez to exactly `path` (given a name, np.savez appends .npz unless it ends so in lower case)."""
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def load_error(path) -> str:
    with pytest.raises(DataError) as caught:
        load_cifar10(path)
    message = str(caught.value)
    assert "pickle" not in message.lower()          # never advice to load pickles
    return message


def test_a_member_with_a_bad_checksum_is_named_as_damaged(tmp_path):
    arrays = tiny_arrays()
    path = tmp_path / "crc.npz"
    np.savez(path, **arrays)
    raw = bytearray(path.read_bytes())
    start = raw.find(arrays["train_images"].tobytes()[:64])
    raw[start + 10] ^= 0xFF                         # one flipped byte inside train_images
    path.write_bytes(bytes(raw))
    message = load_error(path)
    assert "train_images" in message and "damaged" in message


def test_a_truncated_member_is_named_as_damaged(tmp_path):
    path = tmp_path / "truncated.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in tiny_arrays().items():
            data = npy_bytes(array)
            archive.writestr(f"{name}.npy", data[:-1000] if name == "train_images" else data)
    message = load_error(path)
    assert "train_images" in message and "damaged" in message


def test_object_arrays_are_refused_without_loading_them(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, **{**tiny_arrays(), "train_labels": np.array([{"label": 1}] * 20, dtype=object)})
    message = load_error(path)
    assert "train_labels" in message and "Python objects" in message and "convert" in message


@pytest.mark.parametrize("content, described", [
    (b"train_images,train_labels\n1,2\n", "text"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "PNG image"),
    (b"\xff\xd8\xff\xe0" + bytes(100), "JPEG image"),
    (npy_bytes(np.zeros(3)), ".npy array"),
    (b"\x80\x04\x95" + bytes(20), "pickle"),
    (b"", "empty"),
])
def test_a_file_named_npz_with_other_content_says_what_it_is(tmp_path, content, described):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        load_cifar10(path)
    message = str(caught.value)
    assert "not an .npz archive" in message and described in message and "convert" in message
    assert "allow_pickle" not in message and "pickle.load" not in message


def test_upper_case_extension_and_pathlib_paths_load(tmp_path):
    path = tmp_path / "DATA.NPZ"
    savez(path, **tiny_arrays())
    for given in (path, str(path)):
        data = load_cifar10(given)
        assert data.train_images.shape == (20, 32, 32, 3)
    with pytest.raises(DataError, match="no such file"):
        load_cifar10(tmp_path / "ABSENT.NPZ")


def test_data_that_is_not_a_path_gets_a_type_error():
    with pytest.raises(TypeError, match="data must be"):
        load_cifar10(12)


# ---- convert ----

def test_convert_rewrites_any_source_as_our_npz(tmp_path):
    source = tmp_path / "source.NPZ"
    arrays = tiny_arrays()
    savez(source, **arrays, extra=np.zeros(3))
    out = tmp_path / "sub" / "out.npz"
    data = convert(source, out)
    assert data.train_images.shape == (20, 32, 32, 3)
    with np.load(out, allow_pickle=False) as written:
        assert sorted(written.files) == sorted(arrays)
        for name, array in arrays.items():
            assert np.array_equal(written[name], array)
    assert [p.name for p in out.parent.iterdir()] == ["out.npz"]      # no temporary file left


def test_convert_refuses_bad_outputs_and_sources_without_writing(tmp_path):
    source = tmp_path / "source.npz"
    np.savez(source, **tiny_arrays())
    with pytest.raises(DataError, match="must end in .npz"):
        convert(source, tmp_path / "out.txt")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        convert(source, tmp_path / "folder.npz")
    with pytest.raises(DataError, match="synthetic"):
        convert("synthetic", tmp_path / "out.npz")
    broken = tmp_path / "broken.npz"
    broken.write_text("hello")
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous")
    with pytest.raises(DataError, match="not an .npz archive"):
        convert(broken, out)
    assert out.read_bytes() == b"previous"          # a failed conversion leaves the old file alone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.npz", "folder.npz", "out.npz", "source.npz"]


def test_convert_writes_atomically_when_the_disk_fills(tmp_path, monkeypatch):
    source = tmp_path / "source.npz"
    np.savez(source, **tiny_arrays())
    out = tmp_path / "out.npz"
    out.write_bytes(b"previous")

    def disk_full(file, **arrays):
        file.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(DataError, match="cannot write .*No space left on device"):
        convert(source, out)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "source.npz"]


def test_convert_keeps_the_users_file_permissions(tmp_path):
    source = tmp_path / "source.npz"
    np.savez(source, **tiny_arrays())
    mask = os.umask(0o022)
    try:
        convert(source, tmp_path / "out.npz")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.npz").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_run_py_convert_writes_the_npz_and_reports_errors(tmp_path):
    source = tmp_path / "source.npz"
    np.savez(source, **tiny_arrays())
    command = [sys.executable, str(ROOT / "run.py"), "convert"]
    result = subprocess.run(command + [str(source), str(tmp_path / "out.npz")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "20 train" in result.stdout
    assert load_cifar10(tmp_path / "out.npz").test_images.shape == (5, 32, 32, 3)
    result = subprocess.run(command + [str(tmp_path / "missing.npz"), str(tmp_path / "out2.npz")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr
