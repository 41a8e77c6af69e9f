"""Dependencies point one way, checked on the source rather than hoped for.

`tasks -> registry`, `serving -> registry`, `registry` imports neither; the engine (pure
torch + transformers) imports no Ray, FastAPI or Prometheus.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE_MODULES = ["engine", "batching", "decoding", "sampling", "prompt_cache", "scheduler", "async_engine", "config",
                  "errors"]
SERVER_LIBRARIES = {"ray", "fastapi", "starlette", "uvicorn", "prometheus_client"}


def root(module: str) -> str:
    """`promptmux.serving.app` → `serving`; `torch.nn` → `torch`."""
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


def test_the_engine_knows_nothing_of_the_server() -> None:
    offenders = {name: sorted(imported_roots(ROOT / "serving" / f"{name}.py") & SERVER_LIBRARIES) for name in ENGINE_MODULES}
    assert {name: libs for name, libs in offenders.items() if libs} == {}
