"""Files are data (issue 25): nothing a checkpoint names is imported or run; a recipe file
runs only when the user names it, after its SHA-256 matched the recorded one (or the user
allowed a change); recipe files that are not recipes, or that exit or raise
KeyboardInterrupt while loading, get a one-line error."""
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from engine.cli import main
from engine.recipe_files import file_sha256, find_recipe
from engine.recipes import make_config
from engine.results.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from engine.training.ops import make_ops

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "seed_dropout.py"


def planted_recipe(folder: Path) -> tuple[Path, Path]:
    """A .py file that writes a marker file when it runs, and where the marker would go."""
    marker = folder / "MARKER-code-ran"
    evil = folder / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return evil, marker


def tiny_checkpoint(path: Path, **fields) -> Path:
    """A seed-recipe checkpoint of an untrained tiny network, its recorded fields replaced by `fields`."""
    config = make_config("seed", base_width=4, epochs=1, batch_size=64, train_images=256)
    model = config.build_network(make_ops("eager"), torch.device("cpu"), torch.float32)
    save_checkpoint(path, model, config, accuracy=0.1, data={"data": "synthetic", "synthetic_size": 256, "seed": 0},
                    seed=0)
    payload = torch.load(path, weights_only=True)
    payload.update(fields)
    torch.save(payload, path)
    return path


@pytest.mark.parametrize("recorded_name", ["evil", "seed"])
def test_a_checkpoint_naming_a_python_file_never_runs_it(tmp_path, capsys, recorded_name):
    evil, marker = planted_recipe(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path / "crafted.pt", recipe=recorded_name, recipe_file=str(evil),
                                 recipe_sha256=file_sha256(str(evil)), recipe_module="evil")
    status = main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu"])
    err = capsys.readouterr().err
    assert not marker.exists()
    if recorded_name == "seed":          # a built-in name is rebuilt by its name, the file ignored
        assert status == 0
    else:
        assert status == 2 and "never runs code" in err and "--recipe FILE" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    if recorded_name == "seed":
        assert load_checkpoint(checkpoint, device="cpu")[1]["config"].recipe == "seed"
    else:
        with pytest.raises(CheckpointError, match="never runs code"):
            load_checkpoint(checkpoint, device="cpu")
    assert not marker.exists()


def test_the_library_message_names_the_argument_not_the_flag(tmp_path):
    evil, marker = planted_recipe(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path / "crafted.pt", recipe="evil", recipe_file=str(evil))
    with pytest.raises(CheckpointError, match="name that recipe's file yourself with recipe FILE") as error:
        load_checkpoint(checkpoint, device="cpu")
    assert "--recipe" not in str(error.value) and not marker.exists()


def test_a_named_recipe_file_whose_hash_differs_is_refused_before_it_runs(tmp_path, capsys):
    evil, marker = planted_recipe(tmp_path)
    checkpoint = tiny_checkpoint(tmp_path / "crafted.pt", recipe="evil", recipe_file=str(evil),
                                 recipe_sha256="0" * 64)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu", "--recipe", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "is not the recipe file" in err and "--allow-recipe-change" in err and "it was not run" in err
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="allow_recipe_change=True"):
        load_checkpoint(checkpoint, device="cpu", recipe=str(evil))
    assert not marker.exists()


def own_recipe_checkpoint(folder: Path) -> tuple[Path, Path]:
    """The example recipe copied into `folder` and a checkpoint of its tiny untrained network."""
    recipe = folder / "seed_dropout.py"
    shutil.copy(EXAMPLE, recipe)
    config = find_recipe(str(recipe)).make_config(base_width=4, epochs=1, batch_size=64, train_images=256)
    model = config.build_network(make_ops("eager"), torch.device("cpu"), torch.float32)
    checkpoint = folder / "mine.pt"
    save_checkpoint(checkpoint, model, config, data={"data": "synthetic", "synthetic_size": 256, "seed": 0}, seed=0)
    return recipe, checkpoint


