"""Decisions and registry edits survive a killed writer and a full disk.

* The controller's decision step is SIGKILLed at random moments, over and over, each time
  followed by a restarted controller: no decision is lost, none is applied twice, no split
  is left frozen.
* Every registry edit is failed at every write it makes (a storage that refuses its k-th
  write with ENOSPC): afterwards it either changed nothing, or it is recorded as half-done,
  `verify` says so, and `verify --repair` finishes it into exactly the state a clean edit
  gives. The error is one line that says which.
* On a real full filesystem (a small tmpfs, where the test may mount one) the CLI answers
  every edit with one line and loses nothing.
"""

import errno
import functools
import multiprocessing
import os
import random
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from promptmux.core.errors import StorageError
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec
from promptmux.registry.policy import Outcome, RolloutPolicy
from promptmux.registry.storage import LocalStorage
from promptmux.serving.rollouts.controller import RolloutController
from promptmux.serving.rollouts.loop import OutcomeLog, advance

BASE = "tiny-random-llama"
TRIALS = 120


def reviews_registry(path: Path) -> Registry:
    registry = Registry(str(path))
    registry.tasks.create(TaskSpec(name="reviews", kind="classification", labels={"0": "no", "1": "yes"},
                                  base_model=BASE), fp())
    for seed in range(3):
        registry.versions.register("reviews", torch.randn(4, fp().hidden_size, generator=torch.Generator().manual_seed(seed)), fp())
    registry.aliases.set("reviews", "production", 1)
    return registry


def due(path: Path, scenario: str) -> Registry:
    """A registry whose automatic rollout has a decision due: `end` (the candidate is clearly
    better: promote) or `step` (enough candidate outcomes at 5%, nothing decided yet)."""
    registry = reviews_registry(path)
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2, steps=[5, 25, 50], min_samples_per_step=20))
    experiment = registry.rollouts.policy("reviews").experiment
    rates = {"end": {"control": 0.3, "candidate": 0.95}, "step": {"control": 0.7, "candidate": 0.7}}[scenario]
    rng = random.Random(scenario)
    for i in range(80 if scenario == "end" else 25):
        for variant, version in (("control", 1), ("candidate", 2)):
            registry.outcomes.record(Outcome(id=f"{variant}-{i}", task="reviews", version=version, variant=variant,
                                            experiment=experiment, score=float(rng.random() < rates[variant])))
    return registry


def decide_once(uri: str) -> None:
    registry = Registry(uri)
    advance(registry, OutcomeLog(registry, "reviews"))


def after_kill(registry: Registry, experiment: str) -> str:
    """Where the decision step was when it died."""
    if registry.journal.pending():
        return "half-applied"
    decided = registry.storage.listdir("tasks/reviews/decisions")
    if not decided:
        return "not yet decided"
    policy = registry.rollouts.policy("reviews")
    return "decided, not applied" if policy is not None and policy.step == 0 else "applied"


def check_decided(registry: Registry, scenario: str) -> None:
    history = Counter((c.actor, c.action) for c in registry.history("reviews"))
    assert not registry.journal.pending() and all(r.ok for r in registry.verify())
    if scenario == "end":
        assert registry.rollouts.policy("reviews") is None and registry.rollouts.get("reviews") is None  # no frozen split
        assert registry.aliases.of("reviews")["production"] == 2
        assert history[("controller", "promote")] == 1 and history[("controller", "alias")] == 1
    else:
        policy, rollout = registry.rollouts.policy("reviews"), registry.rollouts.get("reviews")
        assert policy.step == 1 and {v.name: v.weight for v in rollout.variants} == {"control": 75, "candidate": 25}
        assert rollout.experiment == policy.experiment and history[("controller", "step")] == 1
    assert sum(count for (actor, _), count in history.items() if actor == "controller") == (2 if scenario == "end" else 1)


