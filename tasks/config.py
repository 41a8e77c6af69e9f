"""How a soft prompt is trained: one pydantic object, the single source of every default.

The CLI's flags, a spec file's `training:` section and the demo all fill this object;
fields they leave out take the defaults below.
"""

from typing import Literal

from pydantic import Field, model_validator

from promptmux.registry.schemas import StrictModel


class TrainConfig(StrictModel):
    base_model: str = Field(description="Hugging Face id, local path or embedded id")
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="rows of the soft prompt")
    init: Literal["random", "text", "sample-vocab"] = Field("text", description="how the prompt starts")
    init_text: str | None = Field(None, description="text whose token embeddings start the prompt (init=text)")
    lr: float = Field(3e-2, gt=0, description="peak learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="learning-rate schedule after warm-up"
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="share of the steps spent warming up")
    epochs: int = Field(3, ge=1, description="most passes over the training data (early stopping may end sooner)")
    batch_size: int = Field(8, ge=1, description="examples per forward")
    grad_accum: int = Field(1, ge=1, description="forwards per optimizer step")
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="share of the training data held back for early stopping and best-checkpoint choice"
    )
    evals_per_epoch: int = Field(4, ge=1, description="validation passes per epoch")
    early_stopping_patience: int = Field(
        3, ge=0, description="stop after this many validation passes without a better loss (0: never stop early)"
    )
    max_input_tokens: int = Field(256, ge=1, description="inputs are cut to their last N tokens")
    max_output_tokens: int = Field(64, ge=1, description="generation targets are cut to N tokens")
    bf16: bool = Field(False, description="mixed-precision bfloat16 training (GPUs and CPUs that support it)")
    seed: int = Field(42, description="seed of the prompt init, data order and validation split")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _init_text_needs_text_init(self) -> "TrainConfig":
        if self.init_text is not None and self.init != "text":
            raise ValueError("init_text is only used with init=text")
        return self
