"""Which prompt version serves a request.

An explicit version wins, then an alias, then the task's `production` alias, then the
latest version.
"""

from registry import PromptVersion, Registry

DEFAULT_ALIAS = "production"


def resolve_version(registry: Registry, task: str, version: int | None = None, alias: str | None = None) -> PromptVersion:
    if version is not None:
        return registry.get_version(task, version)
    if alias is not None:
        return registry.resolve(task, alias)
    if DEFAULT_ALIAS in registry.aliases(task):
        return registry.resolve(task, DEFAULT_ALIAS)
    return registry.latest(task)