def test_an_own_recipe_checkpoint_needs_the_file_named_and_a_change_allowed_explicitly(tmp_path, capsys):
    recipe, checkpoint = own_recipe_checkpoint(tmp_path)
    base = ["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main(base) == 2
    assert f"recorded as '{recipe}'" in capsys.readouterr().err
    assert main([*base, "--recipe", str(recipe)]) == 0
    assert "warning" not in capsys.readouterr().err
    recipe.write_text(recipe.read_text() + "\n# changed after training\n")
    assert main([*base, "--recipe", str(recipe)]) == 2
    assert "it was not run" in capsys.readouterr().err
    assert main([*base, "--recipe", str(recipe), "--allow-recipe-change"]) == 0
    assert "warning:" in capsys.readouterr().err
    model, saved = load_checkpoint(checkpoint, device="cpu", recipe=str(recipe), allow_recipe_change=True)
    assert saved["recipe_warning"] and saved["config"].recipe == "seed-dropout"


def test_allow_recipe_change_without_recipe_is_refused(tmp_path, capsys):
    _, checkpoint = own_recipe_checkpoint(tmp_path)
    with pytest.raises(SystemExit):
        main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu", "--allow-recipe-change"])
    assert "--allow-recipe-change only applies with --recipe" in capsys.readouterr().err


# ---- recipe files that are not recipes ----

def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.mark.parametrize("make, message", [
    (lambda d: write(d / "recipe.txt", "x = 1\n"), "a recipe file is Python source ending in .py"),
    (lambda d: (d / "folder.py").mkdir() or str(d / "folder.py"), "is a folder, not a recipe file"),
    (lambda d: (d / "sub").mkdir() or str(d / "sub") + "/", "is a folder, not a recipe file"),
    (lambda d: write(d / "exits.py", "import sys\nsys.exit(3)\n"), "could not be loaded: it called sys.exit (3)"),
    (lambda d: write(d / "quits.py", "import sys\nsys.exit()\n"), "could not be loaded: it called sys.exit"),
    (lambda d: write(d / "stops.py", "raise KeyboardInterrupt\n"), "could not be loaded: it raised KeyboardInterrupt"),
    (lambda d: write(d / "lines.py", "raise ValueError('one\\ntwo\\nthree')\n"), "ValueError: one two three"),
    (lambda d: write(d / "gen.py", "raise GeneratorExit\n"), "could not be loaded: it raised GeneratorExit"),
    (lambda d: write(d / "sub.py", "class Stop(KeyboardInterrupt):\n    pass\nraise Stop()\n"),
     "could not be loaded: it raised Stop"),
    (lambda d: write(d / "text.py", "class E(Exception):\n    def __str__(self):\n        raise RuntimeError\nraise E()\n"),
     "could not be loaded: E: (its message cannot be shown)"),
    (lambda d: " ", "': choose a built-in recipe"),          # a blank name, quoted
])
def test_a_recipe_that_is_not_one_gets_a_one_line_error(tmp_path, capsys, make, message):
    spec = make(tmp_path)
    with pytest.raises(ValueError) as error:
        find_recipe(spec)
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(SystemExit) as exit:
        main(["--recipe", spec, "--data", "synthetic", "--device", "cpu"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_checkpoint_whose_config_is_absurd_is_refused_before_its_network_is_built(tmp_path, capsys, monkeypatch):
    config = make_config("seed", base_width=4, epochs=1, batch_size=64, train_images=256).to_dict()
    checkpoint = tiny_checkpoint(tmp_path / "wide.pt", config={**config, "base_width": 10 ** 7})
    from engine.recipes import seed
    build = seed.Config.build_network

    def only_counted(self, ops, device, dtype):      # the size check builds it on the meta device only
        assert torch.device(device).type == "meta", "built an absurd network"
        return build(self, ops, device, dtype)
    monkeypatch.setattr(seed.Config, "build_network", only_counted)
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--device", "cpu"]) == 2
    assert "its config describes a network that cannot be built here" in capsys.readouterr().err
