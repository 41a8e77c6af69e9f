"""Several processes writing one task at once, and writers killed mid-write."""

import json
import os
import random
import time
from pathlib import Path

import torch
from writers import PROCESSES, Writer, edit_aliases

from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry import Registry, TaskSpec


def _shared_task(tmp_path: Path, fp: BaseModelFingerprint) -> Registry:
    registry = Registry(str(tmp_path / "registry"))
    registry.tasks.create(TaskSpec(name="shared", base_model="tiny-random-llama"), fp)
    return registry


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path, llama_fp: BaseModelFingerprint) -> None:
    registry = _shared_task(tmp_path, llama_fp)
    writers = [Writer(registry.uri, llama_fp, 25, seed) for seed in range(8)]
    claimed = [version for writer in writers for version in writer.versions()]
    assert sorted(claimed) == list(range(1, 201))
    versions = registry.versions.all("shared")
    assert [v.version for v in versions] == list(range(1, 201))
    assert sorted(v.note for v in versions) == sorted(f"{s}-{i}" for s in range(8) for i in range(25))
    results = registry.verify("shared")
    assert len(results) == 200 and all(r.ok for r in results)


def test_killed_writers_leave_no_partial_state(tmp_path: Path, llama_fp: BaseModelFingerprint) -> None:
    """A writer killed anywhere leaves either nothing or an edit that `verify` names as half-done
    and `verify --repair` finishes: each alias move then is in the history exactly once."""
    registry = _shared_task(tmp_path, llama_fp)
    rng = random.Random(0)
    for round_ in range(6):
        writer = Writer(registry.uri, llama_fp, 10_000, round_, edit_between=True)
        assert writer.ready()
        time.sleep(rng.uniform(0.05, 0.4))
        writer.kill()
        problems = [r.problem for r in registry.verify() if not r.ok]
        assert all(p.startswith("half-done edit") for p in problems), problems
        assert all(r.ok for r in registry.verify(repair=True)) and all(r.ok for r in registry.verify())
        moves = [c.details["version"] for c in registry.history("shared") if c.action == "alias"]
        assert moves == sorted(set(moves)), moves  # rising, none twice
        assert registry.aliases.of("shared").get("production", moves[-1] if moves else None) == (moves[-1] if moves else None)
        latest = registry.versions.latest("shared").version
        assert registry.aliases.of("shared")["production"] <= latest
        assert json.loads(registry.rollouts.get("shared").model_dump_json())["variants"][0]["version"] <= latest
    assert registry.versions.register("shared", torch.zeros(2, llama_fp.hidden_size), llama_fp).version == latest + 1


def test_concurrent_alias_and_rollout_edits_lose_nothing(tmp_path: Path, llama_fp: BaseModelFingerprint) -> None:
    registry = _shared_task(tmp_path, llama_fp)
    for seed in range(3):
        registry.versions.register("shared", torch.randn(4, llama_fp.hidden_size, generator=torch.Generator().manual_seed(seed)),
                          llama_fp)
    editors = [PROCESSES.Process(target=edit_aliases, args=(registry.uri, w)) for w in range(6)]
    for editor in editors:
        editor.start()
    for editor in editors:
        editor.join(300)
        assert editor.exitcode == 0
    aliases = registry.aliases.of("shared")
    assert aliases == {f"w{w}-a{j}": 1 + (w + j) % 3 for w in range(6) for j in range(5)}
    (variant,) = registry.rollouts.get("shared").variants
    assert (variant.version, variant.weight) in {(1 + w % 3, w + 1) for w in range(6)}
    assert all(result.ok for result in registry.verify())


def test_gc_removes_only_stale_leftovers_anywhere(cli, tmp_path: Path, llama_fp: BaseModelFingerprint) -> None:
    registry = _shared_task(tmp_path, llama_fp)
    registry.versions.register("shared", torch.zeros(2, llama_fp.hidden_size), llama_fp)
    staging = Path(registry.uri) / ".staging"
    old, fresh = staging / "dead-writer", staging / "busy-writer"
    for leftover in (old, fresh):
        leftover.mkdir(parents=True)
        (leftover / "adapter_model.safetensors").write_bytes(b"partial")
    hours_ago = time.time() - 7200
    os.utime(old, (hours_ago, hours_ago))
    temporary = [Path(registry.uri) / "tasks" / "shared" / "history" / f".{name}.{'a' * 32}.tmp" for name in ("x", "y")]
    for leftover in temporary:
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"{")
    os.utime(temporary[0], (hours_ago, hours_ago))
    result = cli("registry", "gc", "--registry", registry.uri)
    assert result.code == 0 and "removed 2 stale leftovers" in result.out
    assert not old.exists() and fresh.exists() and not temporary[0].exists() and temporary[1].exists()
    assert [v.version for v in registry.versions.all("shared")] == [1]
