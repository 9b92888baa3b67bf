"""The library checks its arguments (issue 25): a TypeError or ValueError naming the argument,
never an AttributeError from deep inside, and never a command-line flag in the message."""
import os

import pytest
import torch

import engine
from engine.recipes import make_config
from engine.training.ops import make_ops

CONFIG = make_config("seed", base_width=4, epochs=1, batch_size=64, train_images=256)


def network():
    return CONFIG.build_network(make_ops("eager"), torch.device("cpu"), torch.float32)


CASES = [
    ("save_checkpoint model None", lambda d: engine.save_checkpoint(d / "a.pt", None, CONFIG), TypeError, "model"),
    ("save_checkpoint config None", lambda d: engine.save_checkpoint(d / "a.pt", network(), None), TypeError,
     "config"),
    ("save_checkpoint config a name", lambda d: engine.save_checkpoint(d / "a.pt", network(), "seed"), TypeError,
     "config"),
    ("save_checkpoint path a folder", lambda d: engine.save_checkpoint(d, network(), CONFIG), ValueError, "path"),
    ("save_checkpoint path empty", lambda d: engine.save_checkpoint("", network(), CONFIG), ValueError, "path"),
    ("save_checkpoint accuracy text", lambda d: engine.save_checkpoint(d / "a.pt", network(), CONFIG,
                                                                       accuracy="high"), TypeError, "accuracy"),
    ("save_checkpoint accuracy nan", lambda d: engine.save_checkpoint(d / "a.pt", network(), CONFIG,
                                                                      accuracy=float("nan")), ValueError, "accuracy"),
    ("save_checkpoint accuracy percent", lambda d: engine.save_checkpoint(d / "a.pt", network(), CONFIG,
                                                                          accuracy=94.0), ValueError, "accuracy"),
    ("load_checkpoint path None", lambda d: engine.load_checkpoint(None), TypeError, "path"),
    ("load_checkpoint recipe a number", lambda d: engine.load_checkpoint(d / "a.pt", recipe=5), TypeError, "recipe"),
    ("fit compile text", lambda d: engine.fit(CONFIG, compile="yes", device="cpu"), TypeError, "compile"),
    ("fit progress text", lambda d: engine.fit(CONFIG, progress="no", device="cpu"), TypeError, "progress"),
    ("fit synthetic_size a bool", lambda d: engine.fit(CONFIG, synthetic_size=True, device="cpu"), TypeError,
     "synthetic_size"),
    ("fit data empty", lambda d: engine.fit(CONFIG, "", device="cpu"), ValueError, "data"),
    ("fit data missing", lambda d: engine.fit(CONFIG, d / "nothing", device="cpu"), ValueError, "data"),
    ("fit absurd width", lambda d: engine.fit(make_config("seed", base_width=10 ** 6), device="cpu"), ValueError,
     "base_width"),
    ("save_checkpoint path a FIFO", lambda d: os.mkfifo(d / "pipe.pt") or engine.save_checkpoint(d / "pipe.pt", network(),
                                                                                            CONFIG), ValueError, "path"),
    ("evaluate views a name", lambda d: engine.evaluate(network(), engine.make_synthetic(64), views="flip"), TypeError,
     "views"),
    ("evaluate batch_size a bool", lambda d: engine.evaluate(network(), engine.make_synthetic(64), batch_size=True),
     TypeError, "batch_size"),
]


@pytest.mark.parametrize("call, kind, argument", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_bad_argument_is_named_without_command_line_flags(tmp_path, call, kind, argument):
    with pytest.raises(kind) as error:
        call(tmp_path)
    message = str(error.value)
    assert type(error.value) is kind or isinstance(error.value, kind)
    assert argument in message and "--" not in message and "\n" not in message
    assert not (tmp_path / "a.pt").exists()
