"""Base models: resolve an id, load it the ordinary Hugging Face way, fingerprint it.

Any Hugging Face model id or local path loads through `from_pretrained`; an embedded id
(`embedded.py`) is first built into the cache. Training (`tasks`) and serving load through
these same functions, so both see one model and record it under one identity.
"""

import difflib
import functools
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    ByT5Tokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from promptmux.core.errors import ModelUnavailableError
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.models.embedded import (
    EMBEDDED_MODELS,
    PACKAGED_MODELS,
    cache_dir,
    is_embedded,
    packaged_folder,
    resolve_model_path,
)


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


def check_base_model(model_id: str, offline: bool = False) -> None:
    """Refuse a base model that cannot load here before anything slow runs: an embedded
    id whose weights package is missing, a local path without a checkpoint, an id that
    is one typo away from an embedded one and is not in the Hugging Face cache. Other
    Hub ids are left to `from_pretrained` (whose failure `load_model` words alike), unless
    `offline`: then a Hub id must be in the cache (no download, no network retries)."""
    if model_id in PACKAGED_MODELS:
        packaged_folder(model_id)
    if is_embedded(model_id):
        return
    if _looks_local(model_id):
        if not (Path(model_id).expanduser() / "config.json").is_file():
            raise ModelUnavailableError(f"no checkpoint at {model_id}: a local base model is a folder with config.json")
        return
    near = difflib.get_close_matches(model_id, [*EMBEDDED_MODELS, *PACKAGED_MODELS], n=1, cutoff=0.8)
    if (near or offline or not _hub_reachable()) and not _in_hub_cache(model_id):
        raise unknown_model(model_id)


@functools.cache
def _hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers at all, asked once per process with a short
    timeout (every load of a Hub id checks it): when it does not, an id missing from the
    cache is refused at once, not after a minute of the Hub client's retries.
    `HF_HUB_OFFLINE` says no without asking."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        httpx.head(constants.ENDPOINT, timeout=timeout_s)
    except httpx.HTTPError:
        return False
    return True


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


POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")


def learned_positions(model: PreTrainedModel) -> int | None:
    """The size of a model's learned position table (GPT-2's `wpe`, OPT's `embed_positions`):
    past it a forward indexes out of the table. None where positions are computed (RoPE, ALiBi)."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in POSITION_TABLES and isinstance(module, torch.nn.Embedding):
            return module.num_embeddings - getattr(module, "offset", 0)
    return None


def resolve_device(device: str) -> str:
    """`auto` is the GPU when there is one, else the CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
