"""The KV pool: rows of every method and length join and leave in any order, each getting what
it gets alone, without moving another row's keys and values, and give everything back."""

import logging
import random
from pathlib import Path

import pytest
import torch

from promptmux.core.errors import InvalidRequestError
from promptmux.core.fields import GenerationParams
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.bench.common import METHODS, random_prompt
from promptmux.serving.engine.batching import GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.kv_pool import BLOCK
from promptmux.serving.engine.offline import generate, run
from promptmux.serving.engine.runner import Engine
from promptmux.serving.engine.scheduler import Scheduler

BASE = "tiny-random-llama"
LENGTHS = (3, BLOCK - 1, BLOCK, BLOCK + 5)  # virtual tokens: a block part full, full, and spilling into the next


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """One task per PEFT method, with a version of each length in LENGTHS."""
    registry = Registry(str(tmp_path_factory.mktemp("pool") / "registry"))
    fp = fingerprint(load_model(BASE, dtype="float32"))
    generator = torch.Generator().manual_seed(5)
    for method in METHODS:
        registry.tasks.create(TaskSpec(name=method.replace("_", "-"), base_model=BASE), fp)
        for n in LENGTHS:
            registry.versions.register(method.replace("_", "-"), random_prompt(method, fp, n, generator), fp)
    return registry


@pytest.fixture(scope="module")
def engine(registry: Registry) -> Engine:
    engine = Engine(EngineConfig(base_model=BASE, dtype="float32", max_batch_size=6, cpu_threads=1), registry.versions)
    assert engine.kv_pool is not None
    return engine


def random_row(engine: Engine, registry: Registry, rng: random.Random) -> GenerationRow:
    task = rng.choice(METHODS).replace("_", "-")
    new = rng.randint(1, 3 * BLOCK)
    params = GenerationParams(max_new_tokens=new, min_new_tokens=min(new, rng.choice([0, 0, 5])),
                              repetition_penalty=rng.choice([1.0, 1.0, 1.4]), temperature=rng.choice([0.0, 0.0, 0.9]),
                              seed=rng.randint(0, 99))
    ids = [rng.randint(3, 250) for _ in range(rng.randint(1, 2 * BLOCK + 3))]
    return GenerationRow(engine.prompt(registry.versions.get(task, rng.randint(1, len(LENGTHS)))), ids, params)


def held(engine: Engine) -> tuple[int, int]:
    stats = engine.kv_stats()
    return stats.blocks_held, stats.tokens_held


