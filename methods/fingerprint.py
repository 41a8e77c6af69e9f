"""What a prompt must fit: a base model's fingerprint and the shape of its keys and values.
Torch-free: the registry stores fingerprints in its records."""

from pydantic import Field

from promptmux.core.strict_model import StrictModel


class KvShape(StrictModel):
    """The shape of a model's keys and values per layer: what a prefix must match."""

    layers: int = Field(ge=1)
    kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)

    @property
    def width(self) -> int:
        """A prefix row's width: every layer's key and value, flattened."""
        return self.layers * 2 * self.kv_heads * self.head_dim


class BaseModelFingerprint(StrictModel):
    """Identifies a base model well enough to tell whether a soft prompt was trained on it."""

    model_type: str
    architecture: str
    hidden_size: int
    vocab_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = Field(None, description="grouped-query attention: fewer key/value heads")
    head_dim: int | None = None
    embedding_sha256: str = Field(description="sha256 of the input-embedding matrix rounded to bfloat16")

    def kv_shape(self) -> KvShape:
        return KvShape(layers=self.num_layers, kv_heads=self.num_key_value_heads or self.num_attention_heads,
                       head_dim=self.head_dim or self.hidden_size // self.num_attention_heads)

    def misfit(self, other: "BaseModelFingerprint", token_dim: int | None = None) -> str | None:
        """What keeps a prompt made for `other` (with `token_dim` columns) off this model, in
        words, or None when it fits. The one compatibility check: registering, training,
        importing and serving all ask it, and each raises its own kind of error."""
        problems = [
            f"{field}: {getattr(self, field)!r} != {getattr(other, field)!r}"
            for field in ("architecture", "hidden_size", "vocab_size", "embedding_sha256")
            if getattr(self, field) != getattr(other, field)
        ]
        if token_dim is not None and token_dim != self.hidden_size:
            problems.insert(0, f"token_dim {token_dim} != base model hidden_size {self.hidden_size}")
        return "; ".join(problems) or None
