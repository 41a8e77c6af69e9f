"""Dependencies point one way, checked on the source rather than hoped for.

The packages stack `core <- methods <- registry <- models <- serving <- tasks <- cli`: `core`
(errors, the strict model, time, request fields, defaults) imports no other room; `methods`
(one module per PEFT method) only the core; `registry` (records and storage) neither models,
serving, tasks nor the CLI, and no tensor code; `models` (loading, shared by training and
serving) nothing above it; `serving` never `tasks` or the CLI; `tasks` (training, tuning,
evaluation, the demo) never the CLI, which composes every room from the top. Inside
`serving` the rooms point down: hosting -> http -> runtime -> engine client -> engine, with
`rollouts` (the decisions and their controller) beside the engine and bench on top; the
engine (pure torch + transformers) imports no Ray, FastAPI or Prometheus, the runtime no Ray
or FastAPI and nothing of the engine but its client and outputs, and the http room no engine
module and no Ray. The console (`console`, mounted by http) reads the registry and the
rollouts' statistics, and loads no model: no torch, no engine.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WEB = {"ray", "fastapi", "starlette", "uvicorn"}
TENSORS = {"torch", "safetensors", "peft", "transformers"}
PACKAGES = ["core", "methods", "registry", "models", "serving", "tasks", "cli"]  # bottom to top
ROOMS = {  # a room of serving/ -> what it may not import: rooms above or beside it, and libraries
    "engine": ({"rollouts", "runtime", "console", "http", "hosting", "bench"}, WEB | {"prometheus_client", "matplotlib"}),
    "rollouts": ({"engine", "runtime", "console", "http", "hosting", "bench"},
                 WEB | {"prometheus_client", "torch", "transformers"}),
    "runtime": ({"console", "http", "hosting", "bench"}, WEB),
    "console": ({"engine", "http", "hosting", "bench"}, {"ray", "torch", "transformers", "prometheus_client"}),
    "http": ({"engine", "hosting", "bench"}, {"ray"}),
    "hosting": ({"engine", "bench"}, set()),
    "bench": (set(), set()),
}
# registry/ keeps records and storage: no tensors, model loading, CLI, plots, sockets or web.
NOT_RECORDS = WEB | TENSORS | {"typer", "rich", "matplotlib", "socket", "prometheus_client"}
# The runtime reaches the engine through these modules only: its client, its configuration, and the outputs it returns.
ENGINE_FACE = {"promptmux.serving.engine.client", "promptmux.serving.engine.config", "promptmux.serving.engine.outputs"}


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


def package_offenders(files: list[Path], forbidden: set[str]) -> dict[str, list[str]]:
    return {path.name: sorted(imported_roots(path) & forbidden) for path in files if imported_roots(path) & forbidden}


def above(package: str) -> set[str]:
    return set(PACKAGES[PACKAGES.index(package) + 1:])


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_depend_one_way(package: str) -> None:
    forbidden = above(package) | {"core": TENSORS | WEB, "methods": {"transformers"} | WEB, "registry": NOT_RECORDS,
                                  "models": WEB}.get(package, set())
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    assert package_offenders(files, forbidden) == {}


def test_the_packages_are_every_folder_of_the_project() -> None:
    """Every package of pyproject.toml's layout is a layer above: none is left unchecked."""
    folders = {path.name for path in ROOT.iterdir() if (path / "__init__.py").exists()}
    assert folders == set(PACKAGES)


