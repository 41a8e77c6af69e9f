"""The `promptmux registry` commands, run through the real entry point."""

import json
from pathlib import Path

import pytest
from helpers import random_prompt

from promptmux.registry import Registry, RolloutSpec, RolloutVariant, TaskSpec


@pytest.fixture
def filled(registry: Registry, task: str, llama_fp) -> Registry:
    for seed in range(3):
        registry.versions.register(task, random_prompt(seed=seed), llama_fp, metrics={"accuracy": 0.6 + seed / 10})
    return registry


def test_list_and_show(cli, filled: Registry) -> None:
    listed = cli("registry", "list", "--registry", filled.uri, "--json")
    assert listed.code == 0
    assert json.loads(listed.out) == [
        {"task": "sentiment", "kind": "generation", "base_model": "tiny-random-llama", "versions": [1, 2, 3],
         "aliases": {}, "rollout": None}
    ]
    table = cli("registry", "list", "--registry", filled.uri)
    assert table.code == 0 and "sentiment" in table.out

    assert cli("registry", "alias", "sentiment", "production", "2", "--registry", filled.uri).code == 0
    shown = json.loads(cli("registry", "show", "sentiment", "--registry", filled.uri, "--json").out)
    second = shown["versions"][1]
    assert second["version"] == 2 and second["aliases"] == ["production"]
    assert second["sha256"] == filled.versions.get("sentiment", 2).sha256
    assert second["metrics"] == {"accuracy": pytest.approx(0.7)}
    assert Path(second["uri"]) == Path(filled.uri) / "tasks" / "sentiment" / "versions" / "2"
    assert "sentiment (generation) on tiny-random-llama" in cli("registry", "show", "sentiment", "--registry", filled.uri).out


def test_show_puts_accuracy_and_macro_f1_beside_the_base_model(cli, registry: Registry, task: str, llama_fp) -> None:
    registry.versions.register(task, random_prompt(), llama_fp, metrics={"accuracy": 0.957, "macro_f1": 0.956, "base_accuracy": 0.5,
                                                                "base_macro_f1": 0.333, "train_examples": 160})
    shown = " ".join(cli("registry", "show", task, "--registry", registry.uri).out.split())
    assert "accuracy 0.957 (base 0.500), macro F1 0.956 (base 0.333)" in shown


