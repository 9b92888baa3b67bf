"""README's option tables and the command line's parsers agree, in both directions.

Every markdown table whose first header cell is "option" documents one command:
the one named by a code span `run.py ...` in the nearest heading above it, else
`run.py` itself. Each documented option must exist in that command's parser, and
each parser option (positional arguments by their metavar) must be documented.
"""
import re
from pathlib import Path

import pytest

from engine.cli import build_convert_parser, build_evaluate_parser, build_parser
from engine.options import build_tune_parser
from engine.results.compare import build_compare_parser

README = Path(__file__).resolve().parents[1] / "README.md"
PARSERS = {"run.py": build_parser, "run.py evaluate": build_evaluate_parser, "run.py convert": build_convert_parser,
           "run.py compare": build_compare_parser, "run.py tune": build_tune_parser}


def option_tables(markdown: str) -> dict:
    """{command: set of documented names}: "--option" strings and positional metavars."""
    tables, command, previous, documented = {}, None, "", None
    for line in markdown.splitlines():
        if line.startswith("#"):
            named = re.search(r"`(run\.py[^`]*)`", line)
            command = named.group(1).strip() if named else "run.py"
        elif line.startswith("|") and not previous.startswith("|"):
            header = [cell.strip() for cell in line.strip("|").split("|")]
            documented = tables.setdefault(command, set()) if header[0] == "option" else None
        elif line.startswith("|") and documented is not None and not set(line) <= set("|- "):
            first_cell = line.strip("|").split("|")[0]
            for span in re.findall(r"`([^`]+)`", first_cell):
                documented.add(span.split()[0])
        previous = line
    return tables


def parser_names(parser) -> list:
    """One entry per argument: the set of names that document it."""
    names = []
    for action in parser._actions:
        if "--help" in action.option_strings:
            continue
        long = {s for s in action.option_strings if s.startswith("--")}
        names.append(long or {action.metavar or action.dest})
    return names


def test_the_readme_documents_every_command():
    assert set(option_tables(README.read_text())) == set(PARSERS)


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_readme_table_and_parser_agree(command):
    documented = option_tables(README.read_text()).get(command, set())
    arguments = parser_names(PARSERS[command]())
    undocumented = [sorted(names)[0] for names in arguments if not names & documented]
    assert not undocumented, f"{command}: options missing from README's table: {undocumented}"
    known = set().union(*arguments)
    unknown = sorted(documented - known)
    assert not unknown, f"{command}: README's table names options the parser lacks: {unknown}"


def test_the_table_reader_sees_headings_rows_and_several_options_per_row():
    markdown = "\n".join([
        "## Options", "| option | meaning |", "| --- | --- |", "| `--a N` | x |", "| `--b`, `--c` | y |", "",
        "| other | table |", "| --- | --- |", "| `--not-an-option` | z |", "",
        "### `run.py convert`", "| option | meaning |", "| --- | --- |", "| `SRC` | s |",
    ])
    assert option_tables(markdown) == {"run.py": {"--a", "--b", "--c"}, "run.py convert": {"SRC"}}
