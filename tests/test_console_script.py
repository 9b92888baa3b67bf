"""`pip install .` gives `cifar-speedrun`, the same program as `python run.py`."""
import importlib
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_console_script_runs_what_run_py_runs():
    try:
        import tomllib                                     # Python 3.11+
    except ModuleNotFoundError:
        import tomli as tomllib                            # the [test] extra's, before 3.11
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert list(scripts) == ["cifar-speedrun"]
    module, function = scripts["cifar-speedrun"].split(":")
    entry_point = getattr(importlib.import_module(module), function)
    run_py = runpy.run_path(str(ROOT / "run.py"), run_name="run_py_as_a_module")
    assert run_py["main"] is entry_point                   # subcommands included: main dispatches them


def test_main_returns_the_exit_status_for_the_subcommands(tmp_path, capsys):
    from engine.cli import main

    assert main(["convert", str(tmp_path / "missing.npz"), str(tmp_path / "out.npz")]) == 2
    assert "run.py convert: error: no such file" in capsys.readouterr().err


def test_messages_name_the_command_the_user_typed(tmp_path, capsys, monkeypatch):
    from engine.cli import build_parser, main

    missing, out = str(tmp_path / "missing.npz"), str(tmp_path / "out.npz")
    monkeypatch.setattr("sys.argv", ["/venv/bin/cifar-speedrun", "convert", missing, out])
    assert main() == 2
    assert capsys.readouterr().err.startswith("cifar-speedrun convert: error: no such file")
    monkeypatch.setattr("sys.argv", ["run.py", "evaluate", "--checkpoint", missing])
    assert main() == 2
    assert capsys.readouterr().err.startswith("run.py evaluate: error: no such checkpoint")
    help_text = build_parser("cifar-speedrun").format_help()
    assert help_text.startswith("usage: cifar-speedrun ") and "`cifar-speedrun evaluate --checkpoint" in help_text
    assert "`python run.py evaluate --checkpoint" in build_parser().format_help()
