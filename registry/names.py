"""Name validation: the only guard between user input and paths under the registry root.

Task, alias and variant names become path components, so they are restricted to a
pattern that can never contain a separator or start with a dot (no `..`, no hidden
files), and to a bounded length.
"""

import re
from functools import partial
from typing import Annotated

from pydantic import AfterValidator

from promptmux.core.errors import InvalidNameError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
VERSION_PATTERN = re.compile(r"[1-9][0-9]{0,8}")  # ASCII digits only: str.isdigit() takes "²" and "٣"
RESERVED_ALIASES = frozenset({"latest"})


def validate_name(name: str, what: str = "name") -> str:
    """Return `name` unchanged if it is safe to use as a path component, else raise."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(
            f"invalid {what} {name!r}: use 1-64 characters of lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


def safe_name(what: str) -> AfterValidator:
    """A pydantic field check that a name is safe (`validate_name`), saying what it names."""
    return AfterValidator(partial(validate_name, what=what))


TaskName = Annotated[str, safe_name("task name")]


def parse_version(text: str) -> int | None:
    """The version number `text` spells in ASCII digits (1, 2, ...), else None."""
    return int(text) if VERSION_PATTERN.fullmatch(text) else None


def validate_alias(name: str) -> str:
    """Alias names: safe names that cannot be mistaken for a version number or `latest`."""
    validate_name(name, "alias")
    if name.isdigit() or name in RESERVED_ALIASES:
        raise InvalidNameError(f"invalid alias {name!r}: it would be read as a version reference")
    return name