def test_registry_from_environment(cli, filled: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTMUX_REGISTRY", filled.uri)
    assert json.loads(cli("registry", "list", "--json").out)[0]["versions"] == [1, 2, 3]


def test_alias_moves_copies_and_deletes(cli, filled: Registry) -> None:
    uri = ("--registry", filled.uri)
    assert cli("registry", "alias", "sentiment", "staging", "3", *uri).code == 0
    assert cli("registry", "alias", "sentiment", "production", "staging", *uri).code == 0
    assert filled.aliases.of("sentiment") == {"production": 3, "staging": 3}
    assert cli("registry", "alias", "sentiment", "staging", "--delete", *uri).code == 0
    assert filled.aliases.of("sentiment") == {"production": 3}


def test_rollout_set_show_clear(cli, filled: Registry) -> None:
    uri = ("--registry", filled.uri)
    result = cli("registry", "rollout", "sentiment", "2=90", "3=10", *uri, "--json")
    assert result.code == 0
    assert [(v["version"], v["weight"]) for v in json.loads(result.out)["variants"]] == [(2, 90), (3, 10)]
    assert "v2:90% / v3:10%" in cli("registry", "rollout", "sentiment", *uri).out
    assert cli("registry", "rollout", "sentiment", "--clear", *uri).code == 0
    assert filled.rollouts.get("sentiment") is None


def test_archive_and_verify(cli, filled: Registry) -> None:
    uri = ("--registry", filled.uri)
    assert cli("registry", "alias", "sentiment", "production", "1", *uri).code == 0
    refused = cli("registry", "archive", "sentiment", "1", *uri)
    assert refused.code == 1 and "in use by alias 'production'" in refused.err
    assert cli("registry", "archive", "sentiment", "2", *uri).code == 0
    assert filled.versions.latest("sentiment").version == 3

    verified = cli("registry", "verify", *uri, "--json")
    assert verified.code == 0 and all(entry["ok"] for entry in json.loads(verified.out))
    tensor = Path(filled.versions.uri("sentiment", 3)) / "adapter_model.safetensors"
    tensor.write_bytes(tensor.read_bytes()[:-4] + b"\0\0\0\0")
    broken = cli("registry", "verify", *uri)
    assert broken.code == 1 and "sentiment@3" in broken.err and "sha256" in broken.err


@pytest.mark.parametrize(
    "args, message",
    [
        (("registry", "show", "missing"), "unknown task 'missing'"),
        (("registry", "show", "../etc"), "invalid task name"),
        (("registry", "alias", "sentiment", "production", "42"), "no version 42"),
        (("registry", "alias", "sentiment", "Bad Alias", "1"), "invalid alias"),
        (("registry", "alias", "sentiment", "production"), "give the VERSION"),
        (("registry", "rollout", "sentiment", "2:50"), "expected VERSION=WEIGHT"),
        (("registry", "rollout", "sentiment", "2=50", "2=50"), "only once"),
        (("registry", "rollout", "sentiment", "2=-1"), "greater than 0"),
        (("registry", "export", "sentiment", "9", "/tmp/x"), "no version 9"),
        (("registry", "import", "/nonexistent", "--task", "t", "--base-model", "tiny-random-llama"), "not a PEFT adapter folder"),
    ],
)
def test_bad_input_gives_a_message_and_exit_1(cli, filled: Registry, args: tuple, message: str) -> None:
    before = filled.verify()
    result = cli(*args, "--registry", filled.uri)
    assert result.code == 1, result.out
    assert message in result.err
    assert "Traceback" not in result.err
    assert filled.verify() == before


def test_auto_rollout_status_and_history(cli, filled: Registry, llama_fp) -> None:
    from promptmux.registry.policy import Outcome

    uri = ("--registry", filled.uri)
    assert cli("registry", "alias", "sentiment", "production", "1", *uri).code == 0
    started = cli("registry", "rollout", "sentiment", "1=95", "2=5", "--auto", "--steps", "20,60", "--min-samples", "5", *uri)
    assert started.code == 0, started.err
    policy = filled.rollouts.policy("sentiment")
    assert (policy.control, policy.candidate, policy.steps, policy.min_samples_per_step) == (1, 2, [5, 20, 60], 5)
    assert "control (v1):95% / candidate (v2):5%" in started.out
    empty = cli("registry", "rollout-status", "sentiment", *uri).out
    assert empty.count("no data yet") == 9 and "0.000" not in empty and "0 s" not in empty  # nothing measured yet
    sides = {1: "control", 2: "candidate"}
    for i, (version, score) in enumerate([(1, 1.0), (1, 0.0), (2, 1.0), (2, 1.0), (1, 1.0)]):
        filled.outcomes.record(Outcome(id=f"r{i}", task="sentiment", version=version, variant=sides[version],
                                      experiment=policy.experiment, score=score))
    status = json.loads(cli("registry", "rollout-status", "sentiment", *uri, "--json").out)
    assert status["control"] == {"version": 1, "outcomes": 3, "mean": pytest.approx(0.6667, abs=1e-4),
                                 "interval": status["control"]["interval"], "requests": 0, "error_rate": 0.0, "p99_s": 0.0}
    assert status["candidate"]["outcomes"] == 2 and status["verdict"] == "continue"
    table = cli("registry", "rollout-status", "sentiment", *uri, "--plot", str(filled_plot := Path(filled.uri) / "ab.png"))
    assert "step 1 of 3, candidate at 5%" in table.out and "verdict so far: continue" in table.out
    assert "0.667" in table.out and table.out.count("no data yet") == 4  # scored, but no request served yet
    assert filled_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and filled_plot.stat().st_size > 10_000
    history = json.loads(cli("registry", "history", "sentiment", *uri, "--json").out)
    assert [(c["actor"], c["action"]) for c in history] == [("manual", "register")] * 3 + [("manual", "alias"),
                                                                                           ("manual", "rollout")]
    assert [c["details"]["version"] for c in history[:3]] == [1, 2, 3] and history[0]["details"]["method"] == "prompt_tuning"
    assert history[4]["reason"] == "--auto" and history[3]["details"] == {"alias": "production", "version": 1, "was": None}
    assert "rollout (control=1=95, candidate=2=5): --auto" in cli("registry", "history", "sentiment", *uri).out
    for bad, message in [(("1=95", "2=5", "3=1"), "--auto takes two versions"), (("1=95", "2=5", "--steps", "a"), "invalid --steps")]:
        refused = cli("registry", "rollout", "sentiment", *bad, "--auto", *uri)
        assert refused.code == 1 and message in refused.err
    assert cli("registry", "rollout", "sentiment", "--clear", *uri).code == 0
    stopped = cli("registry", "rollout-status", "sentiment", *uri)
    assert stopped.code == 0 and "stopped by hand at step 1 of 3" in stopped.out
    none = cli("registry", "promote", "sentiment", *uri)
    assert none.code == 1 and "has no automatic rollout running" in none.err
    assert cli("registry", "rollout", "sentiment", "1=95", "3=5", "--auto", *uri).code == 0
    promoted = cli("registry", "promote", "sentiment", *uri)
    assert promoted.code == 0 and "promote by manual, production → v3 (promote by hand)" in promoted.out
    assert filled.aliases.of("sentiment")["production"] == 3 and filled.rollouts.get("sentiment") is None
    ended = json.loads(cli("registry", "rollout-status", "sentiment", *uri, "--json").out)
    assert (ended["rollout"], ended["status"], ended["reason"]) == (2, "promote", "promote by hand")
    filled.tasks.create(TaskSpec(name="other", base_model="tiny-random-llama"), llama_fp)
    never = cli("registry", "rollout-status", "other", *uri)
    assert never.code == 1 and "has had no automatic rollout (start one with: promptmux registry rollout other 1=95 2=5 --auto)" in never.err


def test_unarchive_and_delete(cli, filled: Registry) -> None:
    uri = ("--registry", filled.uri)
    assert cli("registry", "archive", "sentiment", "3", *uri).code == 0
    assert filled.versions.latest("sentiment").version == 2
    assert cli("registry", "unarchive", "sentiment", "3", *uri).code == 0
    assert filled.versions.latest("sentiment").version == 3
    again = cli("registry", "unarchive", "sentiment", "3", *uri)
    assert again.code == 1 and "version 3 of 'sentiment' is not archived" in again.err
    history = json.loads(cli("registry", "history", "sentiment", *uri, "--json").out)
    assert [(c["action"], c["details"]) for c in history][-2:] == [("archive", {"version": 3}), ("unarchive", {"version": 3})]
    filled.rollouts.set("sentiment", RolloutSpec(variants=[RolloutVariant(version=1, weight=1)]))
    refused = cli("registry", "delete", "sentiment", *uri)
    assert refused.code == 1 and "served through its rollout" in refused.err and filled.tasks.exists("sentiment")
    deleted = cli("registry", "delete", "sentiment", "--force", *uri)
    assert deleted.code == 0 and "deleted task sentiment" in deleted.out
    assert not filled.tasks.exists("sentiment")
    assert sorted(p.name for p in (Path(filled.uri) / "tasks" / "sentiment").iterdir()) == ["history"]
    assert filled.tasks.names() == [] and cli("registry", "delete", "sentiment", *uri).code == 1
    after = json.loads(cli("registry", "history", "sentiment", *uri, "--json").out)
    assert len(after) == len(history) + 2 and after[-1]["action"] == "delete"  # the rollout, then the delete
    assert after[-1]["details"] == {"versions": 3, "served_by": ["its rollout"]} and after[-1]["reason"] == "forced"
    assert cli("registry", "history", "never-was", *uri).code == 1


def test_a_split_whose_weights_do_not_add_up_to_100_says_so(cli, filled: Registry) -> None:
    result = cli("registry", "rollout", "sentiment", "1=60", "2=30", "--registry", filled.uri)
    assert result.code == 0 and "v1:67% / v2:33%" in result.out
    assert "the weights add up to 90, not 100" in result.err
    exact = cli("registry", "rollout", "sentiment", "1=60", "2=40", "--registry", filled.uri)
    assert "add up" not in exact.err
