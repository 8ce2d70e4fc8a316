"""The package's layers: dependencies run one way, and every source file stays readable.

Each module belongs to a layer; no module imports (at the top or inside a function) from a layer
above its own. The built-in passes (``passes/``, installed as ``reverso.passes``) sit between the
pass machinery and the conversions that run them.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: the layers, lowest first: a module may import its own layer and those before it
LAYERS = [
    {"errors", "names", "options", "settings", "lazy", "models", "irevnet", "hcnn", "nn"},
    {"ir"},
    {"rewrite"},
    {"frontend"},
    {"analysis"},
    {"planner"},
    {"compiler"},
    {"passes"},
    {"convert"},
    {"study"},
    {"sweep"},
    {"testing", "cli", "demo", "support", "timm", "__init__", "__main__"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def sources() -> list[tuple[str, Path]]:
    """(the module's top-level name inside reverso, its file) for every source file."""
    found = [("passes", p) for p in sorted((ROOT / "passes").rglob("*.py"))]
    for path in sorted((ROOT / "reverso").rglob("*.py")):
        part = path.relative_to(ROOT / "reverso").parts[0]
        found.append((part.removesuffix(".py"), path))
    return found


def imported(path: Path, top: str) -> list[tuple[str, int]]:
    """The reverso layers a file imports from (absolute and relative imports), with lines."""
    tree = ast.parse(path.read_text())
    package = [top] if path.name == "__init__.py" or top == "passes" else []
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: inside the module's own package (or one above)
                base = package if node.level == 1 else []
                module = ".".join([*base, node.module or ""]).strip(".")
                first = (module or (node.names[0].name if not base else top)).split(".")[0]
                names.append((first if module else top, node.lineno))
            elif node.module and node.module.split(".")[0] == "reverso":
                parts = node.module.split(".")
                first = parts[1] if len(parts) > 1 else node.names[0].name
                names.append((first, node.lineno))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "reverso" and len(parts) > 1:
                    names.append((parts[1], node.lineno))
    return names


@pytest.mark.parametrize(("top", "path"), sources(), ids=lambda v: str(v))
def test_no_module_imports_a_layer_above_its_own(top, path):
    assert top in LEVEL, f"{path}: module {top!r} has no layer; add it to LAYERS"
    for name, line in imported(path, top):
        if name not in LEVEL:
            continue  # a name the package's __init__ exports lazily
        assert LEVEL[name] <= LEVEL[top], (
            f"{path.relative_to(ROOT)}:{line} imports reverso.{name} (layer {LEVEL[name]}) "
            f"from layer {LEVEL[top]} ({top})"
        )


@pytest.mark.parametrize(("top", "path"), sources(), ids=lambda v: str(v))
def test_files_and_functions_stay_short(top, path):
    text = path.read_text()
    assert text.count("\n") <= 400, f"{path.relative_to(ROOT)} has {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{path.relative_to(ROOT)}: {node.name} has {length} lines"


@pytest.mark.parametrize(("top", "path"), sources(), ids=lambda v: str(v))
def test_fmt_skip_only_keeps_tables_of_data(top, path):
    """``# fmt: skip`` may keep a module-level table of literals on few lines; it never folds
    statements onto one line to stay under the size limits."""
    tree = ast.parse(path.read_text())
    tables = {
        node.end_lineno
        for node in tree.body
        if isinstance(node, (ast.Assign, ast.AnnAssign))
        and isinstance(node.value, (ast.Dict, ast.List, ast.Tuple, ast.Set))
    }
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if "# fmt: skip" in line:
            assert number in tables, f"{path.relative_to(ROOT)}:{number} folds code: {line.strip()}"


def module_name(path: Path) -> str:
    """``reverso.a.b`` of a source file (the built-in passes as ``reverso.passes.x``)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[0] == "passes":
        parts = ("reverso", *parts)
    return ".".join(parts).removesuffix(".__init__")


def runtime_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` a file imports, at the top or inside a function (not those a
    ``if TYPE_CHECKING:`` block names for static tools only)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(p for p in (base, node.module or "") if p)
            for candidate in (target, *(f"{target}.{a.name}" for a in node.names)):
                if candidate in modules:
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def test_no_package_has_an_import_cycle_inside():
    """Within each package, the modules import each other one way (a cycle through function-level
    imports counts too: it is the same knot, deferred)."""
    paths = {module_name(p): p for _, p in sources()}
    graph = {m: runtime_imports(p, set(paths)) for m, p in paths.items()}

    def package(m):
        return m if paths[m].name == "__init__.py" else m.rpartition(".")[0]

    def cycle_from(start):
        stack = [(start, [start])]
        while stack:
            current, path = stack.pop()
            for nxt in graph[current]:
                if package(nxt) != package(start) or nxt == package(start):
                    continue  # another package, or the package's own __init__
                if nxt == start:
                    return path
                if nxt not in path:
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = {tuple(sorted(c)) for m in graph if (c := cycle_from(m))}
    assert not cycles, "import cycles inside a package: " + "; ".join(
        " <-> ".join(c) for c in cycles
    )
