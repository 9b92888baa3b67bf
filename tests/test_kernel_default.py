"""Which kernels run when --kernels is not given: on CUDA the recipe's choice (its Config's
`cuda_kernels`: triton for seed, airbench94-muon and hiverge, where the GPU plan has our
kernels moving fewer bytes than Inductor's own code; a recipe file may choose eager), eager
on the CPU for every recipe; a recipe file inherits its parent's choice, and --kernels always wins. No GPU is
needed: the choice is a function of the device's type, asked with torch.device("cuda")."""
import json
import textwrap
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import engine.api
import engine.cli
from engine.api import default_kernels, fit
from engine.cli import build_parser, main, recipe_kernels
from engine.recipe_files import find_recipe
from engine.recipes import airbench94_muon, hiverge, seed

CUDA, CPU = torch.device("cuda"), torch.device("cpu")
TINY = ["--data", "synthetic", "--synthetic-size", "256", "--train-subset", "16", "--test-subset", "10", "--device",
        "cpu", "--base-width", "4", "--epochs", "1", "--batch-size", "16", "--final-eval-only", "--quiet"]


def recipe_file(tmp_path, name: str, parent: str, body: str = "") -> str:
    """A recipe file `name`.py whose Config derives from the built-in recipe `parent`."""
    path = tmp_path / f"{name.replace('-', '_')}.py"
    path.write_text(textwrap.dedent(f"""\
        from dataclasses import dataclass
        from typing import ClassVar
        from engine.recipes import {parent}

        @dataclass(frozen=True)
        class Config({parent}.Config):
            recipe: ClassVar[str] = "{name}"
        """) + textwrap.indent(textwrap.dedent(body), "    "))
    return str(path)


@dataclass(frozen=True)
class EagerOnCuda(seed.Config):
    """A recipe that chooses the eager twins on CUDA."""
    cuda_kernels: ClassVar[str] = "eager"


@pytest.mark.parametrize("config, expected", [(seed.Config, "triton"), (airbench94_muon.Config, "triton"),
                                              (hiverge.Config, "triton"), (EagerOnCuda, "eager")])
def test_on_cuda_the_default_is_the_recipes_choice(config, expected):
    assert default_kernels(CUDA, config) == expected
    assert default_kernels(CUDA, config()) == expected              # an instance says the same
    assert default_kernels(torch.device("cuda:1"), config) == expected
    assert default_kernels(CPU, config) == "eager"                  # the CPU: always the eager twins
    assert default_kernels("cpu", config()) == "eager"


def test_the_presets_and_a_recipe_file_inherit_their_recipes_choice(tmp_path):
    assert default_kernels(CUDA, find_recipe("seed-long").config_class) == "triton"
    mine = find_recipe(recipe_file(tmp_path, "mine", "seed"))
    assert default_kernels(CUDA, mine.config_class) == "triton"
    assert default_kernels(CPU, mine.config_class) == "eager"
    record = find_recipe(recipe_file(tmp_path, "my-record", "hiverge"))
    assert default_kernels(CUDA, record.config_class) == "triton"
    own = find_recipe(recipe_file(tmp_path, "own-choice", "seed", 'cuda_kernels: ClassVar[str] = "eager"\n'))
    assert default_kernels(CUDA, own.config_class) == "eager"


def test_a_recipe_file_naming_kernels_that_do_not_exist_is_refused_in_one_line(tmp_path):
    path = recipe_file(tmp_path, "typo", "seed", 'cuda_kernels: ClassVar[str] = "trition"\n')
    with pytest.raises(ValueError) as error:
        find_recipe(path)
    message = str(error.value)
    assert "cuda_kernels" in message and "'trition'" in message and "eager, triton" in message
    assert "\n" not in message


