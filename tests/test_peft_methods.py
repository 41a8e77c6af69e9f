"""Every PEFT prompt-learning method, served mixed in one batch, equal to PEFT row by row.

Adapters made by PEFT itself (`peft_adapters.py`): prompt tuning, P-tuning (MLP, LSTM),
prefix tuning (plain, projected) and multitask prompt tuning (two tasks of one adapter) are
imported into one registry and served together. The reference is greedy decoding over
PEFT's full forward (`peft_reference.py`), per row, alone.
"""

import asyncio
import json
import math
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from helpers import serve_locally
from peft import IA3Config, LoraConfig, PeftModel, TaskType
from peft_adapters import Adapter, make_adapters, save
from peft_reference import peft_generate, peft_logprobs
from safetensors.torch import load_file, save_file

from promptmux.core.errors import IncompatiblePromptError, InvalidArtifactError
from promptmux.core.fields import GenerationParams
from promptmux.models.loading import fingerprint, load_model, load_tokenizer
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow, Row
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine
from promptmux.serving.runtime.settings import ServeSettings

BASE = "tiny-random-llama"  # 4 layers, 4 attention heads, 2 KV heads: grouped-query attention
TEMPLATE = "Act as {input}:"
INPUTS = ["a poet", "the night sea"]
REVIEWS = ["Lovely staff, my dog looks great", "They lost the leash", "ok"]
LABELS = {"0": "0", "1": "1"}
CLASSIFIERS = ["pt-a", "ptune-mlp", "prefix", "mpt-2"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> list[Adapter]:
    return make_adapters(BASE, tmp_path_factory.mktemp("adapters"))


@pytest.fixture(scope="module")
def registry(adapters: list[Adapter], tmp_path_factory) -> Registry:
    registry = Registry(str(tmp_path_factory.mktemp("methods") / "registry"))
    fp = fingerprint(load_model(BASE, dtype="float32"))
    for adapter in adapters:
        spec = TaskSpec(name=adapter.name, template=TEMPLATE, base_model=BASE, generation=GenerationParams(max_new_tokens=10))
        registry.transfer.import_peft(str(adapter.folder), adapter.name, fp, BASE, spec=spec, task_id=adapter.task_id)
        if adapter.name in CLASSIFIERS:
            spec = TaskSpec(name=f"{adapter.name}-cls", kind="classification", template="Review: {input}\nGood:",
                            labels=LABELS, base_model=BASE)
            registry.transfer.import_peft(str(adapter.folder), spec.name, fp, BASE, spec=spec, task_id=adapter.task_id)
    return registry


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    return Engine(EngineConfig(base_model=BASE, dtype="float32", max_batch_size=32, cpu_threads=2), registry.versions)


def reference(registry: Registry, adapter: Adapter, text: str, eos: tuple[int, ...]) -> list[int]:
    ids = load_tokenizer(BASE)(TEMPLATE.replace("{input}", text)).input_ids[:-1]  # ByT5 appends EOS
    return peft_generate(BASE, registry.versions.uri(adapter.name, 1), ids, 10, eos_ids=eos, task_id=adapter.task_id)


def test_the_registry_records_each_method_and_keeps_peft_files(registry: Registry, adapters: list[Adapter]) -> None:
    for adapter in adapters:
        manifest = registry.versions.get(adapter.name, 1)
        assert (manifest.method, manifest.task_id) == (adapter.method, adapter.task_id)
        stored = Path(registry.versions.uri(adapter.name, 1))
        for name in ("adapter_config.json", "adapter_model.safetensors"):  # byte for byte as PEFT wrote them
            assert (stored / name).read_bytes() == (adapter.folder / name).read_bytes(), (adapter.name, name)
    assert all(r.ok for r in registry.verify())


def test_one_mixed_batch_of_all_four_methods_equals_peft_row_by_row(registry, adapters, engine: Engine) -> None:
    rows = [(adapter, text) for text in INPUTS for adapter in adapters]  # interleaved: every batch is mixed
    outputs = generate(engine, [GenerationRow(engine.prompt(registry.versions.latest(a.name)), engine.inputs.encode(TEMPLATE.replace(
        "{input}", text)), GenerationParams(max_new_tokens=10)) for a, text in rows])
    assert len({a.method for a, _ in rows}) == 4 and len(rows) == 16
    for (adapter, text), output in zip(rows, outputs):
        assert output.token_ids == reference(registry, adapter, text, tuple(engine.eos_ids)), (adapter.name, text)
    by_task = {a.name: o.token_ids for (a, _), o in zip(rows, outputs) if _ == INPUTS[0]}
    assert len({tuple(tokens) for tokens in by_task.values()}) == len(by_task)  # every prompt really changes the output


def test_classification_labels_and_probabilities_equal_peft(registry, adapters, engine: Engine) -> None:
    named = {a.name: a for a in adapters}
    verbalizers = engine.inputs.verbalizers(LABELS)
    rows = [(named[name], text) for text in REVIEWS for name in CLASSIFIERS]
    verdicts = engine.classify([ClassificationRow(engine.prompt(registry.versions.latest(f"{a.name}-cls")),
                                                  engine.inputs.encode(f"Review: {text}\nGood:"), verbalizers) for a, text in rows])
    for (adapter, text), verdict in zip(rows, verdicts):
        ids = engine.inputs.encode(f"Review: {text}\nGood:")
        last = peft_logprobs(BASE, registry.versions.uri(f"{adapter.name}-cls", 1), ids, adapter.task_id)[-1]
        scores = torch.tensor([float(last[v[0]]) for v in verbalizers.values()])
        expected = dict(zip(LABELS, torch.softmax(scores, 0).tolist()))
        assert verdict.label == max(expected, key=expected.get), (adapter.name, text)
        assert verdict.probabilities == pytest.approx(expected, abs=1e-5), (adapter.name, text)


def test_a_prefix_is_charged_its_real_bytes_and_needs_pinned_kv(registry, engine: Engine) -> None:
    prefix = engine.prompt(registry.versions.latest("prefix"))
    assert prefix.embeds is None and prefix.nbytes == 2 * 4 * 2 * 32 * 7 * 4  # K and V x layers x KV heads x dim x n x fp32
    recomputing = Engine(EngineConfig(base_model=BASE, dtype="float32", pinned_kv=False), registry.versions)
    assert recomputing.prompt(registry.versions.latest("ptune-mlp")).embeds is not None
    with pytest.raises(IncompatiblePromptError, match="prefix-tuned prompt: it is served as pinned KV"):
        recomputing.prompt(registry.versions.latest("prefix"))


def test_promptmux_generate_and_http_serve_every_method_alike(cli, registry, adapters, engine, tmp_path: Path) -> None:
    requests = [{"task": a.name, "input": text} for text in INPUTS for a in adapters]
    requests += [{"task": f"{name}-cls", "input": text} for text in REVIEWS for name in CLASSIFIERS]
    lines = tmp_path / "requests.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in requests))
    result = cli("generate", "--input", str(lines), "--output", str(tmp_path / "out.jsonl"), "--registry", registry.uri,
                 "--base-model", BASE, "--dtype", "float32")
    assert result.code == 0, result.err
    offline = [json.loads(line)["result"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    named = {a.name: a for a in adapters}
    for request, output in zip(requests, offline):
        if request["task"] in named:
            assert output["token_ids"] == reference(registry, named[request["task"]], request["input"], tuple(engine.eos_ids))
    settings = ServeSettings(registry=registry.uri, engine=EngineConfig(base_model=BASE, dtype="float32", cpu_threads=2))
    with serve_locally(settings) as (url, _):
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                return await asyncio.gather(*(client.post(
                    "/v1/classify" if r["task"].endswith("-cls") else "/v1/generate", json=r) for r in requests))

        served = [r.json()["outputs"][0] for r in asyncio.run(burst())]
    for request, over_http, local in zip(requests, served, offline):
        if "label" in local:
            assert over_http["label"] == local["label"]
            assert over_http["probabilities"] == pytest.approx(local["probabilities"], abs=1e-5)
        else:
            assert over_http["token_ids"] == local["token_ids"], request


def _peft_logits(folder: str, task_id: int | None) -> torch.Tensor:
    model = PeftModel.from_pretrained(load_model(BASE, dtype="float32"), folder).eval()
    ids = load_tokenizer(BASE)(["the groomer was lovely", "hola"], return_tensors="pt", padding=True)
    extra = {"task_ids": torch.tensor([task_id, task_id])} if task_id is not None else {}
    with torch.no_grad():
        return model(**ids, **extra).logits


def test_import_export_and_peft_load_give_bit_identical_logits(registry, adapters, tmp_path: Path) -> None:
    for adapter in adapters:
        exported = tmp_path / adapter.name
        registry.transfer.export(adapter.name, 1, str(exported))
        assert torch.equal(_peft_logits(str(exported), adapter.task_id), _peft_logits(str(adapter.folder), adapter.task_id))
        assert json.loads((exported / "adapter_config.json").read_text())["peft_type"] == \
            json.loads((adapter.folder / "adapter_config.json").read_text())["peft_type"]


def _bent(source: Path, target: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of an adapter with some config fields and tensors replaced."""
    shutil.copytree(source, target)
    if config is not None:
        original = json.loads((source / "adapter_config.json").read_text())
        (target / "adapter_config.json").write_text(json.dumps({**original, **config}))
    if tensors is not None:
        save_file(tensors, target / "adapter_model.safetensors")
    return target


def hostile_cases(adapters: list[Adapter], tmp_path: Path) -> list[tuple[Path, dict, str]]:
    named = {a.name: a.folder for a in adapters}
    prefix = load_file(named["prefix"] / "adapter_model.safetensors")["prompt_embeddings"]  # [7, 4 x 2 x 64]
    nan = prefix.clone()
    nan[3, 17] = float("nan")
    mpt = load_file(named["mpt-0"] / "adapter_model.safetensors")
    return [
        (_bent(named["prefix"], tmp_path / "layers", {"num_layers": 3}, {"prompt_embeddings": prefix[:, :384].contiguous()}), {},
         "does not fit the base model's keys and values: layers 3 != 4"),
        (_bent(named["prefix"], tmp_path / "kv-heads", {"num_attention_heads": 4, "token_dim": 128},
               {"prompt_embeddings": torch.cat([prefix, prefix], 1)}), {}, "keys and values: KV heads 4 != 2"),
        (_bent(named["prefix"], tmp_path / "nan", tensors={"prompt_embeddings": nan}), {}, "NaN or Inf"),
        (_bent(named["pt-a"], tmp_path / "oversize", {"num_virtual_tokens": 5000},
               {"prompt_embeddings": torch.zeros(5000, 128)}), {}, "1..4096 virtual tokens"),
        (_bent(named["prefix"], tmp_path / "says-prompt", {"peft_type": "PROMPT_TUNING"}), {},
         "token_dim 64 but prompt_embeddings is (7, 512)"),
        (_bent(named["pt-a"], tmp_path / "says-prefix", {"peft_type": "PREFIX_TUNING", "num_attention_heads": 2,
                                                         "token_dim": 64}), {},
         "a prefix of 4 layers x 2 x 2 KV heads x 32 is 512 wide, but prompt_embeddings is 128"),
        (_bent(named["mpt-0"], tmp_path / "no-rows", tensors={k: v for k, v in mpt.items() if k != "prefix_task_rows"}),
         {"task_id": 0}, "holds ['prefix_task_cols', 'prefix_task_rows', 'prompt_embeddings']"),
        (named["mpt-0"], {"task_id": 3}, "choose it with --task-id 0..2 (got 3)"),
        (named["mpt-0"], {}, "choose it with --task-id 0..2 (got None)"),
    ]


def test_hostile_artifacts_of_every_method_are_refused(adapters, tmp_path: Path) -> None:
    registry = Registry(str(tmp_path / "registry"))
    fp = fingerprint(load_model(BASE, dtype="float32"))
    for folder, extra, message in hostile_cases(adapters, tmp_path):
        with pytest.raises((InvalidArtifactError, IncompatiblePromptError)) as refused:
            registry.transfer.import_peft(str(folder), "hostile", fp, BASE, **extra)
        assert message in str(refused.value), (folder.name, str(refused.value))
    assert registry.tasks.names() == []


def test_methods_that_are_not_prompt_learning_are_refused_in_one_line(cli, tmp_path: Path) -> None:
    save(BASE, LoraConfig(task_type=TaskType.CAUSAL_LM, r=2), tmp_path / "lora", 1)
    save(BASE, IA3Config(task_type=TaskType.CAUSAL_LM), tmp_path / "ia3", 2)
    for name, config in (("adaption", {"peft_type": "ADAPTION_PROMPT", "adapter_len": 4, "adapter_layers": 1}),
                         ("cpt", {"peft_type": "CPT", "task_type": "CAUSAL_LM"}),
                         ("seq2seq", {"peft_type": "PREFIX_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 4})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": BASE}))
    for name, shown in (("lora", "'LORA'"), ("ia3", "'IA3'"), ("adaption", "'ADAPTION_PROMPT'"), ("cpt", "'CPT'"),
                        ("seq2seq", "'SEQ_2_SEQ_LM'")):
        result = cli("registry", "import", str(tmp_path / name), "--task", name, "--registry", str(tmp_path / "reg"))
        lines = result.err.strip().splitlines()
        assert result.code == 1 and len(lines) == 1 and shown in lines[0], (name, result.err)
        assert "promptmux serves PROMPT_TUNING, P_TUNING, PREFIX_TUNING and MULTITASK_PROMPT_TUNING" in lines[0]


@pytest.mark.parametrize("method, peft_type", [("p-tuning", "P_TUNING"), ("prefix", "PREFIX_TUNING")])
def test_promptmux_train_makes_every_method_and_serves_it_as_trained(cli, tmp_path: Path, method, peft_type) -> None:
    registry = Registry(str(tmp_path / "registry"))
    data = Path(__file__).resolve().parent.parent / "tasks" / "examples" / "data" / "reviews.jsonl"
    result = cli("train", "--task", "reviews", "--kind", "classification", "--labels", "0,1",
                 "--template", "Review: {input}\nHappy?", "--data", str(data), "--input-field", "review",
                 "--target-field", "satisfied", "--base-model", BASE, "--epochs", "2", "--num-virtual-tokens", "6",
                 "--method", method, "--registry", registry.uri, "--output-dir", str(tmp_path / "run"), "--json")
    assert result.code == 0, result.err
    manifest = registry.versions.get("reviews", 1)
    config = json.loads((Path(registry.versions.uri("reviews", 1)) / "adapter_config.json").read_text())
    assert (manifest.method, manifest.init_method, config["peft_type"]) == (method.replace("-", "_").replace(
        "prefix", "prefix_tuning"), "random", peft_type)
    assert config["base_model_name_or_path"] == BASE and config["inference_mode"] is True
    assert 0 <= manifest.metrics["accuracy"] <= 1 and manifest.training["method"] == method
    engine = Engine(EngineConfig(base_model=BASE, dtype="float32", cpu_threads=2), registry.versions)
    verbalizers = engine.inputs.verbalizers(LABELS)  # one byte each: scored at the input's last position
    for text in REVIEWS:
        ids = engine.inputs.encode(f"Review: {text}\nHappy?")
        (verdict,) = engine.classify([ClassificationRow(engine.prompt(manifest), ids, verbalizers)])
        last = peft_logprobs(BASE, registry.versions.uri("reviews", 1), ids)[-1]
        scores = torch.tensor([float(last[v[0]]) for v in verbalizers.values()])
        assert verdict.probabilities == pytest.approx(dict(zip(("0", "1"), torch.softmax(scores, 0).tolist())), abs=1e-5)


def test_in_bfloat16_every_method_stays_within_bfloat16s_own_rounding_of_peft(registry, adapters) -> None:
    """bfloat16 keeps 8 bits of mantissa, so two correct bf16 computations of the same function,
    in a different order (a mixed batch, pinned KV vs PEFT's own), differ by rounding: bound the
    engine's distance from PEFT in bf16 by PEFT's own bf16 distance from float32 on the same rows
    (a wrong layout or a lost prefix moves log-probabilities by whole nats, far past it)."""
    engine = Engine(EngineConfig(base_model=BASE, dtype="bfloat16", cpu_threads=2), registry.versions)
    texts = ["Act as a poet:", "the night sea", "Review: They lost the leash\nGood:"]
    rows = [(a, text) for text in texts for a in adapters]
    batch = [Row(engine.prompt(registry.versions.latest(a.name)), engine.inputs.encode(text)) for a, text in rows]
    mine = torch.log_softmax(engine.logits(batch, 1)[:, -1].float(), -1)
    to_peft, rounding = [], []
    for (adapter, text), logprobs in zip(rows, mine):
        ids, folder = engine.inputs.encode(text), registry.versions.uri(adapter.name, 1)
        peft16 = peft_logprobs(BASE, folder, ids, adapter.task_id, dtype="bfloat16")[-1]
        exact = peft_logprobs(BASE, folder, ids, adapter.task_id)[-1]
        top = exact.topk(10).indices
        to_peft.append(float((logprobs[top] - peft16[top]).abs().max()))
        rounding.append(float((peft16[top] - exact[top]).abs().max()))
    assert max(to_peft) <= max(rounding) and sum(to_peft) <= sum(rounding), (to_peft, rounding)
    verbalizers = engine.inputs.verbalizers(LABELS)
    named = {a.name: a for a in adapters}
    reviews = [f"Review: {text}\nGood:" for text in REVIEWS + ["on time", "the cut was uneven", "friendly and fast"]]
    cases = [(named[name], text) for text in reviews for name in CLASSIFIERS]
    verdicts = engine.classify([ClassificationRow(engine.prompt(registry.versions.latest(f"{a.name}-cls")), engine.inputs.encode(text),
                                                  verbalizers) for a, text in cases])
    tie = 2 * max(rounding)  # two label scores each off by up to bf16's rounding: closer than this is a tie
    for (adapter, text), verdict in zip(cases, verdicts):
        last = peft_logprobs(BASE, registry.versions.uri(f"{adapter.name}-cls", 1), engine.inputs.encode(text), adapter.task_id,
                             dtype="bfloat16")[-1]
        peft_gap = float(last[verbalizers["1"][0]] - last[verbalizers["0"][0]])
        my_gap = math.log(verdict.probabilities["1"] / verdict.probabilities["0"])
        assert abs(my_gap - peft_gap) <= tie, (adapter.name, text, my_gap, peft_gap, tie)
        if abs(peft_gap) > tie:  # a clear answer is the same answer
            assert verdict.label == ("1" if peft_gap > 0 else "0"), (adapter.name, text, verdict.probabilities)
