"""How a soft prompt is trained: one pydantic object, the single source of every default.

The CLI's flags, a spec file's `training:` section and the demo all fill this object;
fields they leave out take the defaults below.
"""

from typing import Literal

from pydantic import Field, model_validator

from promptmux.core.strict_model import StrictModel
from promptmux.methods.catalog import DEFAULT_LR, TrainMethod


class MethodSettings(StrictModel):
    """A spec's settings for one method (`training.methods.<method>`): they apply only when
    training with that method, over the spec's own."""

    lr: float | None = Field(None, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] | None = None
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    epochs: int | None = Field(None, ge=1)
    num_virtual_tokens: int | None = Field(None, ge=1, le=1024)


class TrainConfig(StrictModel):
    base_model: str = Field(description="Hugging Face id, local path or embedded id")
    method: TrainMethod = Field("prompt", description="PEFT method: prompt (prompt tuning), p-tuning (an MLP prompt "
                                "encoder) or prefix (prefix tuning: every layer's keys and values)")
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="rows of the soft prompt")
    init: Literal["random", "text", "sample-vocab"] = Field("text", description="how the prompt starts (prompt "
                                                             "tuning; the other methods start at random)")
    prefix_projection: bool = Field(True, description="prefix tuning: train the prefix through an MLP (Li and Liang's "
                                    "reparameterization); the prefix it outputs is what is registered")
    init_text: str | None = Field(None, description="text whose token embeddings start the prompt (init=text)")
    lr: float | None = Field(None, gt=0, description="peak learning rate [default: 0.03 for prompt tuning, 0.003 for "
                             "P-tuning and prefix tuning, as measured in docs/quality.md]")
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
    workers: int = Field(1, ge=1, le=1024, description="data-parallel workers (Ray Train's TorchTrainer, one process "
                         "each; each batch is split between them)")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    trust_remote_code: bool = False
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="trackers Trainer also reports the run to (TensorBoard's event files go to the "
        "run's folder; MLflow and W&B read their own settings, e.g. MLFLOW_TRACKING_URI)")
    lr_from: str = Field("", description="where the learning rate came from (said before training, kept with the run)")

    @model_validator(mode="after")
    def _init_text_needs_text_init(self) -> "TrainConfig":
        if self.method != "prompt":  # a spec file's prompt-tuning init does not apply: these start at random
            self.init, self.init_text = "random", None
        if self.lr is None:
            self.lr, self.lr_from = DEFAULT_LR[self.method], self.lr_from or f"the default for {self.method}"
        self.lr_from = self.lr_from or "as given"
        if self.init_text is not None and self.init != "text":
            raise ValueError("init_text is only used with init=text")
        return self
