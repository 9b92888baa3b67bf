"""No import circles among the engine's modules: each module's imports (at the top or
inside a function) lead only to modules that do not lead back to it."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def engine_modules() -> dict:
    modules = {}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports(path: Path, modules: dict) -> set:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def circle_through(start: str, graph: dict):
    stack = [(start, [start])]
    while stack:
        module, path = stack.pop()
        for target in graph[module]:
            if target == start:
                return path + [start]
            if target not in path:
                stack.append((target, path + [target]))
    return None


def test_the_engine_has_no_import_circles():
    modules = engine_modules()
    # A package's own __init__ importing its modules is how packages work, not a circle.
    graph = {name: {t for t in imports(path, modules) if t != name and not name.startswith(t + ".")}
             for name, path in modules.items()}
    circles = [" -> ".join(c) for c in (circle_through(name, graph) for name in graph) if c]
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_circle_finder_finds_one():
    assert circle_through("a", {"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle_through("a", {"a": {"b"}, "b": set()}) is None
