"""The model's position limit holds everywhere, and a request past it hurts nobody else.

On a GPT-2-shaped model (1,024 positions, the engine's default `max_input_tokens` 2,048) a
request within the engine's limits can still ask for more positions than the model has.
It is refused at the edge with a 400 naming the three numbers (virtual tokens, input, new
tokens); the engine checks again on admission, so a row that got past the edge fails
alone; and were both checks skipped, the forward that runs off the position table fails
only that row, because the scheduler retries a failed batch row by row.
"""

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import torch
from helpers import serve_locally

from promptmux.core.errors import PositionLimitError
from promptmux.core.fields import GenerationParams
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate, run
from promptmux.serving.engine.runner import Engine
from promptmux.serving.runtime.settings import ServeSettings

GPT2 = "tiny-random-gpt2"  # 1,024 positions
WORDS = ["a poet", "a chef", "the meeting", "a long day", "a judge", "x", "a logistician", "the sea"]
LONG = "word " * 100  # 500 bytes: 500 tokens of the byte-level tokenizer


@pytest.fixture(scope="module")
def gpt2_registry(tmp_path_factory) -> Registry:
    registry = Registry(str(tmp_path_factory.mktemp("positions") / "registry"))
    fp = fingerprint(load_model(GPT2, dtype="float32"))
    generator = torch.Generator().manual_seed(2)
    registry.tasks.create(TaskSpec(name="act-as", template="Act as {input}:", base_model=GPT2,
                                  generation=GenerationParams(max_new_tokens=12)), fp)
    registry.versions.register("act-as", torch.randn(4, fp.hidden_size, generator=generator), fp)
    registry.tasks.create(TaskSpec(name="grooming", kind="classification", template="{input}\nGood:",
                                  labels={"0": "0", "1": "1"}, base_model=GPT2), fp)
    registry.versions.register("grooming", torch.randn(6, fp.hidden_size, generator=generator), fp)
    return registry


@pytest.fixture(scope="module")
def engine(gpt2_registry: Registry) -> Engine:
    return Engine(EngineConfig(base_model=GPT2, dtype="float32", max_batch_size=16), gpt2_registry.versions)


def rows(engine: Engine, texts: list[str], new: int = 12) -> list[GenerationRow]:
    prompt = engine.prompt(engine.loader.latest("act-as"))
    return [GenerationRow(prompt, engine.inputs.encode(f"Act as {text}:"), GenerationParams(max_new_tokens=new)) for text in texts]


def test_eight_generations_beside_an_overflow_finish_clean_and_the_overflow_gets_400(gpt2_registry, engine) -> None:
    clean = [output.text for output in generate(engine, rows(engine, WORDS))]
    settings = ServeSettings(registry=gpt2_registry.uri, engine=EngineConfig(base_model=GPT2, dtype="float32"))
    with serve_locally(settings) as (url, _):
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                normal = [client.post("/v1/generate", json={"task": "act-as", "input": word}) for word in WORDS]
                overflow = client.post("/v1/generate", json={"task": "act-as", "input": LONG,
                                                             "params": {"max_new_tokens": 1000}})
                return await asyncio.gather(*normal[:4], overflow, *normal[4:])

        responses = asyncio.run(burst())
        refused = responses.pop(4)
        assert refused.status_code == 400
        assert refused.json()["error"]["message"] == ("virtual tokens (4) + input tokens (508) + max_new_tokens (1000) "
                                                      "= 1512 exceed the model's 1024 positions")
        assert [r.status_code for r in responses] == [200] * 8
        assert [r.json()["outputs"][0]["text"] for r in responses] == clean
        completion = httpx.post(f"{url}/v1/completions", json={"model": "act-as", "prompt": LONG * 2, "max_tokens": 30})
        assert completion.status_code == 400 and "+ max_tokens (30) = 1042 exceed the model's 1024 positions" in \
            completion.json()["error"]["message"]
        stream = httpx.post(f"{url}/v1/generate", json={"task": "act-as", "input": LONG, "stream": True,
                                                          "params": {"max_new_tokens": 600}})
        assert stream.status_code == 400 and "exceed the model's 1024 positions" in stream.json()["error"]["message"]
        classify = httpx.post(f"{url}/v1/classify", json={"task": "grooming", "inputs": ["kind", LONG * 3]})
        assert classify.status_code == 400
        assert "+ verbalizer tokens (1) = 1513 exceed the model's 1024 positions" in classify.json()["error"]["message"]


