"""One generation request as it runs: the tokens it has, when it stops, what it sends.

The scheduler decides which rows run and when; each row's own `Sequence` takes the token
the runner picked for it, records it (and its log-probability, when asked for), checks the
stop conditions (EOS, `max_new_tokens`, stop strings on the incrementally detokenized
text) and emits its delta. As in vLLM v1, where output processing sits beside the request
and not in the scheduler: the scheduler calls no sampler, detokenizer or stop check.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from promptmux.core.usage import Usage
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.detokenizer import IncrementalDetokenizer
from promptmux.serving.engine.outputs import GenerationOutput, TokenLogprob
from promptmux.serving.engine.sampling import RowSampler, token_logprob


@dataclass
class StreamEvent:
    """A piece of one request's output: new text and tokens; the last one carries the result."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    output: GenerationOutput | None = None
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of `token_ids`, when the request asked for them


@dataclass(eq=False)
class Sequence:
    row: GenerationRow
    decode: Callable[[list[int]], str]
    on_event: Callable[[StreamEvent], None] | None = None
    stream: bool = True
    submitted_step: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None  # when it left the waiting queue for a decode slot
    sampler: RowSampler | None = None
    detokenizer: IncrementalDetokenizer | None = None  # when text is needed before the end
    generated: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None  # one per generated token, when the request asks for them
    finish_reason: str | None = None
    error: str | None = None
    failure: Exception | None = None  # what `error` says, as raised
    cancelled: bool = False
    emitted_chars: int = 0
    first_token_at: float | None = None
    finished_at: float | None = None

    def __post_init__(self) -> None:
        if self.row.params.logprobs is not None:
            self.logprobs = []
        if self.row.params.stop or (self.on_event is not None and self.stream):
            self.detokenizer = IncrementalDetokenizer(self.decode)

    @property
    def reserved_tokens(self) -> int:
        return self.row.prompt.num_virtual_tokens + len(self.row.input_ids) + self.row.params.max_new_tokens

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def cancel(self) -> None:
        """Ask for the row to leave at the next step (a client went away)."""
        self.cancelled = True

    def start(self, device: torch.device) -> None:
        """Build the row's sampler (its logits processors) on the model's device."""
        self.sampler = RowSampler(self.row.params, self.row.input_ids, device)

    def accept(self, token: int, logits: torch.Tensor, eos_ids: set[int]) -> bool:
        """Record one token (and its log-probability, when asked for, from the row's raw
        `logits`), check the stop conditions and emit the delta; True when the row is finished."""
        now = time.perf_counter()
        self.first_token_at = self.first_token_at or now
        if self.cancelled:
            self.finish_reason, self.finished_at = "cancelled", now
            return True
        params = self.row.params
        new = [] if token in eos_ids else [token]
        self.generated += new
        if new and self.logprobs is not None:
            self.logprobs.append(token_logprob(logits, token, params.logprobs))
        if not new:
            self.finish_reason = "stop"
        elif len(self.generated) >= params.max_new_tokens:
            self.finish_reason = "length"
        else:
            self.sampler.record(token)
        text = ""
        if self.detokenizer is not None:
            delta = self.detokenizer.update(self.generated)
            text, stopped = _stop_in(self.detokenizer.text, len(delta), params.stop)
            if stopped:
                self.finish_reason = "stop"
        if self.finish_reason:
            self.finished_at = now
        if self.on_event is not None and (self.stream or self.finish_reason):
            self._emit(text, new)
        return self.finish_reason is not None

    def fail(self, exc: Exception) -> None:
        self.error, self.finished_at, self.failure = str(exc) or type(exc).__name__, time.perf_counter(), exc
        if self.on_event is not None:
            self.on_event(StreamEvent("", [], None, None, self.error))

    def output(self) -> GenerationOutput:
        return GenerationOutput(
            text=_cut_at_stop(self.decode(self.generated), self.row.params.stop)[0],
            token_ids=self.generated,
            finish_reason=self.finish_reason or "length",
            usage=Usage.count(len(self.row.input_ids), len(self.generated), self.row.prompt.num_virtual_tokens),
            logprobs=self.logprobs,
            queue_s=(self.admitted_at or self.submitted_at) - self.submitted_at,
        )

    def _emit(self, text: str, new_tokens: list[int]) -> None:
        """Send the text that is final: hold back what a stop string or an unfinished
        character could still change. The last event completes the text to the output's
        (decoded once, whole), so the deltas always add up to it."""
        final = self.finish_reason is not None
        output = self.output() if final else None
        if output is not None:
            text = output.text
        else:
            hold = max((len(stop) - 1 for stop in self.row.params.stop), default=0)
            text = text.rstrip("\ufffd")
            text = text[: max(len(text) - hold, self.emitted_chars)]
        delta, self.emitted_chars = text[self.emitted_chars:], max(len(text), self.emitted_chars)
        logprobs = self.logprobs[len(self.logprobs) - len(new_tokens):] if self.logprobs and new_tokens else []
        self.on_event(StreamEvent(delta, new_tokens, self.finish_reason if final else None, output, logprobs=logprobs))


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[: min(found)], True) if found else (text, False)


def _stop_in(text: str, new_chars: int, stops: list[str]) -> tuple[str, bool]:
    """`_cut_at_stop` for text that only grew by its last `new_chars` characters: earlier
    steps searched the rest, so only a stop that overlaps the new end can be new."""
    longest = max((len(stop) for stop in stops), default=0)
    start = max(0, len(text) - new_chars - longest + 1)
    tail, stopped = _cut_at_stop(text[start:], stops)
    return (text[:start] + tail, True) if stopped else (text, False)
