"""The one JSONL reader: a file's non-blank lines with their numbers, for the readers of
training data and of offline requests to parse each as they need."""

from pathlib import Path

from promptmux.core.errors import PromptmuxError


def jsonl_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) for every non-blank line of `path`; an unreadable file is refused in one line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PromptmuxError(f"cannot read {path}: {exc.strerror}") from exc
    return [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
