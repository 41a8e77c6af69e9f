"""Dependencies point one way, checked on the source rather than hoped for.

`tasks -> registry`, `serving -> registry`, `registry` imports neither. Inside `serving`,
the rooms point down: http -> runtime -> engine (bench and the CLI sit on top); the engine
(pure torch + transformers) imports no Ray, FastAPI or Prometheus, and the runtime no Ray
or FastAPI.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = {"ray", "fastapi", "starlette", "uvicorn"}
ROOMS = {  # a room of serving/ -> what it may not import: rooms above it, and libraries
    "engine": ({"runtime", "http", "bench", "cli"}, WEB | {"prometheus_client"}),
    "runtime": ({"http", "bench", "cli"}, WEB),
    "http": ({"bench", "cli"}, set()),
    "bench": ({"cli"}, set()),
}


def root(module: str) -> str:
    """`promptmux.serving.http.app` → `serving`; `torch.nn` → `torch`."""
    parts = module.split(".")
    return parts[1] if parts[0] == "promptmux" and len(parts) > 1 else parts[0]


def imported_roots(path: Path) -> set[str]:
    """Top-level names (promptmux's packages by their own name) of every module a file imports, at any depth."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {root(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(root(node.module))
    return roots


@pytest.mark.parametrize("package, forbidden", [
    ("registry", {"serving", "tasks"}),
    ("tasks", {"serving"}),
    ("serving", {"tasks"}),
])
def test_packages_depend_one_way(package: str, forbidden: set[str]) -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(imported_roots(path) & forbidden)
                 for path in sorted((ROOT / package).rglob("*.py")) if imported_roots(path) & forbidden}
    assert offenders == {}


def serving_rooms(path: Path) -> set[str]:
    """The rooms of serving/ a file imports (`promptmux.serving.runtime.service` -> `runtime`)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        rooms |= {name.split(".")[2] for name in names if name.startswith("promptmux.serving.") and name.count(".") >= 2}
    return rooms


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_serving_rooms_point_down(room: str) -> None:
    above, libraries = ROOMS[room]
    files = sorted((ROOT / "serving" / room).rglob("*.py"))
    assert files
    offenders = {str(path.relative_to(ROOT)): sorted((serving_rooms(path) & above) | (imported_roots(path) & libraries))
                 for path in files}
    assert {name: found for name, found in offenders.items() if found} == {}


def module_graph() -> dict[str, set[str]]:
    """promptmux's modules and the promptmux modules each imports (anywhere in the file)."""
    modules = {}
    for package in ("registry", "serving", "tasks"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("promptmux", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("promptmux", *parts))
            modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from package import module` depends on the module; `from module import name` on the module
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules.keys()
                names = [alias for alias in node.names if f"{node.module}.{alias.name}" not in modules]
                targets |= submodules | ({node.module} if names else set())
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = module_graph()
    assert "promptmux.serving.engine.scheduler" in graph
    assert cycles(graph) == []


def test_the_scheduler_knows_the_model_only_through_its_protocol() -> None:
    graph = module_graph()
    assert "promptmux.serving.engine.protocol" in graph["promptmux.serving.engine.scheduler"]
    assert "promptmux.serving.engine.runner" not in graph["promptmux.serving.engine.scheduler"]
    assert "promptmux.serving.engine.scheduler" not in graph["promptmux.serving.engine.runner"]


def test_a_cycle_would_be_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
