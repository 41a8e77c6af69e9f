"""Continuous batching: any interleaving gives each request what it gets alone."""

import asyncio
import random
from contextlib import aclosing

import pytest
from helpers import PROMPT_LENGTHS, fill_registry

from promptmux.core.fields import GenerationParams
from promptmux.serving.engine.async_engine import AsyncEngine
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.offline import generate
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import Scheduler

WORDS = ["dog", "groomer", "gentle", "rude", "great", "price", "logistician", "poet", "act", "as"]


@pytest.fixture(scope="module", params=[True, False], ids=["pinned-kv", "embedding"])
def engine(request, tmp_path_factory) -> Engine:
    registry = fill_registry(tmp_path_factory.mktemp("sched"), "tiny-random-llama")
    return Engine(EngineConfig(dtype="float32", pinned_kv=request.param, max_batch_size=4), registry.versions)


def random_rows(engine: Engine, rng: random.Random, count: int) -> list[GenerationRow]:
    rows = []
    for _ in range(count):
        task = rng.choice(list(PROMPT_LENGTHS))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        params = GenerationParams(
            max_new_tokens=rng.randint(1, 16),
            repetition_penalty=rng.choice([1.0, 1.0, 1.5]),
            temperature=rng.choice([0.0, 0.0, 0.8]),
            top_k=rng.choice([0, 20]),
            seed=rng.randint(0, 1000),
        )
        rows.append(GenerationRow(engine.prompt(engine.loader.latest(task)), engine.inputs.encode(text), params))
    return rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_interleavings_equal_each_request_alone(engine: Engine, seed: int) -> None:
    rng = random.Random(seed)
    rows = random_rows(engine, rng, 14)
    alone = [generate(engine, [row])[0] for row in rows]
    scheduler = Scheduler(engine.config, engine)
    pending, states, largest = list(rows), [], 0
    while pending or scheduler.has_work():
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            if pending:
                states.append(scheduler.submit(pending.pop(0)))
        scheduler.step()
        largest = max(largest, len(scheduler.running))
    assert largest == engine.config.max_batch_size  # rows really shared batches
    for state, expected in zip(states, alone):
        assert state.output().token_ids == expected.token_ids
        assert state.finish_reason == expected.finish_reason


def _stream_all(async_engine: AsyncEngine, row: GenerationRow) -> list:
    async def collect() -> list:
        return [event async for event in async_engine.submit(row)]

    return asyncio.run(collect())


def test_streaming_deltas_add_up_to_the_result(engine: Engine) -> None:
    async_engine = AsyncEngine(engine)
    try:
        rows = random_rows(engine, random.Random(4), 3)
        for row in rows:
            events = _stream_all(async_engine, row)
            final = events[-1]
            assert final.finish_reason in ("stop", "length") and final.output is not None
            assert "".join(e.text for e in events) == final.output.text
            assert [t for e in events for t in e.token_ids] == final.output.token_ids
            assert final.output.token_ids == generate(engine, [row])[0].token_ids
        free = generate(engine, [rows[0]])[0]
        stop = free.text[-1]
        rows[0].params = rows[0].params.model_copy(update={"stop": [stop], "temperature": 0.0})
        events = _stream_all(async_engine, rows[0])
        assert stop not in "".join(e.text for e in events) and events[-1].finish_reason == "stop"
    finally:
        async_engine.shutdown()


def test_cancelling_a_stream_frees_its_row(engine: Engine) -> None:
    async_engine = AsyncEngine(engine)
    long_params = GenerationParams(max_new_tokens=1000, min_new_tokens=1000)
    rows = random_rows(engine, random.Random(6), 2)
    leaving = GenerationRow(rows[0].prompt, rows[0].input_ids, long_params)
    staying = rows[1]

    async def scenario() -> None:
        other = asyncio.create_task(async_engine.generate(staying))
        async with aclosing(async_engine.submit(leaving)) as stream:
            async for _ in stream:
                state = next((s for s in async_engine.scheduler.running if s.row is leaving), None)
                if state is not None:
                    break
        for _ in range(500):
            if state.finish_reason:
                break
            await asyncio.sleep(0.01)
        assert state.finish_reason == "cancelled" and len(state.generated) < 1000
        assert state not in async_engine.scheduler.running
        assert (await other).token_ids == generate(engine, [staying])[0].token_ids

    try:
        asyncio.run(scenario())
        assert async_engine.scheduler.batch is None or async_engine.scheduler.batch.size == len(async_engine.scheduler.running)
    finally:
        async_engine.shutdown()
