"""A newcomer's mistakes get one clear line and exit 1, checked before anything slow runs;
the base model defaults to the one the registry's tasks were trained on."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import random_prompt
from peft import PromptTuningConfig, TaskType, get_peft_model

from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskKind, TaskSpec


@pytest.fixture
def filled(registry: Registry, llama_fp) -> Registry:
    for name in ("act-as", "retired"):
        registry.tasks.create(TaskSpec(name=name, base_model="tiny-random-llama"), llama_fp)
        registry.versions.register(name, random_prompt(), llama_fp)
    registry.archive("retired", 1)  # its only version
    return registry


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.fixture
def adapter(tmp_path: Path, llama) -> Path:
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    get_peft_model(load_model("tiny-random-llama", dtype="float32"), config).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def mistakes(tmp: Path, reg: str, adapter: Path, port: int) -> list[tuple[list[str], str]]:
    (tmp / "a-file").write_text("not a registry")
    (tmp / "requests.jsonl").write_text('{"task": "act-as", "input": "a poet"}\n')
    data = tmp / "data.jsonl"
    data.write_text('{"input": "a", "output": "b"}\n' * 8)
    return [
        (["train", "--task", "t", "--data", str(data), "--base-model", "tiny-random-lama", "--registry", reg],
         "unknown base model 'tiny-random-lama'"),
        (["train", "--task", "t", "--data", str(data), "--base-model", "./models/nope", "--registry", reg],
         "no checkpoint at ./models/nope"),
        (["serve", "--base-model", "tiny-random-lama", "--registry", reg], "Did you mean tiny-random-llama?"),
        (["generate", "--input", str(tmp / "requests.jsonl"), "--output", str(tmp / "out.jsonl"),
          "--base-model", "./models/nope", "--registry", reg], "no checkpoint at ./models/nope"),
        (["registry", "import", str(tmp / "no-adapter"), "--task", "t", "--base-model", "tiny-random-lama",
          "--registry", reg], "not a PEFT adapter folder"),  # the folder is checked before the model
        (["registry", "import", str(adapter), "--task", "t", "--base-model", "tiny-random-lama", "--registry", reg],
         "unknown base model"),
        (["registry", "import", str(adapter), "--task", "act-as", "--kind", "classification", "--labels", "0,1",
          "--registry", reg], "task 'act-as' exists with another kind, labels"),
        (["registry", "list", "--registry", str(tmp / "a-file")], "is a file; a registry is a folder"),
        (["registry", "list", "--registry", str(tmp / "regsitry")], "no registry at"),
        (["serve", "--registry", str(tmp / "regsitry")], "no registry at"),
        (["registry", "verify", "nope", "--registry", reg], "unknown task 'nope'"),
        (["registry", "export", "act-as", "latest", reg, "--registry", reg], "is inside the registry"),
        (["registry", "export", "act-as", "latest", str(Path(reg) / "tasks" / "x"), "--registry", reg],
         "is inside the registry"),
        (["serve", "--port", str(port), "--registry", reg], f"port {port} on 127.0.0.1 is in use"),
        (["registry", "show", "act_as", "--registry", reg], "unknown task 'act_as'; did you mean act-as?"),
        (["registry", "export", "retired", "latest", str(tmp / "out"), "--registry", reg],
         "task 'retired' has no active versions: every one is archived (bring one back with promptmux registry "
         "unarchive retired VERSION)"),
        (["registry", "delete", "act-as", "--registry", reg],
         "task 'act-as' is served through alias production→1; move them, or delete anyway with --force"),
    ]


def test_every_mistake_gets_one_line_and_exit_1(cli, filled: Registry, adapter: Path, tmp_path: Path,
                                               busy_port: int) -> None:
    filled.aliases.set("act-as", "production", 1)  # deleting act-as is refused while it routes traffic
    before = sorted(p.relative_to(filled.uri) for p in Path(filled.uri).rglob("*"))
    for args, message in mistakes(tmp_path, filled.uri, adapter, busy_port):
        result = cli(*args)
        lines = [line for line in result.err.splitlines() if line.strip()]
        assert result.code == 1, (args, result.out, result.err)
        assert len(lines) == 1 and message in lines[0], (args, result.err)
    assert not (tmp_path / "regsitry").exists()  # a mistyped path is not created
    assert sorted(p.relative_to(filled.uri) for p in Path(filled.uri).rglob("*")) == before  # nothing written


def test_serve_and_generate_use_the_base_model_the_tasks_were_trained_on(cli, tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    gpt2 = fingerprint(load_model("tiny-random-gpt2", dtype="float32"))
    registry.tasks.create(TaskSpec(name="g", base_model="tiny-random-gpt2", template="Q: {input}\nA:"), gpt2)
    registry.versions.register("g", random_prompt(cols=gpt2.hidden_size), gpt2)
    (tmp_path / "requests.jsonl").write_text('{"task": "g", "input": "hi", "params": {"max_new_tokens": 2}}\n')
    result = cli("generate", "--input", str(tmp_path / "requests.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                 "--registry", registry.uri)
    assert result.code == 0, result.err
    assert "base model tiny-random-gpt2: the one every task" in result.err
    assert "result" in json.loads((tmp_path / "out.jsonl").read_text())

    llama = fingerprint(load_model("tiny-random-llama", dtype="float32"))
    registry.tasks.create(TaskSpec(name="l", base_model="tiny-random-llama"), llama)
    refused = cli("serve", "--registry", registry.uri)
    assert refused.code == 1
    assert "different base models (tiny-random-gpt2: g; tiny-random-llama: l)" in refused.err


def test_registry_import_creates_a_classification_task_as_told(cli, tmp_path: Path, adapter: Path) -> None:
    registry = tmp_path / "registry"
    result = cli("registry", "import", str(adapter), "--task", "reviews", "--kind", "classification",
                 "--labels", "neg= no,pos= yes", "--template", "Review: {input}\nHappy?", "--registry", str(registry))
    assert result.code == 0, result.err
    assert "registered reviews version 1 (classification task, prompt tuning)" in result.out
    spec = Registry(str(registry)).tasks.get("reviews").spec
    assert (spec.kind, spec.labels, spec.template) == (TaskKind.classification, {"neg": " no", "pos": " yes"},
                                                       "Review: {input}\nHappy?")
    (tmp_path / "requests.jsonl").write_text('{"task": "reviews", "input": "great"}\n')
    classified = cli("generate", "--input", str(tmp_path / "requests.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                     "--registry", str(registry))
    assert classified.code == 0, classified.err
    assert json.loads((tmp_path / "out.jsonl").read_text())["result"]["label"] in ("neg", "pos")


PROBE = """
import sys
from promptmux.cli import main
sys.argv = ["promptmux", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("loaded:", sorted(m for m in ("torch", "transformers", "peft", "ray", "fastapi") if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("args", [["--help"], ["registry", "list"], ["serve", "--help"], ["train", "--help"],
                                  ["registry", "import", "--help"]])
def test_help_and_registry_list_are_fast_and_help_fits_80_columns(tmp_path: Path, args: list[str]) -> None:
    if "list" in args:
        args = [*args, "--registry", str(tmp_path)]
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", PROBE, *args], env={**os.environ, "COLUMNS": "80"},
                            capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert "loaded: []" in result.stderr, result.stderr  # no torch, transformers, peft, Ray or FastAPI
    assert elapsed < 5, elapsed  # a generous bound: about 0.5 s on the 2-core development VM
    if "--help" in args:
        assert max(len(line) for line in result.stdout.splitlines()) <= 80 and "<bool>" not in result.stdout
        if args[0] in ("serve", "train"):
            text = " ".join(result.stdout.split())
            assert "[default:" in text and "[env var: PROMPTMUX_REGISTRY]" in text


def test_a_hub_id_that_cannot_be_fetched_stops_serve_before_any_cluster_starts(tmp_path: Path) -> None:
    Registry(str(tmp_path / "registry"))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "promptmux"), "serve", "--base-model", "nobody/no-such-model",
         "--registry", str(tmp_path / "registry")],
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120,  # offline: no retries
    )
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "unknown base model 'nobody/no-such-model'" in lines[0] and "Hub id needs network access" in lines[0]
    assert "Ray" not in result.stdout + result.stderr