def test_a_controller_killed_at_any_moment_loses_no_decision_and_applies_none_twice(tmp_path: Path) -> None:
    fork = multiprocessing.get_context("fork")
    templates = {scenario: due(tmp_path / f"template-{scenario}", scenario) for scenario in ("end", "step")}
    durations = {}
    for scenario, template in templates.items():  # how long an undisturbed decision step takes, fork included
        probe = Registry(str(shutil.copytree(template.uri, tmp_path / f"probe-{scenario}")))
        started = time.monotonic()
        child = fork.Process(target=decide_once, args=(probe.uri,))
        child.start()
        child.join()
        durations[scenario] = time.monotonic() - started
        check_decided(probe, scenario)
    rng, seen = random.Random(21), Counter()
    for trial in range(TRIALS):
        scenario = ("end", "step")[trial % 2]
        registry = Registry(str(shutil.copytree(templates[scenario].uri, tmp_path / f"trial-{trial}")))
        experiment = registry.rollouts.policy("reviews").experiment
        child = fork.Process(target=decide_once, args=(registry.uri,))
        child.start()
        time.sleep(rng.uniform(0, 1.1 * durations[scenario]))
        child.kill()
        child.join()
        seen[after_kill(registry, experiment)] += 1
        RolloutController(Registry(registry.uri), interval_s=1.0).run_once()  # the restart
        check_decided(registry, scenario)
        shutil.rmtree(registry.uri)
    print(f"\n{TRIALS} kills during the decision step, then a restart each: {dict(seen)}")
    assert len(seen) >= 3, seen  # the kills landed before, inside and after the decision


class FullAfter(LocalStorage):
    """A local disk that refuses its k-th write (and every one after) as a full disk would."""

    def __init__(self, storage: LocalStorage, fail_at: int | None) -> None:
        super().__init__(storage.fs, storage.root, storage.uri)
        self.fail_at, self.writes = fail_at, 0

    def _count(self) -> None:
        self.writes += 1
        if self.fail_at is not None and self.writes >= self.fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")

    def write_bytes(self, rel: str, data: bytes, private: bool = False) -> None:
        self._count()
        super().write_bytes(rel, data, private)

    def create(self, rel: str, data: bytes) -> bool:
        self._count()
        return super().create(rel, data)

    def publish_dir(self, rel: str, files: dict[str, bytes]) -> bool:
        self._count()
        return super().publish_dir(rel, files)


def snapshot(registry: Registry) -> dict:
    """What readers see of the registry: every task's versions, aliases, rollout, policy, history."""
    state = {}
    for name in registry.tasks.names():
        policy, rollout = registry.rollouts.policy(name), registry.rollouts.get(name)
        state[name] = {
            "versions": registry.versions.numbers(name), "archived": registry.versions.archived(name),
            "aliases": registry.aliases.of(name), "policy": policy.step if policy else None,
            "rollout": [(v.name, v.version, v.weight) for v in rollout.variants] if rollout else None,
            "history": [(c.actor, c.action, c.details) for c in registry.history(name)],
            "outcomes": len(registry.outcomes.names(name)),
        }
    state[":tenants"] = [(t.name, t.tasks, t.revoked_at is not None) for t in registry.tenants.all()]
    return state


def on(registry: Registry, fail_at: int | None) -> Registry:
    return Registry(storage=FullAfter(registry.storage, fail_at))


@functools.cache
def fp() -> BaseModelFingerprint:
    return fingerprint(load_model(BASE, dtype="float32"))


