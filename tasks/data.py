"""Training data from local files: JSON (a list of objects), JSONL, CSV, or a dataset saved
with the `datasets` library (a directory, loaded with `load_from_disk` when installed)."""

import csv
import hashlib
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from pydantic import Field, field_validator

from promptmux.core.errors import DataError
from promptmux.core.jsonl import jsonl_lines
from promptmux.core.strict_model import StrictModel


@dataclass(frozen=True)
class Example:
    input: str
    target: str


def load_records(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    try:
        if path.is_dir():
            return _load_saved_dataset(path)
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return [json.loads(line) for _, line in jsonl_lines(path)]
        if suffix == ".json":
            data = json.loads(path.read_text())
            return data if isinstance(data, list) else data.get("data", data.get("examples", []))
        if suffix == ".csv":
            with path.open(newline="") as handle:
                return list(csv.DictReader(handle))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot parse ({exc})") from exc
    raise DataError(f"{path}: unsupported format; use .json, .jsonl, .csv or a saved datasets directory")


def _load_saved_dataset(path: Path) -> list[dict]:
    try:
        from datasets import load_from_disk
    except ImportError as exc:
        raise DataError(f"{path} is a directory: reading saved datasets needs `pip install datasets`") from exc
    dataset = load_from_disk(str(path))
    if hasattr(dataset, "keys"):  # a DatasetDict: take its training split
        dataset = dataset["train"] if "train" in dataset else dataset[next(iter(dataset.keys()))]
    return [dict(row) for row in dataset]


class DataFields(StrictModel):
    """Which fields of a record are the input and the target, and what part of the input
    the task sees: a spec file's `data:` section, or the CLI's flags."""

    input_field: str = "input"
    target_field: str = "output"
    input_pattern: str | None = Field(
        None, description="regular expression with one group: the part of the input field the task sees "
        "(e.g. the comment inside an already templated prompt, so that clients send the comment alone)"
    )

    @field_validator("input_pattern")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                groups = re.compile(value).groups
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from exc
            if groups != 1:
                raise ValueError(f"needs exactly one group, has {groups}")
        return value


def examples(records: list[dict], fields: DataFields, source: Path, limit: int | None = None) -> list[Example]:
    """Pull the two named fields out of every record, refusing records without them."""
    if not records:
        raise DataError(f"{source}: no records")
    chosen = records[:limit] if limit else records
    pattern = re.compile(fields.input_pattern, re.DOTALL) if fields.input_pattern else None
    found = []
    for number, record in enumerate(chosen, 1):
        if not isinstance(record, dict) or fields.input_field not in record or fields.target_field not in record:
            names = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{source} record {number}: needs fields {fields.input_field!r} and "
                            f"{fields.target_field!r}, has {names}")
        text = str(record[fields.input_field])
        if pattern:
            match = pattern.search(text)
            if match is None:
                raise DataError(f"{source} record {number}: input_pattern {fields.input_pattern!r} does not match "
                                f"{text[:80]!r}")
            text = match.group(1).strip()
        found.append(Example(text, str(record[fields.target_field])))
    return found


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over the bytes of the data files (or every file of a saved dataset), in order."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def row_id(example: Example) -> str:
    """A row's id: a digest of its input and target, the same in any file order."""
    return hashlib.sha256(f"{example.input}\0{example.target}".encode()).hexdigest()[:16]


def rows_digest(rows: list[Example]) -> str:
    """One digest of a set of rows (their ids, sorted): two evaluations on equal digests used the same rows."""
    return hashlib.sha256("\n".join(sorted(row_id(row) for row in rows)).encode()).hexdigest()[:16]


def held_out_split(items: list[Example], eval_fraction: float) -> tuple[list[Example], list[Example]]:
    """(train, held out), the held-out rows chosen by their ids rather than a seed: every version
    trained on the same data file is evaluated on the same rows, whatever its training seed."""
    held_out = max(1, round(len(items) * eval_fraction))
    if held_out >= len(items):
        raise DataError(f"{len(items)} examples are too few to hold out {eval_fraction:.0%} for evaluation")
    chosen = set(sorted(range(len(items)), key=lambda i: (row_id(items[i]), i))[:held_out])
    return ([item for i, item in enumerate(items) if i not in chosen],
            [item for i, item in enumerate(items) if i in chosen])


def split(items: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(the rest, a shuffled share): the validation rows that early stopping watches."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    held_out = max(1, round(len(shuffled) * eval_fraction))
    if held_out >= len(shuffled):
        raise DataError(f"{len(shuffled)} examples are too few to hold out {eval_fraction:.0%} for evaluation")
    return shuffled[held_out:], shuffled[:held_out]