def test_rows_joining_and_leaving_at_random_for_500_steps_get_what_they_get_alone_and_leave_nothing(
        engine: Engine, registry: Registry) -> None:
    rng = random.Random(7)
    rows = [random_row(engine, registry, rng) for _ in range(140)]
    alone = [generate(engine, [row])[0].token_ids for row in rows]
    scheduler = Scheduler(engine.config.model_copy(update={"max_waiting": len(rows)}), engine)
    pending, states, cancelled, largest = list(rows), [], set(), 0
    while pending or scheduler.has_work():
        for _ in range(rng.choice([0, 0, 0, 1, 2, 3])):
            if pending:
                states.append(scheduler.submit(pending.pop(0)))
        running = [s for s in scheduler.running if not s.done]
        if running and rng.random() < 0.03:  # a client goes away mid-generation
            victim = rng.choice(running)
            victim.cancel()
            cancelled.add(id(victim))
        scheduler.step()
        largest = max(largest, len(scheduler.running))
        if scheduler.batch is not None:  # the pool holds exactly the running rows' blocks and tokens
            positions, tokens = scheduler.batch.kv_held()
            assert held(engine) == (positions // BLOCK, tokens)
    assert scheduler.steps >= 500 and largest == engine.config.max_batch_size and len(cancelled) >= 3
    for state, expected in zip(states, alone):
        if id(state) in cancelled:
            assert expected[: len(state.generated)] == state.generated
        else:
            assert state.generated == expected and state.finish_reason in ("stop", "length")
    assert held(engine) == (0, 0)
    assert sorted(engine.kv_pool._free_slots) == list(range(engine.kv_pool.slots))


def test_a_row_that_joins_and_leaves_moves_nothing_of_a_running_row(engine: Engine, registry: Registry) -> None:
    pool = engine.kv_pool
    first = GenerationRow(engine.prompt(registry.versions.get("prefix-tuning", 4)), list(range(3, 40)),
                          GenerationParams(max_new_tokens=64))
    batch = engine.prefill([first])
    for _ in range(5):
        engine.decode_step(batch, batch.logits.argmax(-1))
    row = batch.rows[0]
    blocks = list(row.blocks)
    index = torch.tensor(blocks)
    before = [(pool.keys[layer][index].clone(), pool.values[layer][index].clone()) for layer in range(len(pool.keys))]
    newcomer = engine.prefill([GenerationRow(engine.prompt(registry.versions.get("p-tuning", 2)), list(range(5, 60)),
                                             GenerationParams(max_new_tokens=64))])
    batch.merge(newcomer)
    for _ in range(3):
        engine.decode_step(batch, batch.logits.argmax(-1))
    batch.keep([0])  # the newcomer leaves
    assert row.blocks[: len(blocks)] == blocks
    written = row.length - 3  # the three steps since only appended to the first row's own blocks
    for layer, (keys, values) in enumerate(before):
        now_keys, now_values = pool.keys[layer][index], pool.values[layer][index]
        for t in range(written):
            block, offset = divmod(t, BLOCK)
            assert torch.equal(now_keys[block, :, offset], keys[block, :, offset]), (layer, t)
            assert torch.equal(now_values[block, :, offset], values[block, :, offset]), (layer, t)
    batch.release()
    assert held(engine) == (0, 0)


def test_whatever_a_former_holder_left_in_a_block_reaches_no_row(engine: Engine, registry: Registry) -> None:
    """A block is zeroed when a row takes it, and blocks nobody holds are summed into a row that
    is dropped: poison every block now free, and rows decode exactly as before."""
    rows = [GenerationRow(engine.prompt(registry.versions.get(task, 4)), list(range(3, 3 + n)),
                          GenerationParams(max_new_tokens=BLOCK + 3)) for task, n in (("prompt-tuning", 9), ("prefix-tuning", 30))]
    expected = [o.token_ids for o in generate(engine, rows)]
    pool = engine.kv_pool
    free = torch.tensor(sorted(pool._free_blocks))
    for keys, values in zip(pool.keys, pool.values):
        keys[free] = float("nan")
        values[free] = float("inf")
    assert [o.token_ids for o in generate(engine, rows)] == expected
    assert [o.token_ids for o in generate(engine, rows[:1])] == expected[:1]  # beside blocks the other row left


def test_the_pool_is_sized_by_memory_and_a_row_that_cannot_fit_is_refused_with_the_numbers(registry: Registry) -> None:
    engine = Engine(EngineConfig(base_model=BASE, dtype="float32", kv_cache_mb=0.25, max_batch_size=4), registry.versions)
    pool, per_token = engine.kv_pool, engine.kv_pool.layout.bytes_per_token
    assert engine.config.max_tokens_in_flight == pool.capacity_tokens <= 0.25 * 2**20 // per_token
    prompt = engine.prompt(registry.versions.get("prompt-tuning", 1))
    too_long = GenerationRow(prompt, list(range(3, 60)), GenerationParams(max_new_tokens=pool.capacity_tokens))
    with pytest.raises(InvalidRequestError, match=f"the limit is {pool.capacity_tokens}"):
        Scheduler(engine.config, engine).submit(too_long)
    # rows that together need more than the pool wait for each other, and all finish
    rows = [GenerationRow(prompt, list(range(3, 30)), GenerationParams(max_new_tokens=pool.capacity_tokens // 3))
            for _ in range(4)]
    outputs = run(engine, rows)
    assert all(len(o.token_ids) > 0 for o in outputs if not isinstance(o, Exception))
    assert not any(isinstance(o, Exception) for o in outputs)
    assert held(engine) == (0, 0)


@pytest.mark.parametrize("base_model", ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-granite",
                                        "tiny-random-qwen2", "tiny-random-gpt-neox", "tiny-random-bloom"])
def test_every_architecture_decodes_through_the_pool_or_says_why_not(base_model: str, tmp_path: Path, caplog) -> None:
    registry = Registry(str(tmp_path / "registry"))
    fp = fingerprint(load_model(base_model, dtype="float32"))
    registry.tasks.create(TaskSpec(name="t", base_model=base_model), fp)
    registry.versions.register("t", torch.randn(BLOCK + 2, fp.hidden_size, generator=torch.Generator().manual_seed(1)), fp)
    with caplog.at_level(logging.WARNING, logger="promptmux.serving.engine.runner"):
        pooled = Engine(EngineConfig(base_model=base_model, dtype="float32"), registry.versions)
    flat = Engine(EngineConfig(base_model=base_model, dtype="float32", kv_pool=False), registry.versions)
    if base_model == "tiny-random-bloom":  # ALiBi computed in its own attention, not through AttentionInterface
        assert pooled.kv_pool is None and "decoding without the KV pool" in caplog.text
    else:
        assert pooled.kv_pool is not None and not caplog.text
    params = GenerationParams(max_new_tokens=2 * BLOCK, min_new_tokens=2 * BLOCK)
    rows = [GenerationRow(pooled.prompt(registry.versions.get("t", 1)), list(range(3, 3 + n)), params) for n in (2, 19, 40)]
    assert [o.token_ids for o in generate(pooled, rows)] == [o.token_ids for o in generate(flat, rows)]
