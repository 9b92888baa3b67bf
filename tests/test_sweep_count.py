"""Sweeps count before they build (issue 25): the points of the --set lists and --recipe are
counted from the texts first; above MAX_POINTS the sweep is refused with the count, before
any recipe is loaded or any point built."""
import pytest

from engine import cli
from engine.results.sweep import MAX_POINTS, count_points, require_sweep_size, sweep_points


def test_the_count_is_the_product_of_the_lists_and_the_recipes():
    assert count_points(2, ["lr=1,2,3", "momentum=0.8,0.9"]) == 12
    assert count_points(1, []) == 1


def test_a_sweep_above_the_limit_is_refused_with_its_count_before_anything_is_built(monkeypatch, capsys):
    def built(*args, **kwargs):
        raise AssertionError("something was built before the sweep was counted")
    monkeypatch.setattr(cli, "find_recipe", built)
    monkeypatch.setattr(cli, "parse_settings", built)
    values = ",".join(str(v) for v in range(10))
    sets = [argument for name in ("lr", "momentum", "weight_decay", "label_smoothing", "ema_decay")
            for argument in ("--set", f"{name}={values}")]
    with pytest.raises(SystemExit) as exit:
        cli.main(["--recipe", "seed,seed-long", *sets, "--data", "synthetic", "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "make 200,000 points" in err and f"{MAX_POINTS:,}" in err


def test_an_astronomical_sweep_is_refused_at_once():
    with pytest.raises(ValueError, match=r"make more than 10\^100 points"):
        require_sweep_size(count_points(1, ["lr=" + ",".join(["1"] * 10)] * 100))


def test_the_library_refuses_before_building_the_points():
    with pytest.raises(ValueError, match="make 1,000,000 points"):
        sweep_points([object()], [("a", [0] * 100), ("b", [0] * 100), ("c", [0] * 100)])


def test_a_sweep_at_the_limit_is_built():
    assert len(sweep_points([object()], [("a", [0] * 100), ("b", [0] * 100)])) == MAX_POINTS
