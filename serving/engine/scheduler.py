"""Iteration-level scheduling over mixed-task batches (continuous batching).

At every step boundary the scheduler admits waiting requests (first come, first served
within each owner, fair across owners by weight: `waiting.py`; the request whose turn it
is is never skipped, so nothing starves) while the running rows and the tokens they may
hold stay within the limits, prefills the newcomers together and merges
them into the running decode batch, picks one token for every row, and lets finished or
cancelled rows leave at once. Past the waiting-queue bound a submit is refused.

`static=True` gives the classic baseline (what `model.generate` on a batch does): a batch
is admitted only into an empty engine and runs until its longest request ends, finished
rows still occupying their slots. Classification jobs ride the same loop, all pending ones in one
mixed batch, so the model is only ever driven from one thread.

A failure stays with the row that causes it. A row that would run past the model's
positions is refused at admission; a prefill that fails is retried row by row; after a
decode step fails, every row is prefilled again alone with the tokens it has so far (its
KV recomputed), so only a row that fails alone fails, and a rollout can charge the
failure to that row's variant (`docs/reliability.md`, "Whose failure is it").

The model is reached only through the `ModelRunner` protocol. Everything here is
synchronous; `async_engine` runs it on a thread and bridges events to asyncio, and
`offline.generate` runs it to completion.
"""

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from promptmux.core.errors import InvalidRequestError, OverloadedError
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.outputs import ClassificationOutput
from promptmux.serving.engine.protocol import ModelRunner, RunningBatch
from promptmux.serving.engine.sequence import Sequence, StreamEvent
from promptmux.serving.engine.waiting import WaitingQueue


@dataclass(eq=False)
class ClassificationJob:
    rows: list[ClassificationRow]
    on_done: Callable[[list[ClassificationOutput] | Exception], None]