def serving_rooms(path: Path) -> set[str]:
    """The rooms of serving/ a file imports (`promptmux.serving.runtime.service` -> `runtime`)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        rooms |= {name.split(".")[2] for name in names if name.startswith("promptmux.serving.") and name.count(".") >= 2}
    return rooms


def room_offenders(room: str, files: list[Path]) -> dict[str, list[str]]:
    above, libraries = ROOMS[room]
    found = {path.name: sorted((serving_rooms(path) & above) | (imported_roots(path) & libraries)) for path in files}
    return {name: rooms for name, rooms in found.items() if rooms}


@pytest.mark.parametrize("room", sorted(ROOMS))
def test_serving_rooms_point_down(room: str) -> None:
    files = sorted((ROOT / "serving" / room).rglob("*.py"))
    assert files
    assert set(ROOMS) == {path.name for path in (ROOT / "serving").iterdir() if (path / "__init__.py").exists()}
    assert room_offenders(room, files) == {}


def test_the_room_rules_fail_when_broken(tmp_path: Path) -> None:
    """Each rule above finds a file that breaks it: the HTTP room reaching into the engine,
    the registry loading a model or drawing a CLI, the engine importing Ray or the rollouts."""
    http = tmp_path / "native.py"
    http.write_text("from promptmux.serving.engine.sequence import StreamEvent\nfrom promptmux.serving.runtime import results\n")
    assert room_offenders("http", [http]) == {"native.py": ["engine"]}
    engine = tmp_path / "runner.py"
    engine.write_text("import ray\nfrom promptmux.serving.rollouts.loop import advance\nfrom promptmux.models import loading\n")
    assert room_offenders("engine", [engine]) == {"runner.py": ["ray", "rollouts"]}
    records = tmp_path / "store.py"
    records.write_text("import typer\nimport torch\nfrom promptmux.models.loading import load_model\n")
    assert package_offenders([records], above("registry") | NOT_RECORDS) == {"store.py": ["models", "torch", "typer"]}


def module_graph() -> dict[str, set[str]]:
    """promptmux's modules and the promptmux modules each imports (anywhere in the file)."""
    modules = {}
    for package in PACKAGES:
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
    from promptmux.core.fields import GenerationParams
    from promptmux.serving.runtime.schemas import ParamsOverride

    assert ParamsOverride.model_fields.keys() == GenerationParams.model_fields.keys()
    assert all(field.default is None for field in ParamsOverride.model_fields.values())
    source = (ROOT / "serving" / "runtime" / "schemas.py").read_text()
    assert not any(f"    {name}:" in source for name in GenerationParams.model_fields)  # derived, not declared again


MAX_CLASS_LINES, MAX_PUBLIC_METHODS = 300, 25


def oversized_classes(files: list[Path]) -> dict[str, tuple[int, int]]:
    """Every class over the limits: its lines and public methods."""
    found = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                public = [n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                          and not n.name.startswith("_")]
                if lines > MAX_CLASS_LINES or len(public) > MAX_PUBLIC_METHODS:
                    found[f"{path.name}:{node.name}"] = (lines, len(public))
    return found


def test_no_class_does_too_many_jobs(tmp_path: Path) -> None:
    files = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    assert oversized_classes(files) == {}
    many = tmp_path / "store.py"  # the rule fails when broken: 26 public methods
    many.write_text("class Store:\n" + "".join(f"    def m{i}(self) -> None:\n        pass\n" for i in range(26)))
    assert oversized_classes([many]) == {"store.py:Store": (53, 26)}


def service_calls(function: ast.AST, helpers: dict[str, ast.FunctionDef]) -> int:
    """Calls a function makes on `service` or what it holds (`service.serve(...)`,
    `service.metrics.render()`), counting those of the module's helpers it hands `service` to."""
    count = 0
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            target, root = node.func, node.func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(target, ast.Attribute) and isinstance(root, ast.Name) and root.id == "service":
                count += 1
            elif isinstance(target, ast.Name) and target.id in helpers and \
                    any(isinstance(arg, ast.Name) and arg.id == "service" for arg in node.args):
                count += service_calls(helpers[target.id], helpers)
    return count


def route_calls(sources: list[str]) -> dict[str, int]:
    """Each HTTP route handler and the calls it makes on the runtime, helpers included."""
    trees = [ast.parse(source) for source in sources]
    helpers = {node.name: node for tree in trees for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    handlers = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.AsyncFunctionDef) and any(
                    isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr in ("get", "post")
                    for d in node.decorator_list):
                handlers[node.name] = service_calls(node, helpers)
    return handlers


def test_each_request_is_one_runtime_call() -> None:
    """The routers map a body to one runtime call and its result to a response; nothing goes
    back and forth between them."""
    sources = [(ROOT / "serving" / "http" / name).read_text() for name in ("native.py", "openai.py", "chat.py", "introspection.py")]
    calls = route_calls(sources)
    assert {"generate", "classify", "feedback", "completions", "chat", "models", "tasks", "task", "healthz", "metrics"} <= calls.keys()
    assert {name: count for name, count in calls.items() if count != 1} == {}
    back_and_forth = ("async def helper(service, x):\n    return await service.serve(x)\n\n"
                      "@router.post('/v1/x')\nasync def x(body):\n    items = await service.prepare(body)\n"
                      "    return await helper(service, items)\n")
    assert route_calls([back_and_forth]) == {"x": 2}  # the rule fails when broken


def test_the_console_and_the_cli_import_without_torch(tmp_path: Path) -> None:
    """`promptmux ui` starts in seconds because nothing on its path loads torch: run with
    torch (and transformers, PEFT, Ray) made unimportable, the CLI imports and the console's
    app is built over a registry."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'ray'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import promptmux.cli\n"
        "from promptmux.registry import Registry\n"
        "from promptmux.serving.console.app import console_app\n"
        "console_app(Registry(sys.argv[1]))\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "registry")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def engine_modules(path: Path) -> set[str]:
    """The modules of the engine a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        found |= {name for name in names if name.startswith("promptmux.serving.engine")}
    return found


