"""Output paths (issue 25): every output option refuses an empty or blank path up front, one
test per option; full or read-only output folders get one line and leave nothing behind."""
import os

import pytest

from engine.cli import main
from engine.outputs import OutputError, check_output_path

TINY = ["--data", "synthetic", "--synthetic-size", "256", "--batch-size", "64", "--base-width", "8", "--epochs", "1",
        "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("blank", ["", " ", "\t"])
@pytest.mark.parametrize("command", [
    pytest.param(lambda path: [*TINY, "--json", path], id="--json"),
    pytest.param(lambda path: [*TINY, "--save", path], id="--save"),
    pytest.param(lambda path: [*TINY, "--plot", path], id="--plot"),
    pytest.param(lambda path: ["evaluate", "--checkpoint", "none.pt", "--device", "cpu", "--json", path],
                 id="evaluate --json"),
    pytest.param(lambda path: ["convert", "synthetic", path], id="convert OUT"),
])
def test_an_empty_or_blank_output_path_is_refused_up_front(tmp_path, monkeypatch, capsys, command, blank):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(command(blank))
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "empty or blank path" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("blank", ["", "  "])
def test_the_library_check_refuses_an_empty_path_too(blank):
    with pytest.raises(OutputError, match="--json .*an empty or blank path names no file"):
        check_output_path("--json", blank)
