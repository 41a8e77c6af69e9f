"""Training data from local files: JSON (a list of objects), JSONL, CSV, or a dataset saved
with the `datasets` library (a directory, loaded with `load_from_disk` when installed)."""

import csv
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from registry import PromptmuxError


class DataError(PromptmuxError):
    """The data cannot be read or lacks the named fields."""


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
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
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


def examples(records: list[dict], input_field: str, target_field: str, source: Path, limit: int | None = None) -> list[Example]:
    """Pull the two named fields out of every record, refusing records without them."""
    if not records:
        raise DataError(f"{source}: no records")
    chosen = records[:limit] if limit else records
    for number, record in enumerate(chosen, 1):
        if not isinstance(record, dict) or input_field not in record or target_field not in record:
            fields = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{source} record {number}: needs fields {input_field!r} and {target_field!r}, has {fields}")
    return [Example(str(r[input_field]), str(r[target_field])) for r in chosen]


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over the bytes of the data files (or every file of a saved dataset), in order."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def split(items: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    held_out = max(1, round(len(shuffled) * eval_fraction))
    if held_out >= len(shuffled):
        raise DataError(f"{len(shuffled)} examples are too few to hold out {eval_fraction:.0%} for evaluation")
    return shuffled[held_out:], shuffled[:held_out]
