"""The change feed: every routing edit is in it, a serving view that follows it agrees with a
full scan, and a refresh costs storage requests in proportion to what changed."""

import json
import random
import time

import pytest
from helpers import random_prompt

from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec
from promptmux.registry.change_feed import LOG_DIR
from promptmux.serving.runtime.routing import RegistryView


def requests_made(registry: Registry, action) -> int:
    before = sum(registry.storage.requests.values())
    action()
    return sum(registry.storage.requests.values()) - before


def fresh_scan(registry: Registry) -> RegistryView:
    view = RegistryView(Registry(registry.uri))
    view.refresh()
    return view


def test_every_routing_edit_names_its_task_in_the_change_log(registry: Registry, llama_fp: BaseModelFingerprint) -> None:
    log = registry.feed
    cursor = log.tail()
    edits = [
        lambda: registry.tasks.create(TaskSpec(name="t", base_model="tiny-random-llama"), llama_fp),
        lambda: registry.versions.register("t", random_prompt(cols=llama_fp.hidden_size), llama_fp),
        lambda: registry.versions.register("t", random_prompt(cols=llama_fp.hidden_size, seed=1), llama_fp),
        lambda: registry.aliases.set("t", "production", 1),
        lambda: registry.aliases.delete("t", "production"),
        lambda: registry.rollouts.set("t", RolloutSpec(variants=[RolloutVariant(version=1, weight=1),
                                                                RolloutVariant(version=2, weight=1)])),
        lambda: registry.rollouts.clear("t"),
        lambda: registry.archive("t", 1),
    ]
    for edit in edits:
        edit()
        tasks, after = log.since(cursor)
        assert (tasks, after) == ({"t"}, cursor + 1)
        cursor = after
    registry.tasks.create(TaskSpec(name="t", base_model="tiny-random-llama"), llama_fp, exist_ok=True)
    assert log.since(cursor) == (set(), cursor)  # nothing changed, nothing logged


def many_tasks(registry: Registry, fp: BaseModelFingerprint, count: int) -> list[str]:
    names = [f"task-{i:03d}" for i in range(count)]
    for i, name in enumerate(names):
        registry.tasks.create(TaskSpec(name=name, base_model="tiny-random-llama"), fp)
        for seed in range(3):
            registry.versions.register(name, random_prompt(rows=2, cols=fp.hidden_size, seed=seed + 3 * i), fp)
        registry.aliases.set(name, "production", 2)
    return names


def random_edit(registry: Registry, fp: BaseModelFingerprint, name: str, rng: random.Random) -> None:
    live = [v for v in registry.versions.numbers(name) if v not in registry.versions.archived(name)]
    choice = rng.choice(["alias", "register", "rollout", "clear", "delete", "archive"])
    if choice == "alias":
        registry.aliases.set(name, rng.choice(["production", "staging"]), rng.choice(live))
    elif choice == "register":
        registry.versions.register(name, random_prompt(rows=2, cols=fp.hidden_size, seed=rng.randrange(10**6)), fp)
    elif choice == "rollout":
        first, second = rng.sample(live, 2)
        registry.rollouts.set(name, RolloutSpec(variants=[RolloutVariant(version=first, weight=rng.randint(1, 9)),
                                                         RolloutVariant(version=second, weight=1)]))
    elif choice == "clear" and registry.rollouts.get(name):
        registry.rollouts.clear(name)
    elif choice == "delete" and "staging" in registry.aliases.of(name):
        registry.aliases.delete(name, "staging")
    else:
        used = set(registry.aliases.of(name).values()) | {v.version for v in (registry.rollouts.get(name) or RolloutSpec(
            variants=[RolloutVariant(version=live[0], weight=1)])).variants}
        spare = [v for v in live if v not in used]
        if len(live) > 2 and spare:
            registry.archive(name, rng.choice(spare))


def test_a_view_that_follows_the_log_agrees_with_a_full_scan_at_a_cost_of_what_changed(
        registry: Registry, llama_fp: BaseModelFingerprint) -> None:
    names = many_tasks(registry, llama_fp, 40)
    view = RegistryView(registry, full_scan_interval_s=3600)
    full_scan = requests_made(registry, view.refresh)
    assert full_scan > 40 * 5
    assert requests_made(registry, view.refresh) == 1  # nothing changed: one read that finds no entry

    rng = random.Random(7)
    for changed in (1, 3, 10):
        edited = rng.sample(names, changed)
        for name in edited:
            random_edit(registry, llama_fp, name, rng)
        cost = requests_made(registry, view.refresh)
        assert view.entries == fresh_scan(registry).entries
        # k entries + the read that ends the log, then each edited task's reload (a handful of reads each)
        assert changed + 1 < cost <= changed + 1 + 12 * changed, cost
        assert cost < full_scan / 3


def test_an_edit_at_rest_is_caught_by_the_periodic_full_scan(registry: Registry, llama_fp: BaseModelFingerprint) -> None:
    many_tasks(registry, llama_fp, 2)
    view = RegistryView(registry, full_scan_interval_s=0.5)
    view.refresh()
    alias = registry.storage.local_path("tasks/task-001/aliases/production.json")
    with open(alias, "w") as handle:  # behind the registry's back: no change-log entry
        json.dump({"version": 3}, handle)
    view.refresh()
    assert view.entries["task-001"].aliases["production"] == 2
    time.sleep(0.5)
    view.refresh()
    assert view.entries["task-001"].aliases["production"] == 3
    assert view.entries == fresh_scan(registry).entries


@pytest.mark.parametrize("entry", [b"{not json", b'{"what": "alias"}'])
def test_an_unreadable_log_entry_makes_the_reader_scan_everything(registry: Registry, llama_fp: BaseModelFingerprint,
                                                                  entry: bytes) -> None:
    names = many_tasks(registry, llama_fp, 3)
    view = RegistryView(registry, full_scan_interval_s=3600)
    view.refresh()
    registry.storage.write_bytes(f"{LOG_DIR}/{registry.feed.tail():012d}.json", entry)
    alias = registry.storage.local_path(f"tasks/{names[0]}/aliases/production.json")
    with open(alias, "w") as handle:
        json.dump({"version": 1}, handle)
    assert requests_made(registry, view.refresh) > 3 * 5  # a full scan
    assert view.entries[names[0]].aliases["production"] == 1
    assert requests_made(registry, view.refresh) == 1  # and then it follows the log again


def test_a_full_scan_slower_than_its_interval_is_not_run_back_to_back(registry: Registry,
                                                                       llama_fp: BaseModelFingerprint) -> None:
    many_tasks(registry, llama_fp, 2)
    view = RegistryView(registry, validate=lambda manifest: time.sleep(0.5), full_scan_interval_s=0.3)
    assert requests_made(registry, view.refresh) > 2 * 5  # the first refresh scans, and takes over 0.3 s
    assert requests_made(registry, view.refresh) == 1  # the interval counts from the scan's end