class Scheduler:
    def __init__(
        self,
        limits: EngineConfig,
        runner: ModelRunner,
        static: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.runner = runner
        self.static = static
        self.limits = limits
        self.on_step = on_step
        self.waiting = WaitingQueue(fair=limits.fair_admission)
        self.jobs: deque[ClassificationJob] = deque()
        self.running: list[Sequence] = []
        self.batch: RunningBatch | None = None
        self.steps = 0
        self.last_admission_step = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------ submitting
    def submit(
        self, row: GenerationRow, on_event: Callable[[StreamEvent], None] | None = None, stream: bool = True
    ) -> Sequence:
        """Queue a request. `on_event` gets every delta when `stream`, else only the final event.
        Its parameters were checked where it was prepared; only the engine's limits are checked here."""
        state = Sequence(row, self.runner.decode, on_event, stream, submitted_step=self.steps)
        if state.reserved_tokens > self.limits.max_tokens_in_flight:
            raise InvalidRequestError(
                f"request needs {state.reserved_tokens} tokens of KV; the limit is {self.limits.max_tokens_in_flight}"
            )
        with self._lock:
            if len(self.waiting) >= self.limits.max_waiting:
                raise OverloadedError(f"the engine's queue is full ({self.limits.max_waiting} waiting); retry later")
            self.waiting.append(state)
        return state

    def submit_classification(self, job: ClassificationJob) -> None:
        with self._lock:
            self.jobs.append(job)

    def has_work(self) -> bool:
        return bool(self.running or self.waiting or self.jobs)

    def _admit(self) -> list[Sequence]:
        with self._lock:
            if self.running and (self.static or not self._admission_due()):
                return []
            in_flight = sum(state.reserved_tokens for state in self.running)
            admitted: list[Sequence] = []
            while len(self.running) + len(admitted) < self.limits.max_batch_size:
                head = self.waiting.peek()
                if head is None or in_flight + head.reserved_tokens > self.limits.max_tokens_in_flight:
                    break
                in_flight += head.reserved_tokens
                head.admitted_at = time.monotonic()
                admitted.append(self.waiting.pop())
            if admitted:
                self.last_admission_step = self.steps
            return admitted

    def _admission_due(self) -> bool:
        """Prefill newcomers in groups: each prefill is a forward that reads every weight, so
        while rows are decoding, wait until `admit_fraction` of the batch is free (or all
        that wait fit),
        but never more than `max_admission_wait_steps` steps after the last admission (TGI's
        waiting-tokens rule)."""
        if not self.waiting:
            return False
        free = self.limits.max_batch_size - len(self.running)
        group = math.ceil(self.limits.admit_fraction * self.limits.max_batch_size)
        waited = self.steps - max(self.waiting.oldest().submitted_step, self.last_admission_step)
        return free >= min(group, len(self.waiting)) or waited >= self.limits.max_admission_wait_steps

    # --------------------------------------------------------------- running
    def step(self) -> None:
        """One iteration: classification jobs, admissions, one token for every running row."""
        self._run_jobs()
        newcomers = self._admit()
        if newcomers:
            self._prefill(newcomers)
        if not self.running:
            return
        try:
            self._decode()
        except Exception as exc:  # a failed forward fails the rows that fail alone, never the loop
            self._recover(exc)

    def _run_jobs(self) -> None:
        with self._lock:
            jobs, self.jobs = list(self.jobs), deque()
        if not jobs:
            return
        try:
            outputs = self.runner.classify([row for job in jobs for row in job.rows])
        except Exception as exc:  # handed to the request; with others beside it, each runs alone
            if len(jobs) == 1:
                jobs[0].on_done(exc)
                return
            for job in jobs:
                self._run_alone(job)
            return
        for job in jobs:
            job.on_done(outputs[: len(job.rows)])
            outputs = outputs[len(job.rows):]

    def _run_alone(self, job: ClassificationJob) -> None:
        """Run one classification job by itself, so that a failure is its own."""
        try:
            outputs = self.runner.classify(job.rows)
        except Exception as exc:  # handed to the request
            job.on_done(exc)
            return
        job.on_done(outputs)

    def _prefill(self, newcomers: list[Sequence]) -> None:
        """Prefill the newcomers together and add them to the running batch. A row past the
        model's positions, or whose sampler cannot be built, fails before the forward; if the
        forward fails, each row is prefilled alone, so only a row that fails alone fails."""
        ready = []
        for state in newcomers:
            row = state.row
            try:
                self.runner.check_positions(row.prompt.num_virtual_tokens, len(row.input_ids), row.params.max_new_tokens)
                state.start(self.runner.device)
                ready.append(state)
            except Exception as exc:  # handed to the request
                self._fail([state], exc)
        if not ready:
            return
        try:
            fresh = self.runner.prefill([state.row for state in ready])
        except Exception as exc:  # handed to the request when it is alone; else each row is tried alone
            if len(ready) == 1:
                self._fail(ready, exc)
                return
            for state in ready:
                self._join(state, state.row)
            return
        self._add(ready, fresh)

    def _join(self, state: Sequence, row: GenerationRow) -> None:
        """Prefill one row by itself into the running batch; its failure is its own."""
        try:
            fresh = self.runner.prefill([row])
        except Exception as exc:  # handed to the request
            self._fail([state], exc)
            return
        self._add([state], fresh)

    def _add(self, states: list[Sequence], fresh: RunningBatch) -> None:
        if self.batch is None:
            self.batch = fresh
        else:
            self.batch.merge(fresh)
        self.running += states

    def _recover(self, exc: Exception) -> None:
        """After a decode step failed, rebuild the batch row by row: each unfinished row is
        prefilled alone with the tokens it has generated so far (its KV recomputed), so a row
        that fails alone fails with its own error and the rows beside it go on. A lone row,
        or a static batch (the baseline), fails as it is."""
        states = [state for state in self.running if not state.done]
        self._drop_batch()
        if len(states) <= 1 or self.static:
            self._fail(states, exc)
            return
        for state in states:
            self._join(state, replace(state.row, input_ids=state.row.input_ids + state.generated))

    @torch.inference_mode()
    def _decode(self) -> None:
        self.steps += 1
        states, batch = self.running, self.batch
        if self.on_step is not None:
            self.on_step(len(states))
        tokens, failures = self.runner.sample(batch, [s.sampler for s in states], [s.done for s in states],
                                              [len(s.generated) for s in states])
        for j, exc in failures.items():
            self._fail([states[j]], exc)
        keep = [j for j, (state, token) in enumerate(zip(states, tokens))
                if not state.done and not self._accept_alone(state, token, batch.logits[j])]
        if not keep:
            self._drop_batch()
            return
        if self.static:
            # the classic baseline: finished rows stay in the batch, decoding padding,
            # until its longest request ends
            last = [s.generated[-1] if j in keep else self.runner.pad_id for j, s in enumerate(states)]
        else:
            if len(keep) < len(states):
                self.running = [states[j] for j in keep]
                batch.keep(keep)
            last = [s.generated[-1] for s in self.running]
        self.runner.decode_step(batch, torch.tensor(last, device=self.runner.device))

    def _accept_alone(self, state: Sequence, token: int, logits: torch.Tensor) -> bool:
        """The row's `accept`, failing only this row if recording its token fails."""
        try:
            return state.accept(token, logits, self.runner.eos_ids)
        except Exception as exc:  # the row fails alone
            self._fail([state], exc)
            return True

    def fail_everything(self, exc: Exception) -> None:
        """Fail every request the loop holds: running, waiting and classification jobs."""
        self.fail_running(exc)
        with self._lock:
            waiting, jobs, self.jobs = self.waiting.drain(), list(self.jobs), deque()
        self._fail(waiting, exc)
        for job in jobs:
            job.on_done(exc)

    def fail_running(self, exc: Exception) -> None:
        """Fail every running row and drop the decode batch (after an unexpected error in a step)."""
        self._fail([state for state in self.running if not state.done], exc)
        self._drop_batch()

    def _drop_batch(self) -> None:
        """End the running batch: its rows give their KV memory back."""
        if self.batch is not None:
            self.batch.release()
        self.running, self.batch = [], None

    def _fail(self, states: list[Sequence], exc: Exception) -> None:
        for state in states:
            state.fail(exc)