def test_the_command_line_takes_each_recipes_default_and_kernels_wins_over_it(tmp_path):
    eager = recipe_file(tmp_path, "hiverge-eager", "hiverge", 'cuda_kernels: ClassVar[str] = "eager"\n')
    recipes = [find_recipe(name) for name in ("seed", "airbench94-muon", "hiverge", eager)]
    args = build_parser().parse_args(["--recipe", f"seed,airbench94-muon,hiverge,{eager}"])
    assert recipe_kernels(args, recipes, CUDA) == {"seed": "triton", "airbench94-muon": "triton", "hiverge": "triton",
                                                   "hiverge-eager": "eager"}
    assert recipe_kernels(args, recipes, CPU) == {"seed": "eager", "airbench94-muon": "eager", "hiverge": "eager",
                                                  "hiverge-eager": "eager"}
    args = build_parser().parse_args(["--recipe", f"hiverge,{eager}", "--kernels", "triton"])
    assert recipe_kernels(args, recipes[2:], CUDA) == {"hiverge": "triton", "hiverge-eager": "triton"}
    args = build_parser().parse_args(["--recipe", "seed", "--kernels", "eager"])
    assert recipe_kernels(args, recipes[:1], CUDA) == {"seed": "eager"}


class Chosen(Exception):
    """Raised by a stand-in make_ops: the kernels fit() chose."""


@pytest.mark.parametrize("config, expected", [(hiverge.Config, "triton"), (EagerOnCuda, "eager")])
def test_fit_on_cuda_trains_with_the_recipes_default(monkeypatch, config, expected):
    monkeypatch.setattr(engine.api, "as_device", lambda value: torch.device(value))   # CUDA "present"
    monkeypatch.setattr(engine.api, "make_ops", lambda kind: (_ for _ in ()).throw(Chosen(kind)))
    with pytest.raises(Chosen) as chosen:
        fit(config(), device="cuda")
    assert chosen.value.args == (expected,)
    with pytest.raises(Chosen) as chosen:
        fit(config(), device="cuda", kernels="triton")
    assert chosen.value.args == ("triton",)


@pytest.mark.slow       # ~10 s on two busy cores: the triton point runs in Triton's interpreter
def test_a_sweep_over_recipes_runs_and_records_each_recipes_default(tmp_path, monkeypatch):
    """As on CUDA (the device's type is what the choice reads), on a CPU: hiverge and a
    recipe file deriving from it that chooses eager train in one sweep, each with its own
    kernels (the triton one through Triton's CPU interpreter, as every test here), and the
    JSON, each point and each checkpoint record what ran."""
    monkeypatch.setattr(engine.cli, "default_kernels", lambda device, config: default_kernels(CUDA, config))
    mine = recipe_file(tmp_path, "hiverge-eager", "hiverge", 'cuda_kernels: ClassVar[str] = "eager"\n')
    out = tmp_path / "sweep.json"
    main([*TINY, "--recipe", f"hiverge,{mine}", "--json", str(out), "--save", str(tmp_path / "model.pt")])
    payload = json.loads(out.read_text())
    assert [run["status"] for run in payload["runs"]] == ["ok", "ok"]
    assert payload["kernels"] == "hiverge: triton, hiverge-eager: eager"
    assert [(point["recipe"], point["kernels"]) for point in payload["points"]] == [
        ("hiverge", "triton"), ("hiverge-eager", "eager")]
    saved = sorted(tmp_path.glob("model*.pt"))
    assert len(saved) == 2
    kernels = {torch.load(path, weights_only=False)["recipe"]: torch.load(path, weights_only=False)["kernels"]
               for path in saved}
    assert kernels == {"hiverge": "triton", "hiverge-eager": "eager"}


def test_one_recipe_records_its_resolved_kernels(tmp_path, monkeypatch):
    monkeypatch.setattr(engine.cli, "default_kernels", lambda device, config: default_kernels(CUDA, config))
    out = tmp_path / "run.json"
    eager = recipe_file(tmp_path, "hiverge-eager", "hiverge", 'cuda_kernels: ClassVar[str] = "eager"\n')
    main([*TINY, "--recipe", eager, "--json", str(out)])
    payload = json.loads(out.read_text())
    assert [run["status"] for run in payload["runs"]] == ["ok"] and payload["kernels"] == "eager"
