"""`--help` answers without importing torch (engine/command.py), and what it shows of the recipes is what the
recipes hold: engine/options.py reads the built-in recipes' defaults from their source, so
each is held here to the imported Config classes."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from engine import options
from engine.command import main
from engine.recipes import DEFAULT_RECIPE, RECIPES

ROOT = Path(__file__).resolve().parents[1]


def test_the_defaults_read_from_source_are_the_recipes_own():
    read = options.built_in_recipes()
    assert list(read) == list(RECIPES) and options.default_recipe() == DEFAULT_RECIPE
    for name, (cls, preset) in RECIPES.items():
        imported = {f.name: preset.get(f.name, f.default) for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING}
        assert read[name] == imported, name


def test_the_menus_are_the_engines():
    from engine.checks import DTYPES
    from engine.training.ops import KERNEL_CHOICES, make_ops
    assert tuple(DTYPES) == options.DTYPE_NAMES
    for choice in KERNEL_CHOICES:
        make_ops(choice)


@pytest.mark.parametrize("argv", [["--help"], ["evaluate", "--help"], ["convert", "-h"], ["compare", "--help"],
                                  ["tune", "--help"], ["--epochs", "3", "--help"]])
def test_help_answers_without_importing_torch(argv):
    check = ("import sys; from engine.command import main; code = main(%r); "
             "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(code)" % argv)
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: run.py" + (f" {argv[0]}" if argv[0].isalpha() else ""))


def test_help_after_a_bad_value_is_argparses_error_still_without_torch():
    check = ("import sys; from engine.command import main; code = main(['--epochs', 'x', '--help']); "
             "assert 'torch' not in sys.modules; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "--epochs: invalid positive_number value: 'x'" in proc.stderr


def test_the_help_shows_every_recipes_default():
    text = options.build_parser().format_help()
    assert "seed 10, seed-long 80, airbench94-muon 8" in " ".join(text.split())


def test_everything_else_goes_to_the_full_program(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.npz"), str(tmp_path / "out.npz")]) == 2
    assert "run.py convert: error: no such file" in capsys.readouterr().err


def test_a_default_the_command_line_cannot_read_is_named(tmp_path):
    recipe = tmp_path / "r.py"
    recipe.write_text("class Config:\n    epochs: int = int('3')\n")
    with pytest.raises(ValueError, match=r"r.py:2: a recipe default must be a literal or arithmetic"):
        options._class_defaults(str(recipe), "Config")
