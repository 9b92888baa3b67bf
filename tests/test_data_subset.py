"""--train-subset and --test-subset: a small real run on part of the data (README "Daily use")."""
import json

import numpy as np
import pytest

from engine import cli
from engine.training.data import DataError, make_synthetic, take_subset
from engine.training.train import RunResult, Trainer

SMALL = ["--data", "synthetic", "--synthetic-size", "512", "--device", "cpu", "--epochs", "2",
         "--base-width", "8", "--batch-size", "64"]


def rows_of(part: np.ndarray, whole: np.ndarray) -> list[int]:
    """Where each image of `part` is in `whole` (each is found exactly once)."""
    flat = {image.tobytes(): index for index, image in enumerate(whole)}
    return [flat[image.tobytes()] for image in part]


def test_a_subset_keeps_each_class_share_and_the_same_seed_draws_the_same_images():
    data = make_synthetic(1000, seed=0)
    part = take_subset(data, 105, 33, seed=1)
    assert len(part.train_labels) == 105 and len(part.test_labels) == 33
    share = 105 * np.bincount(data.train_labels, minlength=10) / 1000
    assert np.all(np.abs(np.bincount(part.train_labels, minlength=10) - share) < 1)       # stratified
    rows = rows_of(part.train_images, data.train_images)
    assert len(set(rows)) == 105 and np.array_equal(data.train_labels[rows], part.train_labels)
    again, other = take_subset(data, 105, 33, seed=1), take_subset(data, 105, 33, seed=2)
    assert np.array_equal(again.train_images, part.train_images) and np.array_equal(again.test_images, part.test_images)
    assert not np.array_equal(other.train_images, part.train_images)
    assert "part: train 105 of 1000, test 33 of 200 (stratified, seed 1)" in part.source
    assert take_subset(data, None, None) is data


@pytest.mark.parametrize("train, test, message", [
    (2000, None, "--train-subset 2000 is more than the 1000 train images"),
    (None, 201, "--test-subset 201 is more than the 200 test images"),
])
def test_a_subset_larger_than_the_data_is_refused(train, test, message):
    with pytest.raises(DataError, match=message):
        take_subset(make_synthetic(1000, seed=0), train, test)


@pytest.mark.parametrize("value, message", [
    ("0", "at least 10 (one image per class), got 0"),
    ("-3", "at least 10 (one image per class), got -3"),
    ("9", "at least 10 (one image per class), got 9"),
    ("1e3", "a whole number of images, got 1e3"),
])
@pytest.mark.parametrize("option", ["--train-subset", "--test-subset"])
def test_bad_subset_sizes_are_refused_on_the_command_line(capsys, option, value, message):
    with pytest.raises(SystemExit) as exit:
        cli.main([*SMALL, option, value])
    assert exit.value.code == 2
    assert f"argument {option}: must be {message}" in capsys.readouterr().err


def test_a_subset_larger_than_the_data_stops_the_command_with_one_line(capsys):
    assert cli.main([*SMALL, "--train-subset", "600"]) == 2
    err = capsys.readouterr().err
    assert "error: --train-subset 600 is more than the 512 train images" in err and "Traceback" not in err


def test_the_subset_is_recorded_in_the_json(tmp_path, monkeypatch):
    seen = {}

    def run(self, train, test, seed, on_epoch=None, on_step=None, **kwargs):
        seen["sizes"] = (len(train.labels), len(test.labels))
        return RunResult(seed=seed, accuracy=0.5, ema_accuracy=0.5, epochs=[])
    monkeypatch.setattr(Trainer, "run", run)
    out = tmp_path / "runs.json"
    assert cli.main([*SMALL, "--train-subset", "200", "--test-subset", "50", "--json", str(out), "--quiet"]) == 0
    assert seen["sizes"] == (200, 50)
    report = json.loads(out.read_text())
    assert report["data"] == {"data": "synthetic", "synthetic_size": 512, "seed": 0,
                              "train_subset": 200, "test_subset": 50}
    assert "part: train 200 of 512, test 50 of 102 (stratified, seed 0)" in report["data_source"]
    assert report["config"]["train_images"] == 200       # the steps per epoch follow the part


def test_evaluate_measures_a_checkpoint_on_the_test_part_it_was_trained_with(tmp_path, capsys):
    model = tmp_path / "m.pt"
    assert cli.main([*SMALL, "--test-subset", "50", "--save", str(model), "--quiet", "--final-eval-only"]) in (0, 1)
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(model), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "on synthetic (512 train images, seed 0), part: test 50 of 102 (stratified, seed 0)" in out
    assert "(difference +0.00 points)" in out
