"""Per-row token selection with transformers' own logits processors.

Each row carries its own parameters. Rows that decode greedily without a repetition
penalty are picked together with one argmax; the others go through a
`LogitsProcessorList` built for their parameters (repetition penalty, then temperature,
top-k, top-p: the order `generate` uses) and, when sampling, a per-row seeded generator,
so a request's samples do not depend on what else is in the batch. Such a row keeps its
token history (input and generated ids) on the device, in a buffer grown by chunks.
"""

import torch
from transformers import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from promptmux.core.fields import GenerationParams
from promptmux.serving.engine.outputs import TokenLogprob, TopLogprob

HISTORY_CHUNK = 256


class TokenHistory:
    """A row's token ids `[1, length]` on the device; appending writes one slot of a buffer
    that grows by `HISTORY_CHUNK`, instead of building a tensor from a list every step."""

    def __init__(self, ids: list[int], device: torch.device) -> None:
        self.length = len(ids)
        self.buffer = torch.empty((1, self.length + HISTORY_CHUNK), dtype=torch.long, device=device)
        self.buffer[0, : self.length] = torch.tensor(ids, dtype=torch.long)

    def append(self, token: int) -> None:
        if self.length == self.buffer.shape[1]:
            grown = self.buffer.new_empty((1, self.length + HISTORY_CHUNK))
            grown[:, : self.length] = self.buffer
            self.buffer = grown
        self.buffer[0, self.length] = token
        self.length += 1

    @property
    def ids(self) -> torch.Tensor:
        return self.buffer[:, : self.length]


class RowSampler:
    def __init__(self, params: GenerationParams, input_ids: list[int], device: torch.device) -> None:
        self.sampling = params.temperature > 0
        self.min_new_tokens = params.min_new_tokens
        processors: list = []
        if params.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if self.sampling:
            processors.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k > 0:
                processors.append(TopKLogitsWarper(params.top_k))
            if params.top_p < 1.0:
                processors.append(TopPLogitsWarper(params.top_p))
        self.processors = LogitsProcessorList(processors)
        self.history = None if self.plain_greedy else TokenHistory(input_ids, device)
        self.generator: torch.Generator | None = None
        if self.sampling:
            seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
            self.generator = torch.Generator(device=device).manual_seed(seed)

    @property
    def plain_greedy(self) -> bool:
        return not self.sampling and not self.processors

    def record(self, token: int) -> None:
        """Note a generated token in the history the processors read."""
        if self.history is not None:
            self.history.append(token)

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token for one row, from its `logits` [1, vocab] and its history."""
        scores = self.processors(self.history.ids, logits.float())
        if not self.sampling:
            return scores.argmax(-1)
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]


def select_tokens(
    samplers: list[RowSampler],
    done: list[bool],
    logits: torch.Tensor,
    generated: list[int],
    eos_ids: list[int],
) -> tuple[list[int], dict[int, Exception]]:
    """Next token of every row of a batch (`logits` [batch, vocab]; `generated`: tokens each
    row has so far; rows already `done` get the argmax and are not asked), and the rows
    whose own processors failed, with their errors: a row's failure is its own, and the
    other rows keep their tokens. EOS is masked, for the whole batch at once, in rows still
    short of their `min_new_tokens`."""
    short = [b for b, (s, n) in enumerate(zip(samplers, generated)) if n < s.min_new_tokens]
    if short and eos_ids:
        logits = logits.clone()
        logits[torch.tensor(short)[:, None], torch.tensor(eos_ids)[None, :]] = float("-inf")
    tokens = logits.argmax(-1).tolist()
    failures: dict[int, Exception] = {}
    for b, sampler in enumerate(samplers):
        if not sampler.plain_greedy and not done[b]:
            try:
                tokens[b] = int(sampler.pick(logits[b: b + 1])[0])
            except Exception as exc:  # handed to the request
                failures[b] = exc
    return tokens, failures


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """`token`'s log-probability in a row's raw next-token `logits` [vocab] (before any
    processor, as OpenAI and vLLM report them), with the `top` most likely alternatives."""
    logprobs = torch.log_softmax(logits.float(), -1)
    values, indices = logprobs.topk(top) if top else (logprobs[:0], logprobs[:0].long())
    return TokenLogprob(token_id=token, logprob=float(logprobs[token]),
                        top=[TopLogprob(token_id=int(i), logprob=float(v)) for v, i in zip(values.tolist(), indices.tolist())])