EDITS: dict[str, tuple[str, Callable[[Registry], object]]] = {  # name: (the registry it starts from, the edit)
    "create task": ("plain", lambda r: r.tasks.create(TaskSpec(name="fresh", base_model=BASE), fp())),
    "register": ("plain", lambda r: r.versions.register("reviews", torch.ones(3, 128), fp())),
    "archive": ("plain", lambda r: r.archive("reviews", 3)),
    "move an alias": ("plain", lambda r: r.aliases.set("reviews", "production", 2)),
    "new alias": ("plain", lambda r: r.aliases.set("reviews", "staging", 3)),
    "delete an alias": ("plain", lambda r: r.aliases.delete("reviews", "production")),
    "set a rollout": ("plain", lambda r: r.rollouts.set("reviews", RolloutSpec(variants=[
        RolloutVariant(version=1, weight=90), RolloutVariant(version=2, weight=10)]))),
    "start an automatic rollout": ("plain", lambda r: r.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2))),
    "clear a rollout": ("end", lambda r: r.rollouts.clear("reviews")),
    "a step decision": ("step", lambda r: advance(r, OutcomeLog(r, "reviews"))),
    "an end decision": ("end", lambda r: advance(r, OutcomeLog(r, "reviews"))),
    "feedback": ("plain", lambda r: r.outcomes.record(Outcome(id="x", task="reviews", version=1, variant="v1", score=1.0))),
    "add a tenant": ("tenants", lambda r: r.tenants.add("team-c", ["reviews"])),
    "add a revoked tenant again": ("tenants", lambda r: r.tenants.add("team-b", ["rev*"])),
    "revoke a tenant": ("tenants", lambda r: r.tenants.revoke("team-a")),
}


@pytest.fixture(scope="module")
def starts(tmp_path_factory) -> dict[str, Registry]:
    root = tmp_path_factory.mktemp("starts")
    with_tenants = reviews_registry(root / "tenants")
    for name in ("team-a", "team-b"):
        with_tenants.tenants.add(name, ["reviews"])
    with_tenants.tenants.revoke("team-b")
    return {"plain": reviews_registry(root / "plain"), "end": due(root / "end", "end"), "step": due(root / "step", "step"),
            "tenants": with_tenants}


@pytest.mark.parametrize("edit", list(EDITS))
def test_an_edit_failed_at_any_write_changes_nothing_or_is_finished_by_repair(edit: str, starts, tmp_path: Path) -> None:
    start, apply = EDITS[edit]
    clean = Registry(str(shutil.copytree(starts[start].uri, tmp_path / "clean")))
    before, counting = snapshot(clean), on(clean, None)
    apply(counting)
    after, writes = snapshot(clean), counting.storage.writes
    assert before != after and writes >= 1
    outcomes = Counter()
    for k in range(1, writes + 1):
        registry = Registry(str(shutil.copytree(starts[start].uri, tmp_path / f"failed-at-{k}")))
        told = registry.feed.tail()
        with pytest.raises(StorageError) as failure:
            apply(on(registry, k))
        message = str(failure.value)
        assert "\n" not in message and "No space left on device" in message, message
        if "will be finished by the next edit" not in message:  # "nothing changed" or "nothing was registered"
            assert "nothing" in message and snapshot(registry) == before and not registry.journal.pending(), (k, message)
            outcomes["nothing changed"] += 1
            continue
        problems = [r.problem for r in registry.verify() if not r.ok]
        assert problems and all(p.startswith("half-done edit") for p in problems), problems
        assert all(r.ok for r in registry.verify(repair=True)) and all(r.ok for r in registry.verify())
        assert snapshot(registry) == after, k  # exactly the clean edit: no entry missing, none twice
        assert registry.feed.tail() > told  # and the servers are told
        outcomes["finished by repair"] += 1
    print(f"\n{edit}: {writes} writes, failed at each: {dict(outcomes)}")
    assert outcomes["nothing changed"] >= 1, outcomes


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, mounted for the test (root only), unmounted after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full filesystem needs root to mount a tmpfs; the failing-storage test covers every write")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_on_a_full_filesystem_every_cli_edit_fails_in_one_line_and_loses_nothing(cli, full_disk: Path, tmp_path: Path) -> None:
    registry = reviews_registry(full_disk / "registry")
    uri = ("--registry", registry.uri)
    assert cli("registry", "export", "reviews", "3", str(tmp_path / "adapter"), *uri).code == 0
    before = snapshot(registry)
    filler = fill(full_disk)
    for command in (("alias", "reviews", "production", "2"), ("alias", "reviews", "staging", "3"),
                    ("alias", "reviews", "production", "--delete"), ("rollout", "reviews", "1=60", "2=40"),
                    ("rollout", "reviews", "1=95", "2=5", "--auto"), ("archive", "reviews", "3"),
                    ("import", str(tmp_path / "adapter"), "--task", "reviews")):
        result = cli("registry", *command, *uri)
        lines = result.err.strip().splitlines()
        assert result.code == 1 and len(lines) == 1 and "No space left on device" in lines[0], (command, result.err)
        assert "nothing" in lines[0] or "will be finished" in lines[0], lines[0]
        assert "Traceback" not in result.err
    assert cli("registry", "verify", *uri).code in (0, 1)  # readable while full: half-done edits are named, not hidden
    filler.unlink()
    assert cli("registry", "verify", "--repair", *uri).code == 0
    assert cli("registry", "verify", *uri).code == 0
    after = snapshot(Registry(registry.uri))
    assert after["reviews"]["versions"] == before["reviews"]["versions"]  # nothing registered was lost
    assert all(r.ok for r in Registry(registry.uri).verify())


