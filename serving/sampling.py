"""Per-row token selection with transformers' own logits processors.

Each row carries its own parameters. Rows that decode greedily without a repetition
penalty are picked together with one argmax; the others go through a
`LogitsProcessorList` built for their parameters (minimum length, repetition penalty,
then temperature, top-k, top-p: the order `generate` uses) and, when sampling, a per-row seeded generator,
so a request's samples do not depend on what else is in the batch.
"""

import torch
from transformers import (
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from registry.schemas import GenerationParams


class RowSampler:
    def __init__(self, params: GenerationParams, device: torch.device, prompt_length: int, eos_ids: set[int]) -> None:
        self.sampling = params.temperature > 0
        processors: list = []
        if params.min_new_tokens > 0 and eos_ids:
            processors.append(
                MinNewTokensLengthLogitsProcessor(prompt_length, params.min_new_tokens, sorted(eos_ids), device=device)
            )
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if self.sampling:
            processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
        self.processors = LogitsProcessorList(processors)
        self.generator: torch.Generator | None = None
        if self.sampling:
            seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def plain_greedy(self) -> bool:
        return not self.sampling and not self.processors

    def pick(self, history: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Next token for one row: `history` [1, t] (input + generated ids), `logits` [1, vocab]."""
        scores = self.processors(history, logits.float())
        if not self.sampling:
            return scores.argmax(-1)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]


def select_tokens(samplers: list[RowSampler], histories: list[torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    """Next token of every row of a batch (`logits` [batch, vocab])."""
    tokens = logits.argmax(-1)
    for b, sampler in enumerate(samplers):
        if not sampler.plain_greedy:
            tokens[b] = sampler.pick(histories[b], logits[b: b + 1])[0]
    return tokens
