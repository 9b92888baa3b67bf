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


def test_the_test_extra_installs_every_package_the_tests_import():
    """`pip install -e ".[test]"` is all the tests need: every package a test imports (or
    asks for with importorskip) is a dependency or in the [test] extra, so none is skipped
    or fails for want of it."""
    import ast
    import re
    import sys
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {re.split(r"[<>=!~;\[ ]", requirement)[0].lower()
                for requirement in project["dependencies"] + project["optional-dependencies"]["test"]}
    ours = ({"engine", "kernels", "bench"} | {path.stem for path in (ROOT / "tests").glob("*.py")}
            | {path.stem for path in (ROOT / "bench").glob("*.py")})         # bench scripts, imported from bench/
    distribution = {"PIL": "pillow"}                                   # import name -> package name
    imported = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip":
                imported.add(node.args[0].value.split(".")[0])
    third_party = {name for name in imported if name not in sys.stdlib_module_names and name not in ours}
    missing = sorted(name for name in third_party if distribution.get(name, name).lower() not in required)
    assert not missing, f"the tests import {missing}: add them to [project.optional-dependencies] test"
