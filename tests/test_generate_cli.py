"""`promptmux generate`: a JSONL of mixed tasks gives, per line, what PEFT gives for it alone."""

import json
from pathlib import Path

import pytest
import torch
from peft_reference import peft_generate, peft_logprobs

from promptmux.core.fields import GenerationParams
from promptmux.models.loading import load_tokenizer
from promptmux.registry import Registry, TaskSpec

BASE = "tiny-random-llama"
TASKS = [
    TaskSpec(name="act-as", template="Act as: {input}\nPrompt:", base_model=BASE,
             generation=GenerationParams(max_new_tokens=8, repetition_penalty=1.5)),
    TaskSpec(name="summarize", template="Summary of {input}:", base_model=BASE,
             generation=GenerationParams(max_new_tokens=6)),
    TaskSpec(name="grooming", kind="classification", template="Comment: {input}\nSatisfaction:\n",
             labels={"0": "0", "1": "1"}, base_model=BASE),
]
REQUESTS = [
    {"task": "act-as", "input": "a logistician"},
    {"task": "grooming", "input": "They were gentle with my dog"},
    {"task": "summarize", "input": "a long day", "params": {"max_new_tokens": 4}},
    {"task": "act-as", "input": "a poet", "version": 1},
    {"task": "grooming", "input": "Rude staff", "alias": "staging"},
    {"task": "summarize", "input": "the meeting", "params": {"repetition_penalty": 1.3}},
    {"task": "act-as", "input": "a chef"},
]


@pytest.fixture
def served(registry: Registry, llama_fp) -> Registry:
    generator = torch.Generator().manual_seed(5)
    for spec, lengths in zip(TASKS, ([4, 9], [6], [5, 8])):
        registry.tasks.create(spec, llama_fp)
        for n in lengths:
            registry.versions.register(spec.name, torch.randn(n, 128, generator=generator), llama_fp)
    registry.aliases.set("act-as", "production", 2)
    registry.aliases.set("grooming", "staging", 1)
    return registry


def _run(cli, served: Registry, tmp_path: Path, lines: list[str]):
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(lines) + "\n")
    result = cli("generate", "--input", str(requests), "--output", str(tmp_path / "results.jsonl"),
                 "--registry", served.uri, "--base-model", BASE, "--dtype", "float32", "--batch-size", "4")
    return result, tmp_path / "results.jsonl"


def test_generate_matches_peft_per_line(cli, served: Registry, tmp_path: Path) -> None:
    result, output = _run(cli, served, tmp_path, [json.dumps(r) for r in REQUESTS])
    assert result.code == 0, result.err
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert [line["task"] for line in lines] == [r["task"] for r in REQUESTS]
    assert [line["version"] for line in lines] == [2, 2, 1, 1, 1, 1, 2]
    tokenizer = load_tokenizer(BASE)
    specs = {spec.name: spec for spec in TASKS}
    for request, line in zip(REQUESTS, lines):
        spec = specs[request["task"]]
        ids = tokenizer(spec.render(request["input"])).input_ids[:-1]  # ByT5 appends EOS
        version_dir = served.versions.uri(spec.name, line["version"])
        if spec.kind.value == "classification":
            last = peft_logprobs(BASE, version_dir, ids)[-1]
            scores = torch.tensor([float(last[tokenizer(v, add_special_tokens=False).input_ids[0]]) for v in spec.labels.values()])
            expected = dict(zip(spec.labels, torch.softmax(scores, 0).tolist()))
            assert line["result"]["probabilities"] == pytest.approx(expected, abs=1e-4)
            continue
        params = spec.generation.model_copy(update=request.get("params", {}))
        expected = peft_generate(BASE, version_dir, ids, params.max_new_tokens, params.repetition_penalty)
        assert line["result"]["token_ids"] == expected
        assert line["result"]["text"] == tokenizer.decode(expected, skip_special_tokens=True)
        assert line["result"]["usage"]["completion_tokens"] == len(expected)


def test_bad_lines_are_refused_before_any_work(cli, served: Registry, tmp_path: Path) -> None:
    result, output = _run(cli, served, tmp_path, [json.dumps(REQUESTS[0]), "{not json", json.dumps(REQUESTS[1])])
    assert result.code == 1 and "line 2" in result.err and not output.exists()
    result, _ = _run(cli, served, tmp_path, [json.dumps({"task": "act-as", "input": "x", "params": {"top_p": 5}})])
    assert result.code == 1 and "params.top_p" in result.err


def test_failing_requests_are_reported_per_line(cli, served: Registry, tmp_path: Path) -> None:
    lines = [REQUESTS[0], {"task": "nope", "input": "x"}, {"task": "act-as", "input": "y", "version": 9}, REQUESTS[1]]
    result, output = _run(cli, served, tmp_path, [json.dumps(r) for r in lines])
    assert result.code == 1 and "2 failed" in result.out
    results = [json.loads(line) for line in output.read_text().splitlines()]
    assert "result" in results[0] and "result" in results[3]
    assert results[1]["error"] == "unknown task 'nope'"
    assert results[2]["error"] == "task 'act-as' has no version 9"
