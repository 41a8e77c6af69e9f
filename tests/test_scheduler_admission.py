"""The scheduler's own rules, against a fake model runner: no model is loaded.

The fake runner gives every row the token `1 + (its input length + tokens so far) % 50`
(never EOS), so a row runs to its `max_new_tokens` and its tokens say which row it is.
The fake has a position table of `POSITIONS` entries, as GPT-2 has: a forward past it
raises, as a real one does. What is checked here is admission (FIFO, token budget, queue
bound, static batches, positions), rows leaving, and failures staying with their own
request.
"""

import pytest
import torch

from promptmux.core.errors import InvalidRequestError, OverloadedError, PositionLimitError
from promptmux.core.fields import GenerationParams
from promptmux.core.usage import Usage
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.limits import check_positions
from promptmux.serving.engine.outputs import ClassificationOutput
from promptmux.serving.engine.prompt_cache import CachedPrompt, PromptKey
from promptmux.serving.engine.sampling import RowSampler, select_tokens
from promptmux.serving.engine.scheduler import ClassificationJob, Scheduler

VOCAB = 64
POSITIONS = 48
LIMITS = EngineConfig(max_batch_size=4, admit_fraction=0.25, max_admission_wait_steps=0)


def next_logits(lengths: list[int]) -> torch.Tensor:
    logits = torch.zeros((len(lengths), VOCAB))
    logits[torch.arange(len(lengths)), torch.tensor([1 + n % 50 for n in lengths])] = 1.0
    return logits


class FakeBatch:
    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.logits = next_logits(lengths)

    def merge(self, other: "FakeBatch") -> None:
        self.lengths = self.lengths + other.lengths
        self.logits = next_logits(self.lengths)

    def keep(self, indices: list[int]) -> None:
        self.lengths = [self.lengths[i] for i in indices]
        self.logits = next_logits(self.lengths)

    def release(self) -> None:
        self.lengths = []


class FakeRunner:
    eos_ids = {0}
    pad_id = 0
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.prefills: list[list[GenerationRow]] = []
        self.classified: list[int] = []  # rows per classify call

    def check_positions(self, virtual: int, inputs: int, new: int) -> None:
        check_positions(virtual, inputs, new, POSITIONS, f"the model's {POSITIONS} positions")

    def prefill(self, rows: list[GenerationRow]) -> FakeBatch:
        self.prefills.append(rows)
        beyond(max(row.prompt.num_virtual_tokens + len(row.input_ids) for row in rows))
        return FakeBatch([len(row.input_ids) for row in rows])

    def decode_step(self, batch: FakeBatch, tokens: torch.Tensor) -> None:
        assert tokens.shape == (len(batch.lengths),)
        beyond(PROMPT.num_virtual_tokens + max(batch.lengths) + 1)
        batch.lengths = [n + 1 for n in batch.lengths]
        batch.logits = next_logits(batch.lengths)

    def sample(self, batch: FakeBatch, samplers: list[RowSampler], done: list[bool],
               generated: list[int]) -> tuple[list[int], dict[int, Exception]]:
        return select_tokens(samplers, done, batch.logits, generated, sorted(self.eos_ids))

    def classify(self, rows: list[ClassificationRow]) -> list[ClassificationOutput]:
        self.classified.append(len(rows))
        outputs = []
        for row in rows:
            ids = [i for v in row.verbalizers.values() for i in v]
            if max(ids) >= VOCAB:
                raise IndexError(f"token {max(ids)} is outside the vocabulary")
            label = next(iter(row.verbalizers))
            outputs.append(ClassificationOutput(label=label, probabilities={label: 1.0}, usage=Usage.count(1, 0, 2)))
        return outputs

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


PROMPT = CachedPrompt(PromptKey("fake", 1, ""), torch.zeros((2, 8)))


def beyond(positions: int) -> None:
    """What a forward over more positions than the table holds does."""
    if positions > POSITIONS:
        raise IndexError("index out of range in self")


class UncheckedRunner(FakeRunner):
    """A runner whose admission check is skipped, as if a row had bypassed the edge and the engine."""

    def check_positions(self, virtual: int, inputs: int, new: int) -> None:
        pass


def row(inputs: int, new: int) -> GenerationRow:
    return GenerationRow(PROMPT, list(range(3, 3 + inputs)), GenerationParams(max_new_tokens=new))


def run(scheduler: Scheduler) -> None:
    while scheduler.has_work():
        scheduler.step()


def test_rows_get_their_own_tokens_and_leave_when_done() -> None:
    scheduler = Scheduler(LIMITS, FakeRunner())
    states = [scheduler.submit(row(inputs, new)) for inputs, new in [(1, 3), (5, 8), (2, 1), (7, 5), (4, 6)]]
    run(scheduler)
    for state in states:
        n = len(state.row.input_ids)
        assert state.generated == [1 + (n + k) % 50 for k in range(state.row.params.max_new_tokens)]
        assert state.finish_reason == "length"
    assert scheduler.batch is None and scheduler.running == []


def test_admission_is_fifo_within_the_token_budget() -> None:
    rows = [row(inputs, new) for inputs, new in [(3, 9), (1, 2), (6, 4), (2, 12), (5, 1), (1, 7)]]
    budget = max(2 + len(r.input_ids) + r.params.max_new_tokens for r in rows)
    runner = FakeRunner()
    scheduler = Scheduler(LIMITS.model_copy(update={"max_tokens_in_flight": budget}), runner)
    for r in rows:
        scheduler.submit(r)
    while scheduler.has_work():
        scheduler.step()
        assert sum(s.reserved_tokens for s in scheduler.running) <= budget
    assert [r for prefill in runner.prefills for r in prefill] == rows  # nobody overtook the head of the queue
    assert len(runner.prefills) > 2  # the budget really held rows back


