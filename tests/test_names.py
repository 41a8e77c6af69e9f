import pytest

from promptmux.core.errors import InvalidNameError
from promptmux.registry import Registry, TaskSpec
from promptmux.registry.names import validate_alias, validate_name

BAD_NAMES = ["", "..", ".hidden", "a/b", "../escape", "UPPER", "with space", "a" * 65, "a\\b", "tab\t", "é", "-lead"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidNameError, match="invalid"):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "sentiment", "dog-grooming.v2", "x_1", "9lives", "a" * 64])
def test_safe_names_pass(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("alias", ["3", "latest"])
def test_aliases_that_look_like_references_are_refused(alias: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_alias(alias)


@pytest.mark.parametrize("name", ["../../etc", "..", "/abs"])
def test_registry_operations_never_touch_paths_outside_the_root(registry: Registry, tmp_path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        registry.tasks.get(name)
    with pytest.raises(ValueError):
        TaskSpec(name=name, base_model="tiny-random-llama")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry"]