def test_on_a_nearly_full_filesystem_nothing_is_half_visible_and_each_edit_answers_for_itself(
        cli, full_disk: Path, tmp_path: Path) -> None:
    """With 4 and 2 pages left: a failed import into a new task leaves no task; an alias move
    is either not made, or made and reported pending by `verify` until `--repair` finishes it;
    a later edit that fails answers with its own outcome, not the earlier edit's."""
    registry = reviews_registry(full_disk / "registry")
    uri = ("--registry", registry.uri)
    assert cli("registry", "export", "reviews", "3", str(tmp_path / "adapter"), *uri).code == 0
    filler = fill(full_disk)
    for pages in (4, 2):
        os.truncate(filler, max(0, filler.stat().st_size - pages * 4096))
        result = cli("registry", "import", str(tmp_path / "adapter"), "--task", f"fresh-{pages}", *uri)
        listed = cli("registry", "list", *uri).out
        if result.code != 0:
            assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, result.err
            assert f"fresh-{pages}" not in listed and not Registry(registry.uri).tasks.exists(f"fresh-{pages}")
        moved = cli("registry", "alias", "reviews", "production", "2" if pages == 4 else "3", *uri)
        aliases = Registry(registry.uri).aliases.of("reviews")
        target = 2 if pages == 4 else 3
        if moved.code != 0 and aliases.get("production") == target:  # visible: then pending, until repaired
            assert "will be finished" in moved.err, moved.err
            reported = cli("registry", "verify", *uri)
            assert reported.code == 1 and "half-done edit" in reported.out + reported.err
        later = cli("registry", "rollout", "reviews", "1=60", "2=40", *uri)
        if later.code != 0 and Registry(registry.uri).journal.pending("reviews"):
            assert "rollout" in later.err or "this edit of reviews was not made" in later.err, later.err
        filler = fill(full_disk) if pages == 4 else filler
    filler.unlink()
    assert cli("registry", "verify", "--repair", *uri).code == 0
    assert cli("registry", "verify", *uri).code == 0
    final = Registry(registry.uri)
    assert all(final.versions.numbers(task) for task in final.tasks.names())  # no empty task anywhere


def test_an_edit_after_one_left_pending_answers_for_itself(tmp_path: Path) -> None:
    """An alias move fails at its history entry (recorded, to be finished); the disk stays
    full: the next edit of the task cannot finish it, and says that it itself was not made."""
    registry = reviews_registry(tmp_path / "registry")
    counting = on(registry, None)
    counting.aliases.set("reviews", "production", 2)
    writes = counting.storage.writes
    with pytest.raises(StorageError, match="will be finished"):
        on(registry, writes).aliases.set("reviews", "production", 3)  # its last write, the history entry, fails
    with pytest.raises(StorageError) as later:
        on(registry, 1).rollouts.set("reviews", RolloutSpec(variants=[RolloutVariant(version=1, weight=90),
                                                                       RolloutVariant(version=2, weight=10)]))
    assert "this edit of reviews was not made, nothing changed" in str(later.value)
    assert "No space left on device" in str(later.value) and registry.rollouts.get("reviews") is None
    assert all(r.ok for r in registry.verify(repair=True)) and registry.aliases.of("reviews")["production"] == 3
