"""Several processes writing one task at once, and writers killed mid-write."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from promptmux.registry import BaseModelFingerprint, Registry, TaskSpec

WRITER = """
import json, sys, torch
from promptmux.registry import BaseModelFingerprint, Registry, RolloutSpec, RolloutVariant
import peft, promptmux.registry.artifact  # loaded on first write otherwise: "ready" means about to write
uri, fp, count, seed = sys.argv[1], BaseModelFingerprint.model_validate_json(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
registry = Registry(uri)
generator = torch.Generator().manual_seed(seed)
print("ready", flush=True)
for i in range(count):
    manifest = registry.versions.register("shared", torch.randn(8, fp.hidden_size, generator=generator), fp, note=f"{seed}-{i}")
    print(manifest.version, flush=True)
    if seed < 0:  # the crash test also edits aliases and rollouts between writes
        registry.aliases.set("shared", "production", manifest.version)
        registry.rollouts.set("shared", RolloutSpec(variants=[RolloutVariant(version=manifest.version, weight=1)]))
"""


def _writer(uri: str, fp: BaseModelFingerprint, count: int, seed: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, uri, fp.model_dump_json(), str(count), str(seed)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _shared_task(tmp_path: Path, fp: BaseModelFingerprint) -> Registry:
    registry = Registry(str(tmp_path / "registry"))
    registry.tasks.create(TaskSpec(name="shared", base_model="tiny-random-llama"), fp)
    return registry


def test_concurrent_registrations_get_distinct_versions(tmp_path: Path, llama_fp: BaseModelFingerprint) -> None:
    registry = _shared_task(tmp_path, llama_fp)
    writers = [_writer(registry.uri, llama_fp, 25, seed) for seed in range(8)]
    claimed: list[int] = []
    for writer in writers:
        out, err = writer.communicate(timeout=600)
        assert writer.returncode == 0, err
        claimed += [int(line) for line in out.split()[1:]]
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
        writer = _writer(registry.uri, llama_fp, 10_000, -1 - round_)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
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


EDITOR = """
import sys
from promptmux.registry import Registry, RolloutSpec, RolloutVariant
registry, worker = Registry(sys.argv[1]), int(sys.argv[2])
for j in range(5):
    registry.aliases.set("shared", f"w{worker}-a{j}", 1 + (worker + j) % 3)
    registry.rollouts.set("shared", RolloutSpec(variants=[RolloutVariant(version=1 + worker % 3, weight=worker + 1)]))
"""


def test_concurrent_alias_and_rollout_edits_lose_nothing(tmp_path: Path, llama_fp: BaseModelFingerprint) -> None:
    registry = _shared_task(tmp_path, llama_fp)
    for seed in range(3):
        registry.versions.register("shared", torch.randn(4, llama_fp.hidden_size, generator=torch.Generator().manual_seed(seed)),
                          llama_fp)
    editors = [subprocess.Popen([sys.executable, "-c", EDITOR, registry.uri, str(w)], stderr=subprocess.PIPE, text=True)
               for w in range(6)]
    for editor in editors:
        assert editor.wait(timeout=300) == 0, editor.stderr.read()
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
