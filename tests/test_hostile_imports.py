"""Crafted exports and adapters, as a hostile tenant or a careless script would hand them to
`promptmux registry import`: every one is refused in one line naming what is wrong, in well
under a second, before anything of it is written; and a task at the size limits costs a
request bounded work."""

import functools
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import BASE, build_registry
from safetensors.torch import save_file

from promptmux.core.errors import PromptmuxError
from promptmux.core.limits import SpecLimits
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.models.loading import fingerprint, load_model, max_positions
from promptmux.registry import Registry, TaskKind, TaskSpec
from promptmux.serving.bench.common import random_prompt
from promptmux.serving.engine.batching import ClassificationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.runner import Engine

Craft = Callable[[Path], None]


def edit_json(name: str, change: Callable[[dict], object]) -> Craft:
    def craft(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return craft


def spec_field(field: str, value: object) -> Craft:
    return edit_json("promptmux-task.json", lambda d: d["spec"].update({field: value}))


def classification(labels: dict[str, str]) -> Craft:
    return edit_json("promptmux-task.json", lambda d: d["spec"].update(kind="classification", labels=labels))


def tensors(make: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]], config: dict | None = None) -> Craft:
    def craft(folder: Path) -> None:
        from safetensors.torch import load_file
        save_file(make(load_file(folder / "adapter_model.safetensors")), folder / "adapter_model.safetensors")
        if config is not None:
            edit_json("adapter_config.json", lambda d: d.update(config))(folder)
    return craft


