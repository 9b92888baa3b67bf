"""Your own recipe (`--recipe FILE.py`, `--recipe package.module`): the one protocol check
and what it names, the example under examples/ trained, saved and re-evaluated through the
command line, and checkpoints that record the recipe's file and its hash."""
import json
import shutil
import textwrap
from pathlib import Path

import pytest

import engine
from engine.results.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from engine.cli import main
from engine.recipe_files import RECIPE_PROTOCOL, file_sha256, find_recipe, lacking
from engine.recipes import airbench94_muon, seed

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "seed_dropout.py"
TINY = ["--data", "synthetic", "--synthetic-size", "256", "--device", "cpu", "--base-width", "4", "--epochs", "2",
        "--batch-size", "128", "--final-eval-only"]


def test_the_built_in_recipes_have_everything_the_protocol_names():
    for config in (seed.Config, airbench94_muon.Config):
        assert lacking(config) == []


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize("source, message", [
    ("x = 1\n", "a recipe defines a dataclass named Config deriving from engine.training.config.RecipeConfig"),
    ("""\
     from dataclasses import dataclass
     from typing import ClassVar
     from engine.training.config import RecipeConfig

     @dataclass(frozen=True)
     class Config(RecipeConfig):
         recipe: ClassVar[str] = "half"
     """, "its Config lacks mean (per-channel mean"),
    ("""\
     from dataclasses import dataclass
     from engine.recipes import seed

     @dataclass(frozen=True)
     class Config(seed.Config):
         dropout: float = 0.1
     """, "its Config needs a name of its own, not 'seed'"),
    ("def broken(:\n", "could not be loaded: SyntaxError"),
    ("import no_such_module_anywhere\n", "could not be loaded: ModuleNotFoundError"),
])
def test_a_file_that_is_not_a_whole_recipe_is_refused_with_what_it_lacks(tmp_path, source, message):
    with pytest.raises(ValueError, match=None) as error:
        find_recipe(write(tmp_path / "mine.py", source))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_protocol_check_names_every_missing_part(tmp_path):
    path = write(tmp_path / "half.py", """\
        from dataclasses import dataclass
        from typing import ClassVar
        from engine.training.config import RecipeConfig

        @dataclass(frozen=True)
        class Config(RecipeConfig):
            recipe: ClassVar[str] = "half"
            mean: tuple = (0.5, 0.5, 0.5)
            std: tuple = (0.25, 0.25, 0.25)
        """)
    with pytest.raises(ValueError) as error:
        find_recipe(path)
    lacking = [name for name, _ in RECIPE_PROTOCOL if f"{name} (" in str(error.value)]
    assert "mean" not in lacking and "build_network" in lacking and "warm_up_config" in lacking
    assert len(lacking) == len(RECIPE_PROTOCOL) - 4          # recipe, reported_as, mean, std are there


def test_names_files_and_modules(tmp_path, monkeypatch):
    assert find_recipe("seed-long").preset == {"base_width": 128, "epochs": 80}
    mine = find_recipe(str(EXAMPLE))
    assert (mine.name, mine.file, mine.sha256) == ("seed-dropout", str(EXAMPLE), file_sha256(str(EXAMPLE)))
    assert mine.make_config(train_images=1024).dropout == 0.1
    package = tmp_path / "my_recipes"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(EXAMPLE, package / "dropout.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = find_recipe("my_recipes.dropout")
    assert (found.name, found.module) == ("seed-dropout", "my_recipes.dropout")
    for spec, message in [("no_such.module", "no module of that name can be imported"),
                          (str(tmp_path / "missing.py"), "no such file"), ("seed long", "choose a built-in recipe")]:
        with pytest.raises(ValueError, match=message):
            find_recipe(spec)


@pytest.mark.slow
def test_the_example_recipe_trains_saves_and_evaluates_from_the_command_line(tmp_path, capsys):
    recipe = tmp_path / "seed_dropout.py"
    shutil.copy(EXAMPLE, recipe)
    out, model = tmp_path / "run.json", tmp_path / "model.pt"
    main([*TINY, "--recipe", str(recipe), "--set", "dropout=0.25", "--json", str(out), "--save", str(model)])
    report = json.loads(out.read_text())
    assert report["recipe"] == "seed-dropout" and report["config"]["dropout"] == 0.25
    assert report["recipe_file"] == str(recipe) and report["recipe_sha256"] == file_sha256(str(recipe))
    assert report["runs"][0]["status"] == "ok"
    saved = read_checkpoint(model)
    assert (saved["recipe"], saved["recipe_file"], saved["recipe_sha256"]) == (
        "seed-dropout", str(recipe), file_sha256(str(recipe)))
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(model), "--device", "cpu"]) == 2      # the file is never run unnamed
    assert "name that recipe's file yourself with --recipe FILE" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(model), "--device", "cpu", "--recipe", str(recipe)]) == 0
    lines = capsys.readouterr()
    assert "difference +0.00 points" in lines.out and "warning" not in lines.err

    recipe.write_text(recipe.read_text() + "\n# changed after training\n")
    assert main(["evaluate", "--checkpoint", str(model), "--device", "cpu", "--recipe", str(recipe)]) == 2
    assert f"--recipe {recipe} is not the recipe file {model} was trained with" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(model), "--device", "cpu", "--recipe", str(recipe),
                 "--allow-recipe-change"]) == 0
    assert "warning: --recipe" in capsys.readouterr().err

    moved = tmp_path / "elsewhere.py"
    shutil.copy(EXAMPLE, moved)
    assert main(["evaluate", "--checkpoint", str(model), "--device", "cpu", "--recipe", str(moved)]) == 0
    assert "difference +0.00 points" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(model), "--device", "cpu", "--recipe", "airbench94-muon"]) == 2
    assert "but --recipe airbench94-muon is recipe 'airbench94-muon'" in capsys.readouterr().err


def test_a_config_subclass_from_the_library_round_trips_through_a_checkpoint(tmp_path):
    """The issue's failure: a Config with a field the seed recipe lacks was saved as 'seed',
    and load_checkpoint then refused it. Now its file is recorded and rebuilt from."""
    mine = find_recipe(str(EXAMPLE))
    config = mine.make_config(train_images=256, batch_size=128, base_width=4, epochs=2, dropout=0.3)
    data = engine.make_synthetic(256, seed=0)
    result = engine.fit(config, data, seed=0, device="cpu")
    path = engine.save_checkpoint(tmp_path / "tiny.pt", result.ema_model, config, accuracy=result.ema_accuracy)
    model, saved = load_checkpoint(path, device="cpu", recipe=str(EXAMPLE))
    assert saved["config"].dropout == 0.3 and saved["recipe"] == "seed-dropout"
    assert engine.evaluate(model, data) == result.ema_accuracy
    with pytest.raises(CheckpointError, match="trained with recipe 'seed-dropout', but recipe seed"):
        load_checkpoint(path, device="cpu", recipe="seed")
