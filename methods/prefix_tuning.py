"""Prefix tuning (Li and Liang): every layer's keys and values for the virtual tokens. PEFT
stores them as `prompt_embeddings` [n, layers × 2 × kv_heads × head_dim] (after the MLP
projection where `prefix_projection` is set), laid out as its `get_prompt` reads them:
[n, layers·2, kv_heads, head_dim], layer l's keys at 2l and values at 2l + 1, in the base
model's own key/value-head layout (PEFT sizes it by `num_key_value_heads` on grouped-query
models: SmolLM2 has 3 KV heads for 9 attention heads). Served as a pinned KV block, the
keys used as they are, as PEFT's cache does."""

from peft import PeftConfig, PrefixTuningConfig, TaskType

from promptmux.core.errors import IncompatiblePromptError, InvalidArtifactError
from promptmux.methods.base import PeftMethod, Randn, TrainingStart
from promptmux.methods.fingerprint import BaseModelFingerprint, KvShape
from promptmux.methods.prompt import EMBEDDINGS, Prompt, ServingForm


def kv_shape(prompt: Prompt) -> KvShape:
    """A prefix's per-layer key/value shape, as its config declares it."""
    heads, width = prompt.peft_config.get("num_attention_heads"), prompt.peft_config.get("token_dim")
    layers = prompt.peft_config.get("num_layers")
    if not all(isinstance(v, int) and v > 0 for v in (heads, width, layers)) or width % heads:
        raise InvalidArtifactError(f"prefix config needs positive num_layers, num_attention_heads and a token_dim "
                                   f"they divide (got {layers}, {heads}, {width})")
    return KvShape(layers=layers, kv_heads=heads, head_dim=width // heads)


class PrefixTuning(PeftMethod):
    name = "prefix_tuning"
    layout_in_config = True

    def check_layout(self, prompt: Prompt, source: str) -> None:
        shape = kv_shape(prompt)
        if prompt.embeddings.shape[1] != shape.width:
            raise InvalidArtifactError(f"{source}: a prefix of {shape.layers} layers x 2 x {shape.kv_heads} KV heads x "
                                       f"{shape.head_dim} is {shape.width} wide, but {EMBEDDINGS} is "
                                       f"{prompt.embeddings.shape[1]}")

    def width(self, prompt: Prompt) -> int | None:
        return None

    def check_fits(self, prompt: Prompt, model: BaseModelFingerprint, source: str) -> None:
        shape, expected = kv_shape(prompt), model.kv_shape()
        if shape != expected:
            differs = [f"{what} {mine} != {theirs}" for what, mine, theirs in
                       (("layers", shape.layers, expected.layers), ("KV heads", shape.kv_heads, expected.kv_heads),
                        ("head size", shape.head_dim, expected.head_dim)) if mine != theirs]
            raise IncompatiblePromptError(f"{source}: the prefix does not fit the base model's keys and values: "
                                          + ", ".join(differs))

    def serving_form(self, prompt: Prompt) -> ServingForm:
        shape, n = kv_shape(prompt), prompt.num_virtual_tokens
        kv = prompt.embeddings.float().view(n, shape.layers * 2, shape.kv_heads, shape.head_dim).permute(1, 2, 0, 3)
        return ServingForm(None, [(kv[2 * layer].contiguous(), kv[2 * layer + 1].contiguous()) for layer in range(shape.layers)])

    def check_servable(self, form: ServingForm, kv_layout: tuple[tuple[int, int], ...], source: str) -> None:
        """A prefix is served as the model's own keys and values: the same layers, KV heads and head size."""
        if not kv_layout:
            raise IncompatiblePromptError(f"{source} is a prefix-tuned prompt: it is served as pinned KV, which this "
                                          "engine does not use (engine.pinned_kv is off, or the model's cache layout "
                                          "is unsupported)")
        layout = tuple((key.shape[0], key.shape[2]) for key, _ in form.kv)
        if layout != kv_layout:
            (heads, head_dim), (model_heads, model_dim) = layout[0], kv_layout[0]
            raise IncompatiblePromptError(
                f"{source}: a prefix of {len(layout)} layers x {heads} KV heads x {head_dim} does not fit the served "
                f"model's {len(kv_layout)} layers x {model_heads} KV heads x {model_dim}")

    def training_config(self, start: TrainingStart) -> PeftConfig:
        return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=start.num_virtual_tokens,
                                  prefix_projection=start.prefix_projection)

    def example(self, model: BaseModelFingerprint, n: int, randn: Randn) -> Prompt:
        shape = model.kv_shape()
        config = {"peft_type": self.peft_type, "num_virtual_tokens": n, "num_layers": shape.layers,
                  "num_attention_heads": shape.kv_heads, "token_dim": shape.kv_heads * shape.head_dim}
        return Prompt(self.name, {EMBEDDINGS: randn(n, shape.width)}, config)


METHOD = PrefixTuning()