def test_past_the_edge_the_engine_fails_only_the_overflowing_row(engine: Engine) -> None:
    clean = [output.token_ids for output in generate(engine, rows(engine, WORDS, new=16))]
    overflow = rows(engine, [LONG])[0]
    overflow.params = GenerationParams(max_new_tokens=1000)
    batch = rows(engine, WORDS[:3], new=16) + [overflow] + rows(engine, WORDS[3:], new=16)
    results = run(engine, batch)  # no edge: the rows go straight to the scheduler
    failed = results.pop(3)
    assert isinstance(failed, PositionLimitError) and "exceed the model's 1024 positions" in str(failed)
    assert [r.token_ids for r in results] == clean


def test_without_any_check_the_row_that_runs_off_the_table_fails_alone(gpt2_registry: Registry) -> None:
    """Both checks skipped: the overflowing row fails in the forward (as it did before the
    checks existed), the scheduler reruns the batch row by row, and only that row fails."""
    unchecked = Engine(EngineConfig(base_model=GPT2, dtype="float32", max_batch_size=16), gpt2_registry.versions)
    clean = [output.token_ids for output in generate(unchecked, rows(unchecked, WORDS, new=40))]
    unchecked.max_positions = None  # the model still has 1,024 positions; only the engine no longer knows
    overflow = rows(unchecked, [LONG * 2])[0]  # 1,016 positions at prefill, past the table after 9 tokens
    overflow.params = GenerationParams(max_new_tokens=40)
    batch = rows(unchecked, WORDS[:5], new=40) + [overflow] + rows(unchecked, WORDS[5:], new=40)
    results = run(unchecked, batch)
    failed = results.pop(5)
    assert isinstance(failed, IndexError) and "index out of range" in str(failed)
    assert [r.token_ids for r in results] == clean


def test_promptmux_generate_answers_every_line_and_fails_only_the_overflow(cli, gpt2_registry, tmp_path: Path) -> None:
    lines = [{"task": "act-as", "input": word} for word in WORDS[:3]]
    lines.insert(1, {"task": "act-as", "input": LONG, "params": {"max_new_tokens": 1000}})
    lines.append({"task": "grooming", "input": LONG * 3})
    lines.append({"task": "grooming", "input": "kind staff"})
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = tmp_path / "results.jsonl"
    result = cli("generate", "--input", str(requests), "--output", str(output), "--registry", gpt2_registry.uri,
                 "--base-model", GPT2, "--dtype", "float32")
    assert result.code == 1 and "wrote 6 results" in result.out and "(2 failed)" in result.out
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [("error" in line, "result" in line) for line in written] == [
        (False, True), (True, False), (False, True), (False, True), (True, False), (False, True)]
    assert "exceed the model's 1024 positions" in written[1]["error"] and "verbalizer tokens" in written[4]["error"]


def test_a_max_model_len_past_the_position_table_is_clamped_and_no_request_gets_a_5xx(gpt2_registry, caplog) -> None:
    """`--max-model-len 4096` on a 1,024-position GPT-2: the engine says so at start-up and
    serves 1,024; requests past it get a 400 on every route, streamed or not."""
    settings = ServeSettings(registry=gpt2_registry.uri, engine=EngineConfig(base_model=GPT2, dtype="float32",
                                                                             max_model_len=4096, max_new_tokens=4000))
    with caplog.at_level("WARNING"), serve_locally(settings) as (url, _):
        assert "engine.max_model_len 4096 is past the model's learned position table of 1024" in caplog.text
        calls = [("/v1/generate", {"task": "act-as", "input": LONG, "params": {"max_new_tokens": 2000}}),
                 ("/v1/generate", {"task": "act-as", "input": LONG, "stream": True, "params": {"max_new_tokens": 2000}}),
                 ("/v1/completions", {"model": "act-as", "prompt": LONG, "max_tokens": 2000}),
                 ("/v1/completions", {"model": "act-as", "prompt": LONG, "max_tokens": 2000, "stream": True}),
                 ("/v1/classify", {"task": "grooming", "inputs": [LONG * 3]})]
        for path, body in calls:
            response = httpx.post(f"{url}{path}", json=body, timeout=60)
            assert response.status_code == 400, (path, response.text)
            assert "exceed the model's 1024 positions" in response.json()["error"]["message"], response.text
        fits = httpx.post(f"{url}/v1/generate", json={"task": "act-as", "input": "a poet"}, timeout=60)
        assert fits.status_code == 200
