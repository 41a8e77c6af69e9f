"""Version directories are PEFT adapters: import, load with PeftModel, export."""

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import random_prompt
from peft import PeftModel, PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, TaskType, get_peft_model

from promptmux.core.errors import InvalidArtifactError
from promptmux.models.loading import load_model, load_tokenizer
from promptmux.registry import Registry

TEXTS = ["Comment: the groomer was lovely\nSatisfaction:\n", "hola"]


def _logits(model: torch.nn.Module) -> torch.Tensor:
    tokenizer = load_tokenizer("tiny-random-llama")
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


def _save_adapter(config, path: Path, seed: int = 3) -> torch.Tensor:
    model = get_peft_model(load_model("tiny-random-llama", dtype="float32"), config)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:  # the soft prompt (or p-tuning encoder): move it off its init
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)) * 0.5)
    model.eval()
    model.save_pretrained(path)
    return _logits(model)


def _import_cli(cli, adapter: Path, registry_dir: Path, *extra: str):
    return cli("registry", "import", str(adapter), "--task", "imported", "--registry", str(registry_dir), *extra)


def test_cli_import_then_peft_loads_identical_logits(cli, tmp_path: Path) -> None:
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=7)
    expected = _save_adapter(config, tmp_path / "adapter")
    result = _import_cli(cli, tmp_path / "adapter", tmp_path / "reg", "--base-model", "tiny-random-llama", "--json")
    assert result.code == 0, result.err
    imported = json.loads(result.out)
    assert imported["version"] == 1

    version_dir = imported["uri"]
    assert sorted(os.listdir(version_dir)) == ["adapter_config.json", "adapter_model.safetensors", "promptmux.json"]
    loaded = PeftModel.from_pretrained(load_model("tiny-random-llama", dtype="float32"), version_dir)
    assert torch.equal(_logits(loaded), expected)

    second = _import_cli(cli, tmp_path / "adapter", tmp_path / "reg")  # base model taken from the task now
    assert second.code == 0, second.err
    assert "registered imported version 2" in second.out


def test_p_tuning_adapter_imports_as_its_prompt(tmp_path: Path) -> None:
    config = PromptEncoderConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=5, encoder_hidden_size=32)
    expected = _save_adapter(config, tmp_path / "ptuning")
    registry = Registry(str(tmp_path / "reg"))
    base = load_model("tiny-random-llama", dtype="float32")
    from promptmux.models.loading import fingerprint

    manifest = registry.transfer.import_peft(str(tmp_path / "ptuning"), "pt", fingerprint(base), base_model="tiny-random-llama")
    assert manifest.init_method.startswith("imported-p-tuning")
    loaded = PeftModel.from_pretrained(base, registry.versions.uri("pt", manifest.version))
    torch.testing.assert_close(_logits(loaded), expected, rtol=0, atol=1e-5)


def test_export_writes_a_loadable_adapter(tmp_path: Path, registry: Registry, task: str, llama_fp) -> None:
    registry.versions.register(task, random_prompt(rows=3), llama_fp)
    registry.transfer.export(task, 1, str(tmp_path / "out"))
    from_export = PeftModel.from_pretrained(load_model("tiny-random-llama", dtype="float32"), str(tmp_path / "out"))
    from_registry = PeftModel.from_pretrained(load_model("tiny-random-llama", dtype="float32"), registry.versions.uri(task, 1))
    assert torch.equal(_logits(from_export), _logits(from_registry))
    with pytest.raises(Exception, match="already holds an adapter"):
        registry.transfer.export(task, 1, str(tmp_path / "out"))


def test_a_pickled_adapter_is_refused(tmp_path: Path, registry: Registry, llama_fp) -> None:
    _save_adapter(PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4), tmp_path / "prefix")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    config = json.loads((tmp_path / "prefix" / "adapter_config.json").read_text())
    (pickled / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "PROMPT_TUNING"}))
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(InvalidArtifactError, match="safetensors only"):
        registry.transfer.import_peft(str(pickled), "x", llama_fp, "tiny-random-llama")
    assert registry.tasks.names() == []


def test_cli_refuses_incompatible_adapter_cleanly(cli, tmp_path: Path) -> None:
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)
    model = get_peft_model(load_model("tiny-random-gpt2", dtype="float32"), config)
    model.save_pretrained(tmp_path / "gpt2-adapter")
    result = _import_cli(cli, tmp_path / "gpt2-adapter", tmp_path / "reg", "--base-model", "tiny-random-llama")
    assert result.code == 1
    assert "token_dim 64 != base model hidden_size 128" in result.err
    assert "Traceback" not in result.err
    assert Registry(str(tmp_path / "reg")).tasks.names() == []


def _raw_safetensors(header: bytes, payload: bytes = b"") -> bytes:
    return len(header).to_bytes(8, "little") + header + payload


@pytest.mark.parametrize(
    "tensor_file, message",
    [
        ((2**40).to_bytes(8, "little") + b"{}", "not a readable safetensors file"),
        (_raw_safetensors(b'{"prompt_embeddings":{"dtype":"F32","shape":[4,128],"data_offsets":[0,2048]}}', b"\0" * 16),
         "not a readable safetensors file"),
        (b"\x80\x04\x95pickle", "not a readable safetensors file"),
    ],
)
def test_hostile_tensor_files_are_refused_at_import(tmp_path: Path, registry: Registry, llama_fp, tensor_file: bytes,
                                                    message: str) -> None:
    adapter = tmp_path / "hostile"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM",
                                                             "num_virtual_tokens": 4}))
    (adapter / "adapter_model.safetensors").write_bytes(tensor_file)
    with pytest.raises(InvalidArtifactError, match=message):
        registry.transfer.import_peft(str(adapter), "hostile", llama_fp, "tiny-random-llama")
    assert registry.tasks.names() == []


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_adapters_are_refused_at_import(tmp_path: Path, registry: Registry, llama_fp, value: float) -> None:
    from safetensors.torch import save_file

    adapter = tmp_path / "nan"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4}))
    tensor = torch.zeros(4, 128)
    tensor[2, 5] = value
    save_file({"prompt_embeddings": tensor}, adapter / "adapter_model.safetensors")
    with pytest.raises(InvalidArtifactError, match="NaN or Inf"):
        registry.transfer.import_peft(str(adapter), "nan", llama_fp, "tiny-random-llama")


def test_a_version_replaced_at_rest_with_a_hostile_header_is_refused_at_load(registry: Registry, task: str,
                                                                             llama_fp) -> None:
    registry.versions.register(task, random_prompt(), llama_fp)
    (Path(registry.versions.uri(task, 1)) / "adapter_model.safetensors").write_bytes((2**40).to_bytes(8, "little"))
    with pytest.raises(InvalidArtifactError, match="not a readable safetensors file"):
        registry.versions.load_prompt(task, 1)
    assert "not a readable safetensors file" in registry.verify()[0].problem