def test_without_the_hub_an_unknown_id_fails_in_one_line_within_seconds(cli, tmp_path: Path) -> None:
    """No `HF_HUB_OFFLINE`, no network to the Hub (as on this machine, or a firewalled node):
    one short probe of the Hub, then the one-line error, never a minute of retries. Where the
    Hub answers, the id is left to `from_pretrained` and this test has nothing to check."""
    from promptmux.models.loading import _hub_reachable

    if _hub_reachable():
        pytest.skip("the Hugging Face Hub answers from here")
    Registry(str(tmp_path / "registry"))
    started = time.perf_counter()
    result = cli("serve", "--base-model", "nobody/no-such-model", "--registry", str(tmp_path / "registry"))
    elapsed = time.perf_counter() - started
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert result.code == 1 and len(lines) == 1 and "unknown base model 'nobody/no-such-model'" in lines[0], result.err
    assert elapsed < 5, elapsed


def test_a_long_step_shows_in_a_log_every_few_seconds() -> None:
    """Off a terminal (output to a file, CI) rich's spinner prints nothing; the step says it
    started and then that it goes on, until it ends."""
    import io

    from rich.console import Console

    from promptmux.tasks.progress import status

    log = io.StringIO()
    with status(Console(file=log, force_terminal=False, width=120), "loading a model", every_s=0.05):
        time.sleep(0.32)
    lines = log.getvalue().splitlines()
    assert lines[0] == "loading a model ..." and len(lines) >= 4, lines
    assert all(re.fullmatch(r"loading a model \.\.\. \d+ s", line) for line in lines[1:]), lines
    time.sleep(0.1)
    assert log.getvalue().splitlines() == lines  # nothing after the step ended
