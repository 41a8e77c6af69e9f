"""The day after the first hour: a version moves between registries with its task, one base
model keeps one identity, two versions' evaluations use the same rows, a busy port fails fast."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
from helpers import random_prompt

from promptmux.models.embedded import resolve_model_path
from promptmux.registry import Registry, TaskSpec

EXAMPLES = Path(__file__).resolve().parent.parent / "tasks" / "examples"
GROOMING = ["--task", "grooming", "--kind", "classification", "--labels", "0= no,1= yes",
            "--template", r"Review: {input}\nSatisfied?", "--data", str(EXAMPLES / "data" / "reviews.jsonl"),
            "--input-field", "review", "--target-field", "satisfied"]
ACT_AS = ["--spec", str(EXAMPLES / "act-as.yaml"), "--data", str(EXAMPLES / "data" / "roles.jsonl"),
          "--max-output-tokens", "8"]


def train(cli, registry: Path, args: list[str], *extra: str) -> dict:
    result = cli("train", *args, "--base-model", "tiny-random-llama", "--epochs", "1", "--registry", str(registry),
                 "--json", *extra)
    assert result.code == 0, result.err
    return json.loads(result.out)


def generate(cli, registry: Path, requests: list[dict], out: Path) -> list[dict]:
    out.with_suffix(".in").write_text("".join(json.dumps(r) + "\n" for r in requests))
    result = cli("generate", "--input", str(out.with_suffix(".in")), "--output", str(out), "--registry", str(registry))
    assert result.code == 0, result.err
    return [json.loads(line)["result"] for line in out.read_text().splitlines()]


def test_an_exported_version_imports_into_another_registry_with_its_task(cli, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    train(cli, a, GROOMING)
    train(cli, a, ACT_AS)
    for task in ("grooming", "act-as"):
        assert cli("registry", "export", task, "latest", str(tmp_path / task), "--registry", str(a)).code == 0
        imported = cli("registry", "import", str(tmp_path / task), "--task", task, "--registry", str(b))
        assert imported.code == 0, imported.err
    source, copy = Registry(str(a)), Registry(str(b))
    for task in ("grooming", "act-as"):
        assert copy.tasks.get(task).spec == source.tasks.get(task).spec
        original, moved = source.versions.latest(task), copy.versions.latest(task)
        assert moved.metrics == original.metrics and moved.sha256 == original.sha256
        assert (moved.init_method, moved.init_text) == (original.init_method, original.init_text)
        assert moved.training["lineage"] == {"registry": source.uri, "task": task, "version": 1}
    assert "\n" in copy.tasks.get("grooming").spec.template  # the flag's \n, read as a newline
    requests = [{"task": "grooming", "input": "Lovely groomer"}, {"task": "grooming", "input": "Rude staff"},
                {"task": "act-as", "input": "a poet"}, {"task": "act-as", "input": "a chess coach"}]
    assert generate(cli, b, requests, tmp_path / "b.jsonl") == generate(cli, a, requests, tmp_path / "a.jsonl")

    overridden = cli("registry", "import", str(tmp_path / "act-as"), "--task", "act-as-2", "--template", "Q: {input}",
                     "--registry", str(b))
    assert overridden.code == 0, overridden.err
    spec = copy.tasks.get("act-as-2").spec
    assert spec.template == "Q: {input}" and spec.generation == source.tasks.get("act-as").spec.generation
    conflict = cli("registry", "import", str(tmp_path / "grooming"), "--task", "act-as", "--registry", str(b))
    assert conflict.code == 1 and "exists with another kind, template, labels" in conflict.err


def test_versions_trained_with_different_seeds_are_evaluated_on_the_same_rows(cli, tmp_path: Path) -> None:
    runs = [train(cli, tmp_path / "registry", GROOMING, "--seed", str(seed), "--output-dir", str(tmp_path / f"run{seed}"))
            for seed in (1, 7)]
    row_ids = [json.loads(Path(run["metrics_json"]).read_text())["eval_row_ids"] for run in runs]
    assert row_ids[0] == row_ids[1] and len(row_ids[0]) == 6  # 20% of 32 reviews
    assert runs[0]["metrics"]["eval_rows"] == runs[1]["metrics"]["eval_rows"]
    shown = cli("registry", "show", "grooming", "--registry", str(tmp_path / "registry"))
    assert "different held-out rows" not in shown.err

    other = tmp_path / "other.jsonl"
    other.write_text("".join(line + "\n" for line in (EXAMPLES / "data" / "reviews.jsonl").read_text().splitlines()[:20]))
    train(cli, tmp_path / "registry", [*GROOMING[:-6], "--data", str(other), *GROOMING[-4:]])
    warned = cli("registry", "show", "grooming", "--registry", str(tmp_path / "registry"))
    assert "evaluated on different held-out rows (A: 1, 2; B: 3)" in " ".join(warned.err.split())


def test_a_task_recorded_under_the_cache_folder_is_on_the_same_base_model(cli, tmp_path: Path, llama_fp) -> None:
    registry = Registry(str(tmp_path / "registry"))
    for name, base in (("by-id", "tiny-random-llama"), ("by-path", resolve_model_path("tiny-random-llama"))):
        registry.tasks.create(TaskSpec(name=name, base_model=base), llama_fp)
        registry.versions.register(name, random_prompt(), llama_fp)
    requests = [{"task": task, "input": "hi", "params": {"max_new_tokens": 2}} for task in ("by-id", "by-path")]
    requests_file = tmp_path / "requests.jsonl"
    requests_file.write_text("".join(json.dumps(r) + "\n" for r in requests))
    result = cli("generate", "--input", str(requests_file), "--output", str(tmp_path / "out.jsonl"),
                 "--registry", registry.uri)  # no --base-model
    assert result.code == 0, result.err
    assert "base model tiny-random-llama: the one every task" in result.err
    assert all("text" in json.loads(line)["result"] for line in (tmp_path / "out.jsonl").read_text().splitlines())


def test_an_adapter_naming_the_cache_folder_is_recorded_under_the_embedded_id(cli, tmp_path: Path) -> None:
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from promptmux.models.loading import load_model

    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    get_peft_model(load_model("tiny-random-llama", dtype="float32"), config).save_pretrained(tmp_path / "adapter")
    named = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert named == resolve_model_path("tiny-random-llama")  # PEFT names the folder it was loaded from
    assert cli("registry", "import", str(tmp_path / "adapter"), "--task", "t", "--registry", str(tmp_path / "r")).code == 0
    assert Registry(str(tmp_path / "r")).tasks.get("t").spec.base_model == "tiny-random-llama"


def ray_processes() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name", "cmdline"])
            if any(part in " ".join(p.info["cmdline"] or []) for part in ("raylet", "gcs_server"))}


def test_serve_on_a_busy_port_fails_in_one_line_within_five_seconds(tmp_path: Path) -> None:
    Registry(str(tmp_path / "registry"))
    before = ray_processes()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = subprocess.run([str(Path(sys.executable).parent / "promptmux"), "serve", "--port", str(port),
                                 "--registry", str(tmp_path / "registry")], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "RAY_AUTH_MODE": "disabled"})
        elapsed = time.monotonic() - started
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"port {port} on 127.0.0.1 is in use" in lines[0] and elapsed < 5, (lines, elapsed)
    assert ray_processes() <= before