def test_newcomers_join_a_running_batch_up_to_its_size() -> None:
    runner = FakeRunner()
    scheduler = Scheduler(LIMITS, runner)
    first = scheduler.submit(row(2, 20))
    scheduler.step()
    later = [scheduler.submit(row(3, 4)) for _ in range(5)]
    scheduler.step()
    assert scheduler.running == [first, *later[:3]]  # a batch of 4: three joined, two wait
    run(scheduler)
    assert [len(prefill) for prefill in runner.prefills] == [1, 3, 2]


def test_overload_and_oversized_requests_are_refused() -> None:
    scheduler = Scheduler(LIMITS.model_copy(update={"max_waiting": 2}), FakeRunner())
    scheduler.submit(row(2, 3))
    scheduler.submit(row(2, 3))
    with pytest.raises(OverloadedError, match="queue is full"):
        scheduler.submit(row(2, 3))
    tight = Scheduler(LIMITS.model_copy(update={"max_tokens_in_flight": 10}), FakeRunner())
    with pytest.raises(InvalidRequestError, match="needs 11 tokens of KV; the limit is 10"):
        tight.submit(row(4, 5))


def test_static_mode_admits_only_into_an_empty_batch() -> None:
    scheduler = Scheduler(LIMITS, FakeRunner(), static=True)
    first = scheduler.submit(row(2, 12))
    scheduler.step()
    second = scheduler.submit(row(2, 2))
    while scheduler.has_work():
        scheduler.step()
        assert not (first in scheduler.running and second in scheduler.running)
    assert second.first_token_at > first.finished_at


def test_a_cancelled_row_leaves_at_the_next_step() -> None:
    scheduler = Scheduler(LIMITS, FakeRunner())
    leaving, staying = scheduler.submit(row(2, 40)), scheduler.submit(row(3, 6))
    scheduler.step()
    leaving.cancel()
    scheduler.step()
    assert leaving.finish_reason == "cancelled" and scheduler.running == [staying]
    run(scheduler)
    assert len(staying.generated) == 6


def test_a_classification_with_a_bad_verbalizer_fails_alone() -> None:
    runner = FakeRunner()
    scheduler = Scheduler(LIMITS, runner)
    results: dict[str, object] = {}
    for name, verbalizers in [("good", {"yes": [5], "no": [6]}), ("bad", {"yes": [5], "no": [VOCAB + 9]}),
                              ("also good", {"a": [7, 8], "b": [9]})]:
        job = ClassificationJob([ClassificationRow(PROMPT, [3, 4], verbalizers)], lambda r, name=name: results.update({name: r}))
        scheduler.submit_classification(job)
    scheduler.step()
    assert isinstance(results["bad"], IndexError) and "outside the vocabulary" in str(results["bad"])
    assert [o.label for o in results["good"]] == ["yes"] and [o.label for o in results["also good"]] == ["a"]
    assert runner.classified == [3, 1, 1, 1]  # all together, then each alone after the failure


def alone(r: GenerationRow) -> list[int]:
    scheduler = Scheduler(LIMITS, FakeRunner())
    state = scheduler.submit(r)
    run(scheduler)
    return state.generated


def test_a_row_past_the_models_positions_fails_alone_at_admission() -> None:
    normal = [row(3, 10), row(6, 8), row(2, 12)]
    scheduler = Scheduler(LIMITS, FakeRunner())
    states = [scheduler.submit(r) for r in normal[:2]]
    overflow = scheduler.submit(row(20, 40))  # 2 virtual + 20 + 40 > 48 positions
    states.append(scheduler.submit(normal[2]))
    run(scheduler)
    assert isinstance(overflow.failure, PositionLimitError) and overflow.generated == []
    assert str(overflow.failure) == "virtual tokens (2) + input tokens (20) + max_new_tokens (40) = 62 exceed the model's 48 positions"
    assert not overflow.failure.version_caused  # 20 + 40 do not fit without the prompt either
    assert [s.generated for s in states] == [alone(r) for r in normal] and all(s.error is None for s in states)


def test_a_row_that_breaks_a_decode_step_fails_alone_and_its_neighbours_finish_unchanged() -> None:
    normal = [row(3, 20), row(6, 22), row(2, 24)]
    runner = UncheckedRunner()
    scheduler = Scheduler(LIMITS, runner)
    states = [scheduler.submit(r) for r in normal[:2]]
    overflow = scheduler.submit(row(30, 30))  # prefills (32 positions), then runs off the table while decoding
    states.append(scheduler.submit(normal[2]))
    run(scheduler)
    # its 17th token would be fed at position 48: the step fails, and prefilled alone again it fails again
    assert overflow.error == "index out of range in self" and len(overflow.generated) == POSITIONS - 31
    assert [s.generated for s in states] == [alone(r) for r in normal] and all(s.error is None for s in states)
    assert [len(p) for p in runner.prefills] == [4, 1, 1, 1, 1]  # together, then each row alone after the failed step


def test_a_row_whose_prefill_fails_fails_alone() -> None:
    normal = [row(3, 10), row(6, 8)]
    runner = UncheckedRunner()
    scheduler = Scheduler(LIMITS, runner)
    states = [scheduler.submit(normal[0]), scheduler.submit(row(50, 2)), scheduler.submit(normal[1])]
    run(scheduler)
    assert states[1].error == "index out of range in self"
    assert [states[0].generated, states[2].generated] == [alone(r) for r in normal]
    assert [len(p) for p in runner.prefills] == [3, 1, 1, 1]  # together, then each alone