def multitask(tasks: int, rank: int, declared: dict) -> Craft:
    def make(found: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        n, hidden = found["prompt_embeddings"].shape
        return {"prompt_embeddings": found["prompt_embeddings"], "prefix_task_cols": torch.randn(tasks, n, rank),
                "prefix_task_rows": torch.randn(tasks, rank, hidden)}
    return tensors(make, {"peft_type": "MULTITASK_PROMPT_TUNING", **declared})


@functools.cache
def base() -> tuple[BaseModelFingerprint, int | None]:
    """The tiny model's fingerprint and positions."""
    model = load_model(BASE, dtype="float32")
    return fingerprint(model), max_positions(model.config)


def long_prefix(folder: Path) -> None:
    """A prefix of 4,000 virtual tokens: more than the model's 2,048 positions hold."""
    fp = base()[0]
    prompt = random_prompt("prefix_tuning", fp, 4000, torch.Generator().manual_seed(0))
    save_file(prompt.tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({**prompt.peft_config, "base_model_name_or_path": BASE}))


CRAFTED: dict[str, tuple[Craft, str]] = {  # what is done to a valid export, and what the refusal names
    "200,000 labels (a 5 MB task file)": (classification({f"l{i}": f"v{i}" for i in range(200_000)}),
                                          "PROMPTMUX_LIMIT_SPEC_FILE_BYTES"),
    "a 20 MB template": (spec_field("template", "{input}" + "x" * 20_000_000), "PROMPTMUX_LIMIT_SPEC_FILE_BYTES"),
    "300 labels": (classification({f"l{i}": f"v{i}" for i in range(300)}), "PROMPTMUX_LIMIT_LABELS"),
    "a 40,000-character template": (spec_field("template", "{input}" + "x" * 40_000), "PROMPTMUX_LIMIT_TEMPLATE_CHARS"),
    "a 500-character verbalizer": (classification({"yes": "y" * 500, "no": "n"}), "PROMPTMUX_LIMIT_VERBALIZER_CHARS"),
    "a 100 kB adapter_config.json": (edit_json("adapter_config.json", lambda d: d.update(padding="x" * 100_000)),
                                     "PROMPTMUX_LIMIT_ADAPTER_CONFIG_BYTES"),
    "num_tasks 1 with tensors of 3 tasks": (multitask(3, 2, {"num_tasks": 1, "num_ranks": 2}), "num_tasks 1"),
    "num_ranks 1 with tensors of rank 4": (multitask(2, 4, {"num_tasks": 2}), "num_ranks 1"),
    "no num_virtual_tokens": (edit_json("adapter_config.json", lambda d: d.pop("num_virtual_tokens")),
                              "needs num_virtual_tokens"),
    "4,000 virtual tokens on a 2,048-position model": (long_prefix, "leave no room for an input"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Registry, Path]:
    """A registry of the usual tasks, and a valid export of one of its versions."""
    root = tmp_path_factory.mktemp("hostile")
    registry = build_registry(root / "registry")
    registry.transfer.export("act-as", 1, str(root / "export"))
    return registry, root / "export"


def files_of(registry: Registry) -> dict[str, bytes]:
    return {str(p.relative_to(registry.uri)): p.read_bytes() for p in sorted(Path(registry.uri).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_a_crafted_import_is_refused_in_one_line_under_a_second_and_changes_nothing(case: str, exported, tmp_path) -> None:
    registry, valid = exported
    craft, named = CRAFTED[case]
    folder = Path(shutil.copytree(valid, tmp_path / "crafted"))
    craft(folder)
    fp, positions = base()
    before = files_of(registry)
    started = time.perf_counter()
    with pytest.raises(PromptmuxError) as refused:
        registry.transfer.import_peft(str(folder), "crafted", fp, BASE, positions=positions)
    elapsed = time.perf_counter() - started
    message = str(refused.value)
    assert named in message and "\n" not in message and len(message) < 400, message
    assert elapsed < 1.0, f"{case}: refused after {elapsed:.2f} s"
    assert files_of(registry) == before and not registry.tasks.exists("crafted")


def test_the_cli_refuses_a_crafted_export_and_a_hub_model_it_would_download_in_one_line(cli, exported, tmp_path) -> None:
    registry, valid = exported
    bomb = Path(shutil.copytree(valid, tmp_path / "bomb"))
    classification({f"l{i}": f"v{i}" for i in range(200_000)})(bomb)
    result = cli("registry", "import", str(bomb), "--task", "bomb", "--registry", registry.uri)
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert "PROMPTMUX_LIMIT_SPEC_FILE_BYTES" in result.err and "Traceback" not in result.err

    hub = Path(shutil.copytree(valid, tmp_path / "hub"))
    (hub / "promptmux-task.json").unlink()
    edit_json("adapter_config.json", lambda d: d.update(base_model_name_or_path="some-org/not-on-this-machine"))(hub)
    started = time.perf_counter()
    result = cli("registry", "import", str(hub), "--task", "from-hub", "--registry", registry.uri)
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1, result.err
    assert "not in the Hugging Face cache" in result.err and time.perf_counter() - started < 5  # no network retries
    assert not registry.tasks.exists("from-hub")


def test_a_classification_at_the_size_limits_costs_a_request_bounded_work(tmp_path: Path) -> None:
    """The largest task the limits allow: its labels and verbalizers are scored for one input
    by a bounded number of tokens through the model, which the limits fix."""
    bounds = SpecLimits()
    labels = {f"{i:0{bounds.label_chars}d}": f"{i}".rjust(bounds.verbalizer_chars, "v") for i in range(bounds.labels)}
    spec = TaskSpec(name="widest", kind=TaskKind.classification, labels=labels, base_model=BASE)
    registry = build_registry(tmp_path / "registry", tasks=[(spec, [4])])
    engine = Engine(EngineConfig(base_model=BASE, dtype="float32", max_batch_size=32), registry.versions)
    prompt = engine.prompt(registry.versions.get("widest", 1))
    row = ClassificationRow(prompt, engine.inputs.encode_request(spec, "an input"), engine.inputs.verbalizers(spec.labels))
    counted = []
    hook = engine.model.get_input_embeddings().register_forward_hook(lambda m, args, out: counted.append(args[0].numel()))
    try:
        started = time.perf_counter()
        engine.classify([row])
        elapsed = time.perf_counter() - started
    finally:
        hook.remove()
    longest = max(len(ids) for ids in row.verbalizers.values())
    bound = bounds.labels * (len(row.input_ids) + longest)  # each label: the input and its verbalizer, at most
    assert 0 < sum(counted) <= bound and longest <= bounds.verbalizer_chars
    print(f"\nwidest task: {bounds.labels} labels of {longest} tokens, {sum(counted)} tokens scored in {elapsed:.2f} s")


def test_a_negative_task_id_and_a_corrupt_task_file_are_one_line_naming_the_file_once(cli, exported, tmp_path) -> None:
    registry, valid = exported
    result = cli("registry", "import", str(valid), "--task", "t", "--task-id", "-1", "--registry", registry.uri)
    assert result.code == 1 and result.err.strip().splitlines() == ["error: --task-id -1: a multitask adapter's tasks "
                                                                    "are numbered from 0"], result.err
    broken = Path(shutil.copytree(valid, tmp_path / "broken"))
    edit_json("promptmux-task.json", lambda d: d.update(task=7))(broken)
    result = cli("registry", "import", str(broken), "--task", "t", "--registry", registry.uri)
    lines = result.err.strip().splitlines()
    assert result.code == 1 and len(lines) == 1 and lines[0].count("promptmux-task.json") == 1, result.err
    assert f"{broken}/promptmux-task.json is corrupt" in lines[0] and registry.uri not in lines[0] and "//" not in lines[0]
