"""What the scheduler needs of a model, and nothing more.

The scheduler decides which rows run; a model runner runs them and picks their tokens. Keeping the runner
behind this protocol lets the scheduler be tested with a fake one, without a model,
and keeps the dependency one way: the runner (`runner.Engine`) knows nothing of the
scheduler, and running a list of rows to completion (`offline.generate`) sits above both.
"""

from typing import Protocol

import torch

from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.outputs import ClassificationOutput
from promptmux.serving.engine.sampling import RowSampler


class RunningBatch(Protocol):
    """The rows being decoded, with the logits of each row's next token."""

    logits: torch.Tensor  # [rows, vocab]

    def merge(self, other: "RunningBatch") -> None:
        """Append `other`'s rows after this batch's."""

    def keep(self, indices: list[int]) -> None:
        """Drop every row not in `indices`."""

    def release(self) -> None:
        """Drop every row (the batch ends): what they hold is given back."""


class ModelRunner(Protocol):
    eos_ids: set[int]
    pad_id: int

    @property
    def device(self) -> torch.device: ...

    def check_positions(self, virtual: int, inputs: int, new: int) -> None:
        """Raise `PositionLimitError` for a row that would not fit the model's positions."""

    def prefill(self, rows: list[GenerationRow]) -> RunningBatch:
        """Run the rows' prompts and inputs; the batch holds the logits of their first token."""

    def decode_step(self, batch: RunningBatch, tokens: torch.Tensor) -> None:
        """Feed each row its latest token (`tokens` [rows]); the batch's logits move on one step."""

    def sample(self, batch: RunningBatch, samplers: list[RowSampler], done: list[bool],
               generated: list[int]) -> tuple[list[int], dict[int, Exception]]:
        """Each row's next token from the batch's logits, by its own sampler (rows already
        `done` are not asked), and the rows whose sampler failed, with their errors."""

    def classify(self, rows: list[ClassificationRow]) -> list[ClassificationOutput]: ...

    def decode(self, ids: list[int]) -> str:
        """Text of generated token ids."""
