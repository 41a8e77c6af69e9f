"""Dependencies point one way, checked on the source rather than hoped for.

The packages stack `registry <- serving <- tasks`: `registry` (records and storage) imports
neither; `serving` imports `registry` and never `tasks`; `tasks` (training, evaluation, the
demo and the root CLI, which composes every room) sits on top. Inside `serving` the rooms
point down: http -> runtime -> engine -> models, with `rollouts` (the decisions) beside the
engine and bench on top; the engine and the models (pure torch + transformers) import no
Ray, FastAPI or Prometheus, the runtime no Ray or FastAPI, and the http room no engine
module: it talks to the runtime alone.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = {"ray", "fastapi", "starlette", "uvicorn"}
ROOMS = {  # a room of serving/ -> what it may not import: rooms above or beside it, and libraries
    "models": ({"engine", "rollouts", "runtime", "http", "bench"}, WEB | {"prometheus_client", "matplotlib"}),
    "engine": ({"rollouts", "runtime", "http", "bench"}, WEB | {"prometheus_client", "matplotlib"}),
    "rollouts": ({"models", "engine", "runtime", "http", "bench"}, WEB | {"prometheus_client", "torch", "transformers"}),
    "runtime": ({"http", "bench"}, WEB),
    "http": ({"engine", "bench"}, set()),
    "bench": (set(), set()),
}
# registry/ keeps records and storage: no model loading, CLI, plots, sockets or web.
NOT_RECORDS = WEB | {"transformers", "typer", "rich", "matplotlib", "socket", "prometheus_client"}
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
    ("registry", {"serving", "tasks"} | NOT_RECORDS),
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
    assert set(ROOMS) == {path.name for path in (ROOT / "serving").iterdir() if (path / "__init__.py").exists()}
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


def test_the_scheduler_schedules_and_leaves_tokens_to_the_runner_and_each_sequence() -> None:
    """No sampler, detokenizer or stop-string code in the scheduler: the runner picks tokens,
    each row's `Sequence` records them, stops and emits."""
    imports = module_graph()["promptmux.serving.engine.scheduler"]
    assert "promptmux.serving.engine.sequence" in imports
    assert not imports & {"promptmux.serving.engine.sampling", "promptmux.serving.engine.detokenizer"}


def test_a_cycle_would_be_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]



def registry_class_imports(path: Path) -> list[str]:
    """The imports in a file that reach the `Registry` class or its module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module in ("promptmux.registry", "promptmux.registry.registry"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name == "Registry" or node.module.endswith(".registry.registry")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "promptmux.registry.registry"]
    return found


def test_the_engine_loads_prompts_through_a_loader_not_the_registry(tmp_path: Path) -> None:
    offenders = {str(path.relative_to(ROOT)): registry_class_imports(path)
                 for path in sorted((ROOT / "serving" / "engine").rglob("*.py")) if registry_class_imports(path)}
    assert offenders == {}
    breaking = tmp_path / "runner.py"  # the rule fails when broken
    breaking.write_text("from promptmux.registry import PromptVersion, Registry\nimport promptmux.registry.registry\n")
    assert registry_class_imports(breaking) == ["promptmux.registry.Registry", "promptmux.registry.registry"]


def test_no_test_module_imports_another_or_conftest() -> None:
    tests = {path.stem for path in (ROOT / "tests").glob("*.py")}
    offenders = {path.name: sorted(found) for path in sorted((ROOT / "tests").glob("*.py"))
                 if (found := imported_roots(path) & {name for name in tests if name.startswith("test_") or name == "conftest"})}
    assert offenders == {}


def test_sampling_fields_are_declared_once_and_every_request_can_override_each() -> None:
    from promptmux.registry.schemas import GenerationParams
    from promptmux.serving.runtime.schemas import ParamsOverride

    assert ParamsOverride.model_fields.keys() == GenerationParams.model_fields.keys()
    assert all(field.default is None for field in ParamsOverride.model_fields.values())
    source = (ROOT / "serving" / "runtime" / "schemas.py").read_text()
    assert not any(f"    {name}:" in source for name in GenerationParams.model_fields)  # derived, not declared again


MAX_CLASS_LINES, MAX_PUBLIC_METHODS = 300, 25
TO_SPLIT = {"registry/registry.py:Registry"}  # issue 25: split by entity; nothing may join it


def oversized_classes() -> dict[str, tuple[int, int]]:
    """Every class over the limits: its lines and public methods."""
    found = {}
    for package in ("registry", "serving", "tasks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    lines = node.end_lineno - node.lineno + 1
                    public = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                              and not n.name.startswith("_")]
                    if lines > MAX_CLASS_LINES or len(public) > MAX_PUBLIC_METHODS:
                        found[f"{path.relative_to(ROOT)}:{node.name}"] = (lines, len(public))
    return found


def test_no_class_does_too_many_jobs() -> None:
    oversized = oversized_classes()
    assert oversized.keys() <= TO_SPLIT, oversized