def client_attributes(path: Path) -> set[str]:
    """Every attribute a file reads on something called `client` (`self.client.generate` -> `generate`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute):
            holder = node.value
            name = holder.attr if isinstance(holder, ast.Attribute) else holder.id if isinstance(holder, ast.Name) else None
            if name == "client":
                found.add(node.attr)
    return found


def test_the_runtime_reaches_the_engine_through_its_client_alone(tmp_path: Path) -> None:
    """The runtime imports nothing of the engine but its client and outputs, and reads nothing
    of the client but its public calls: not the engine or the loop it holds."""
    from promptmux.serving.engine.client import EngineClient

    files = sorted((ROOT / "serving" / "runtime").rglob("*.py"))
    assert {path.name: sorted(engine_modules(path) - ENGINE_FACE) for path in files if engine_modules(path) - ENGINE_FACE} == {}
    calls = {name for name in dir(EngineClient) if not name.startswith("_")}
    used = set().union(*(client_attributes(path) for path in files))
    assert {"classify", "generate", "stream"} <= used <= calls
    reaching = tmp_path / "answering.py"  # the rule fails when broken
    reaching.write_text("from promptmux.serving.engine.runner import Engine\nids = self.client.engine.tokenizer('x')\n")
    assert engine_modules(reaching) - ENGINE_FACE == {"promptmux.serving.engine.runner"}
    assert "engine" in client_attributes(reaching) and "engine" not in calls


def test_the_http_room_and_its_request_bodies_import_without_torch() -> None:
    """Bodies and routes are built where no model is: torch, transformers, PEFT and Ray made
    unimportable, the HTTP package and its request bodies import."""
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'peft', 'safetensors', 'ray'):\n"
        "            raise ImportError(f'{name} is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import promptmux.serving.http\n"
        "from promptmux.serving.http.api import ChatBody, CompletionBody, GenerateBody\n"
        "ChatBody(model='t', messages=[{'role': 'user', 'content': 'hi'}])\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


REQUEST_FIELDS = {"Temperature", "TopP", "TopK", "Seed", "Logprobs", "MaxNewTokens", "Message", "GenerationParams", "Input"}


def module_definitions(path: Path) -> set[str]:
    """The names a module defines at its top level: classes, functions and assignments."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def test_the_registry_holds_records_no_tensor_code_and_no_request_fields() -> None:
    files = sorted((ROOT / "registry").rglob("*.py"))
    assert package_offenders(files, TENSORS) == {}
    assert {path.name: sorted(module_definitions(path) & REQUEST_FIELDS) for path in files
            if module_definitions(path) & REQUEST_FIELDS} == {}
    assert REQUEST_FIELDS <= module_definitions(ROOT / "core" / "fields.py")


def test_each_peft_method_lives_in_its_own_module_registered_in_the_catalog() -> None:
    """One module per method, as PEFT's tuners: the catalog names each, each module holds one
    method under that name, and no module outside `methods/` branches on a method's name."""
    from promptmux.methods.catalog import CATALOG, method

    assert not (ROOT / "registry" / "methods.py").exists()
    for name, entry in CATALOG.items():
        assert (ROOT / "methods" / f"{entry.module.rsplit('.', 1)[1]}.py").exists()
        assert method(name).name == name
    branching = {str(path.relative_to(ROOT)) for package in PACKAGES if package != "methods"
                 for path in (ROOT / package).rglob("*.py")
                 if any(f'== "{name}"' in path.read_text() or f'!= "{name}"' in path.read_text() for name in CATALOG)}
    assert branching == set()


def test_the_guard_identifies_a_caller_once_and_no_route_again() -> None:
    """The middleware and the route share one identification: the guard asks the runtime who
    a key is, and hands the caller to the routes in the request's state."""
    guard = (ROOT / "serving" / "http" / "guard.py").read_text()
    assert guard.count("self.identify(") == 1
    routes = [(ROOT / "serving" / "http" / name).read_text() for name in ("native.py", "openai.py", "chat.py", "introspection.py")]
    assert not any("identify" in source for source in routes)


def test_every_room_says_its_job_in_its_docstring() -> None:
    rooms = [ROOT / package for package in PACKAGES] + [ROOT / "serving" / room for room in ROOMS]
    missing = [str(room.relative_to(ROOT)) for room in rooms
               if not ast.get_docstring(ast.parse((room / "__init__.py").read_text()))]
    assert missing == []
