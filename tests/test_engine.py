"""The engine against PEFT, row by row, on six architectures and both ways of computing virtual tokens."""

from pathlib import Path

import pytest
import torch
from helpers import PROMPT_LENGTHS, fill_registry
from peft_reference import peft_generate, peft_logprobs, peft_model

from promptmux.core.errors import IncompatiblePromptError, InvalidRequestError
from promptmux.core.fields import GenerationParams
from promptmux.registry import Registry
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow, Row
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine

ARCHITECTURES = ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-bloom", "tiny-random-granite", "tiny-random-qwen2",
                 "tiny-random-gpt-neox"]
INPUTS = ["hello world", "x", "the quick brown fox jumps", "prompt tuning"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch_registry(request, tmp_path_factory) -> tuple[str, Registry]:
    return request.param, fill_registry(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module", params=[True, False], ids=["pinned-kv", "embedding"])
def engine(request, arch_registry) -> Engine:
    base_model, registry = arch_registry
    engine = Engine(EngineConfig(base_model=base_model, dtype="float32", pinned_kv=request.param), registry.versions)
    assert engine.pinned_kv is request.param
    return engine


def mixed_rows(engine: Engine) -> list[tuple[str, list[int]]]:
    """(task, input ids) for a batch of every task x several inputs of different lengths."""
    return [(task, engine.inputs.encode(text)) for task in PROMPT_LENGTHS for text in INPUTS[:3]]


def test_mixed_batch_greedy_tokens_equal_peft_alone(engine: Engine) -> None:
    versions, base_model = engine.loader, engine.config.base_model
    rows = mixed_rows(engine)
    params = [GenerationParams(max_new_tokens=10, repetition_penalty=1.5 if i % 2 else 1.0) for i in range(len(rows))]
    outputs = generate(engine, [
        GenerationRow(engine.prompt(versions.latest(task)), ids, p) for (task, ids), p in zip(rows, params)
    ])
    for (task, ids), p, output in zip(rows, params, outputs):
        expected = peft_generate(base_model, versions.uri(task, 1), ids, 10, p.repetition_penalty)
        assert output.token_ids == expected, (task, ids)
        assert output.finish_reason == ("length" if len(expected) == 10 else "stop")
        assert output.usage.prompt_tokens == len(ids) and output.usage.virtual_tokens == PROMPT_LENGTHS[task]


def test_mixed_batch_last_logits_match_peft_alone(engine: Engine) -> None:
    versions, base_model = engine.loader, engine.config.base_model
    rows = mixed_rows(engine)
    logits = engine.logits([Row(engine.prompt(versions.latest(task)), ids) for task, ids in rows])
    for (task, ids), row_logits in zip(rows, logits):
        model = peft_model(base_model, versions.uri(task, 1))
        with torch.no_grad():
            expected = model(input_ids=torch.tensor([ids])).logits[0, -1]
        torch.testing.assert_close(row_logits[-1], expected, rtol=0, atol=1e-4)


def test_classification_scores_equal_peft(engine: Engine) -> None:
    versions, base_model = engine.loader, engine.config.base_model
    labels_by_task = {"alpha": {"0": "0", "1": "1"}, "beta": {"yes": "positive", "no": "negative", "meh": "so-so"}}
    rows = [(task, engine.inputs.encode(text)) for task in labels_by_task for text in INPUTS[:2]]
    outputs = engine.classify([
        ClassificationRow(engine.prompt(versions.latest(task)), ids, engine.inputs.verbalizers(labels_by_task[task]))
        for task, ids in rows
    ])
    for (task, ids), output in zip(rows, outputs):
        version_dir = versions.uri(task, 1)
        scores = []
        for verbalizer in labels_by_task[task].values():
            target = engine.tokenizer(verbalizer, add_special_tokens=False).input_ids
            logprobs = peft_logprobs(base_model, version_dir, ids + target)
            steps = logprobs[len(ids) - 1: len(ids) - 1 + len(target)]
            scores.append(float(steps[torch.arange(len(target)), torch.tensor(target)].sum()))
        expected = dict(zip(labels_by_task[task], torch.softmax(torch.tensor(scores), 0).tolist()))
        assert output.probabilities == pytest.approx(expected, abs=1e-4)
        assert output.label == max(expected, key=expected.get)


@pytest.fixture(scope="module")
def llama_engine(tmp_path_factory) -> Engine:
    registry = fill_registry(tmp_path_factory.mktemp("llama-engine"), "tiny-random-llama", extra_versions=4)
    return Engine(EngineConfig(dtype="float32", prompt_cache_mb=0.05), registry.versions)


def test_prompt_swaps_never_touch_base_weights(llama_engine: Engine) -> None:
    engine, versions = llama_engine, llama_engine.loader
    before = {name: (p.data_ptr(), p.detach().clone()) for name, p in engine.model.named_parameters()}
    versions = [m for task in PROMPT_LENGTHS for m in versions.all(task)]
    ids = engine.inputs.encode("swap")
    for i in range(300):
        batch = [versions[(i + k) % len(versions)] for k in range(3)]
        engine.logits([Row(engine.prompt(m), ids) for m in batch])
    stats = engine.prompts.stats()
    assert stats.evictions > 0 and stats.misses > len(versions) and stats.hits > 0
    assert stats.bytes <= engine.prompts.capacity_bytes or stats.entries == 1
    for name, p in engine.model.named_parameters():
        assert p.data_ptr() == before[name][0], name
        assert torch.equal(p, before[name][1]), name
        assert not p.requires_grad


def test_sampling_is_reproducible_per_request_whatever_the_batch(llama_engine: Engine) -> None:
    engine, versions = llama_engine, llama_engine.loader
    sampled = GenerationParams(max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, seed=7)
    target = GenerationRow(engine.prompt(versions.latest("beta")), engine.inputs.encode("sample me"), sampled)
    alone = generate(engine, [target])[0]
    neighbours = [
        GenerationRow(engine.prompt(versions.latest(task)), engine.inputs.encode(text), GenerationParams(max_new_tokens=5))
        for task, text in zip(PROMPT_LENGTHS, INPUTS)
    ]
    in_batch = generate(engine, [neighbours[0], target, *neighbours[1:]])[1]
    assert in_batch.token_ids == alone.token_ids
    other_seed = GenerationRow(target.prompt, target.input_ids, sampled.model_copy(update={"seed": 8}))
    greedy = GenerationRow(target.prompt, target.input_ids, GenerationParams(max_new_tokens=12))
    assert generate(engine, [other_seed])[0].token_ids != alone.token_ids
    assert generate(engine, [greedy])[0].token_ids != alone.token_ids


def test_stop_strings_and_eos_end_a_row(llama_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, versions = llama_engine, llama_engine.loader
    prompt, ids = engine.prompt(versions.latest("alpha")), engine.inputs.encode("stop here")
    free = generate(engine, [GenerationRow(prompt, ids, GenerationParams(max_new_tokens=12))])[0]
    assert free.text, "the random model produced no printable text to stop on"
    stop = free.text[-1]
    cut = free.text.find(stop)
    stopped = generate(engine, [GenerationRow(prompt, ids, GenerationParams(max_new_tokens=12, stop=[stop]))])[0]
    assert stopped.finish_reason == "stop" and stopped.text == free.text[:cut]

    monkeypatch.setattr(engine, "eos_ids", {free.token_ids[3]})
    at_eos = generate(engine, [GenerationRow(prompt, ids, GenerationParams(max_new_tokens=12))])[0]
    assert at_eos.finish_reason == "stop" and at_eos.token_ids == free.token_ids[:3]
    forced = generate(engine, [GenerationRow(prompt, ids, GenerationParams(max_new_tokens=12, min_new_tokens=12))])[0]
    assert forced.finish_reason == "length" and len(forced.token_ids) == 12


def test_limits_and_incompatible_prompts_are_refused(llama_engine: Engine, tmp_path: Path) -> None:
    engine = llama_engine
    with pytest.raises(InvalidRequestError, match="limit is 2048"):
        engine.inputs.encode("x" * 3000)
    with pytest.raises(InvalidRequestError, match="exceeds the limit"):
        engine.inputs.check_params(GenerationParams(max_new_tokens=4096))
    gpt2_registry = fill_registry(tmp_path / "gpt2", "tiny-random-gpt2")
    foreign = Engine(EngineConfig(dtype="float32"), gpt2_registry.versions)
    with pytest.raises(IncompatiblePromptError, match="token_dim 64 != base model hidden_size 128"):
        foreign.prompt(gpt2_registry.versions.latest("alpha"))
