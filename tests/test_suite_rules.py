"""Rules the test suite keeps: no wall-clock limit that a slow or busy machine can hit
(a subprocess or wait given a `timeout=`, a sleep standing in for a wait), and a quick
subset that exists (the `slow` marker, registered and used)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def calls(path: Path):
    """Every call in `path`, but those inside waiting.poll_until (the one sanctioned poll)."""
    tree = ast.parse(path.read_text())
    allowed = {id(node) for function in ast.walk(tree)
               if isinstance(function, ast.FunctionDef) and path.name == "waiting.py" and function.name == "poll_until"
               for node in ast.walk(function)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and id(node) not in allowed:
            yield node


def test_no_test_waits_on_the_clock():
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for call in calls(path):
            name = getattr(call.func, "attr", getattr(call.func, "id", ""))
            if any(keyword.arg == "timeout" for keyword in call.keywords) or name in ("sleep", "alarm", "setitimer"):
                found.append(f"{path.name}:{call.lineno} {name}(...)")
    assert not found, f"a wall-clock limit a busy machine can hit: {found}"


def test_the_quick_subset_is_marked_and_registered():
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(marker.startswith("slow:") for marker in markers)
    marked = [path.name for path in (ROOT / "tests").glob("test_*.py") if "pytest.mark.slow" in path.read_text()]
    assert len(marked) >= 5, "the quick subset leaves out (almost) nothing"
