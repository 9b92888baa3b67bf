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


# ---- the quick start, and every recipe in every list of recipes ----

def section(markdown: str, title: str) -> str:
    """The text under the heading `title` (any level), up to the next heading of any level."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and line.lstrip("#").strip() == title)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start + 1:end])


def table_rows(text: str, first_header: str) -> dict:
    """{first cell: [cells]} of the markdown table in `text` whose first header cell is `first_header`."""
    rows, inside = {}, False
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            inside = False
        elif cells[0] == first_header:
            inside = True
        elif inside and not set(line) <= set("|- "):
            rows[cells[0]] = cells
    return rows


def built_in_names() -> list:
    from engine.options import built_in_recipes
    return list(built_in_recipes())


def recipe_docs(markdown: str) -> set:
    """The documents the recipes table links (docs/recipe.md, ...)."""
    rows = table_rows(markdown, "`--recipe`")
    return {doc for cells in rows.values() for doc in re.findall(r"\]\((docs/[^)]+\.md)\)", cells[1])}


def test_the_quick_start_comes_first_fits_in_20_lines_and_its_commands_parse():
    import shlex
    markdown = README.read_text()
    headings = [line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("## ")]
    assert headings[0] == "Quick start", "the quick start opens the README, before the reference"
    quick = section(markdown, "Quick start")
    assert len(quick.strip().splitlines()) <= 20
    commands = [line.split("  #")[0].strip() for line in quick.splitlines()
                if line.startswith(("python", "cifar-speedrun"))]
    assert commands[:3] == ['python3 -m pip install -e ".[test]"', "python3 -m pytest -n 2 --dist loadfile",
                            'python3 -m pytest -m "not slow"']             # install, test, the quick subset
    ci = (README.parent / ".ci" / "run").read_text().splitlines()
    assert commands[:2] == [line for line in ci if line.startswith("python3 ")], "CI runs the README's two commands"
    for command in commands:
        words = shlex.split(command)
        if words[:2] != ["python", "run.py"] or "--help" in words:
            continue
        name = "run.py " + words[2] if len(words) > 2 and words[2] in ("evaluate", "convert", "compare") else "run.py"
        PARSERS[name]().parse_args(words[3:] if name != "run.py" else words[2:])   # exits on an unknown option


def recipe_list_problems(markdown: str) -> list:
    """What README's lists of recipes leave out: every built-in recipe must be in the recipes
    table, the --recipe option row, the table of what each recipe refuses, the quick start
    and Layout (with its file and document); the --help recipe group names every document."""
    from engine.recipes import BUILT_IN
    names, docs = built_in_names(), recipe_docs(markdown)
    if not docs:
        return ["the recipes table links no recipe document"]
    lists = {
        "the recipes table": " ".join(table_rows(markdown, "`--recipe`")),
        "the --recipe option row": table_rows(section(markdown, "Options"), "option").get("`--recipe R`", [""] * 2)[1],
        "the table of what each recipe refuses": " ".join(table_rows(markdown, "recipe")),
        "Layout": section(markdown, "Layout"),
    }
    problems = [f"{where}: {name}" for where, text in lists.items() for name in names if f"`{name}`" not in text]
    quick = section(markdown, "Quick start")
    problems += [f"the quick start: {name}" for name in names if not re.search(rf"[ ,]{re.escape(name)}\b(?!-)", quick)]
    layout = section(markdown, "Layout")
    problems += [f"Layout: {module}.py" for module in BUILT_IN if f"`{module}.py`" not in layout]
    problems += [f"Layout: {doc}" for doc in docs if f"`{doc}`" not in layout]
    group = next(g for g in build_parser()._action_groups if any("--recipe" in a.option_strings
                                                                  for a in g._group_actions))
    problems += [f"--help's recipe group title: {doc}" for doc in docs if doc not in group.title]
    problems += [f"{doc}: no such file" for doc in docs if not (README.parent / doc).is_file()]
    return problems


def test_every_recipe_is_in_every_list_of_recipes():
    assert recipe_list_problems(README.read_text()) == []


@pytest.mark.parametrize("where, title, old, new", [
    ("the recipes table", "The recipes", "| `hiverge` |", "| |"),
    ("the --recipe option row", "Options", "`airbench94-muon` or `hiverge` (above)", "`airbench94-muon` (above)"),
    ("the table of what each recipe refuses", "What each recipe refuses, and what to use instead",
     "| `seed-long` |", "| seed-long |"),
    ("the quick start", "Quick start", "hiverge", "seed"),
    ("Layout", "Layout", "`hiverge.py`", "the 2025 record's file"),
])
def test_a_recipe_left_out_of_a_list_is_seen(where, title, old, new):
    """Each list's check, seen to fail: one recipe taken out of that list alone."""
    markdown = README.read_text()
    text = section(markdown, title)
    assert old in text
    problems = recipe_list_problems(markdown.replace(text, text.replace(old, new)))
    assert problems and all(problem.startswith(where) for problem in problems), problems


def test_each_override_row_names_the_recipes_that_refuse_it_and_the_refusal_table_what_instead():
    from engine.options import INSTEAD, OVERRIDES, built_in_recipes
    markdown = README.read_text()
    options, refusals = table_rows(section(markdown, "Options"), "option"), table_rows(markdown, "recipe")
    for name, fields in built_in_recipes().items():
        refused = [option for option, (field, _, _) in OVERRIDES.items() if field not in fields]
        _, refuses, instead = refusals[f"`{name}`"]
        for option in refused:
            row = next(cells[1] for first, cells in options.items() if f"`{option}`" in first)
            assert f"`--recipe {name}`" in row, f"README: the {option} row does not say that {name} refuses it"
            assert f"`{option}`" in refuses, f"README: the refusal table's {name} row misses {option}"
            present = [alt for alt in INSTEAD.get(OVERRIDES[option][0], ((), ""))[0] if alt in fields]
            if present:
                assert f"`--set {present[0]}=V`" in instead, \
                    f"README: the refusal table's {name} row does not say to use --set {present[0]} for {option}"
