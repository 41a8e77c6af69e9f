"""What a hostile but realistic client can no longer do to an automatic rollout.

It cannot steer the experiment (outcomes of requests the experiment did not route are
stored but never decide), blind its guard rails (every request served under a rollout is
counted with its result under the variant that routed it), count its feedback twice or
rewrite it (the outcome file is claimed with one create-only write), or get a 500 from a
malformed OpenAI body. The server side is the real app over real HTTP (uvicorn on a
loopback port); the controller's step is the real `advance`, on the real registry.
"""

import asyncio
import random
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from helpers import serve_locally, wait_until

from promptmux.core.fields import GenerationParams
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec
from promptmux.registry.history import HistoryEntry
from promptmux.registry.policy import RolloutPolicy, SequentialTest
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.rollouts.loop import OutcomeLog, advance
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings

LLAMA, GPT2 = "tiny-random-llama", "tiny-random-gpt2"
LONG = "word " * 100  # 500 tokens of the byte-level tokenizer


def other(label: str) -> str:
    return "1" if label == "0" else "0"


@pytest.fixture
def reviews(tmp_path: Path) -> Iterator[tuple[str, PromptmuxService, Registry]]:
    """A classification task with two versions, `production` on the first, served by one replica."""
    registry = Registry(str(tmp_path / "registry"))
    fp = fingerprint(load_model(LLAMA, dtype="float32"))
    registry.tasks.create(TaskSpec(name="reviews", kind="classification", template="Review: {input}\nGood:",
                                  labels={"0": "0", "1": "1"}, base_model=LLAMA), fp)
    for seed in (5, 6):
        registry.versions.register("reviews", torch.randn(5, fp.hidden_size, generator=torch.Generator().manual_seed(seed)), fp)
    registry.aliases.set("reviews", "production", 1)
    registry.tasks.create(TaskSpec(name="act-as", base_model=LLAMA, template="Act as {input}:"), fp)
    registry.versions.register("act-as", torch.randn(4, fp.hidden_size), fp)
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.2, engine=EngineConfig(base_model=LLAMA))
    with serve_locally(settings) as (url, service):
        yield url, service, registry


async def classify_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        responses = []
        for start in range(0, len(bodies), 8):  # a few at a time, so rows of both versions share batches
            responses += await asyncio.gather(*(client.post("/v1/classify", json=b) for b in bodies[start: start + 8]))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json()["outputs"][0] for r in responses]


async def send_feedback(url: str, pairs: list[tuple[str, str]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/v1/feedback", json={"id": i, "label": g}) for i, g in pairs))


def served_requests(registry: Registry, task: str, experiment: str) -> int:
    log = OutcomeLog(registry, task)
    return sum(s.requests for w in log.read_served() for s in w.variants if s.experiment == experiment)


def decision_of(registry: Registry, task: str) -> HistoryEntry:
    change = advance(registry, OutcomeLog(registry, task))
    assert change is not None
    return change


def test_outcomes_the_experiment_did_not_route_change_nothing(reviews, tmp_path: Path) -> None:
    url, _, registry = reviews
    older = asyncio.run(classify_all(url, [{"task": "reviews", "input": f"before {i}"} for i in range(10)]))
    registry.rollouts.start("reviews", RolloutPolicy(control=1, candidate=2, steps=[50],
                                                       test=SequentialTest(min_samples=20), guard_min_requests=10_000))
    experiment = registry.rollouts.policy("reviews").experiment
    wait_until(lambda: asyncio.run(classify_all(url, [{"task": "reviews", "input": "probe", "routing_key": "probe"}]))[0]
               ["variant"] in ("control", "candidate"), timeout=10)
    rng = random.Random(7)
    routed = asyncio.run(classify_all(url, [{"task": "reviews", "input": f"review {i}", "routing_key": f"user-{i}"}
                                           for i in range(160)]))
    right = {"control": 0.35, "candidate": 0.9}  # the candidate is truly better
    gold = [(o["id"], o["label"] if rng.random() < right[o["variant"]] else other(o["label"])) for o in routed]
    assert all(r.json() == {"counted": True} for r in asyncio.run(send_feedback(url, gold)))
    per_variant = Counter(o["variant"] for o in routed)
    wait_until(lambda: served_requests(registry, "reviews", experiment) == len(routed) + 1, timeout=10)
    clean = Registry(str(shutil.copytree(registry.uri, tmp_path / "without-strangers")))

    # 100 outcomes from pinned requests, each the opposite of the truth: the candidate pinned
    # by version is judged always wrong, the control pinned by version always right
    pinned = asyncio.run(classify_all(url, [{"task": "reviews", "input": f"pinned {i}", "version": 1 + i % 2}
                                           for i in range(100)]))
    lies = [(o["id"], other(o["label"]) if o["version"] == 2 else o["label"]) for o in pinned]
    aliased = asyncio.run(classify_all(url, [{"task": "reviews", "input": f"aliased {i}", "alias": "production"}
                                            for i in range(20)]))
    lies += [(o["id"], o["label"]) for o in aliased]  # the control, by its alias, always right
    lies += [(o["id"], o["label"]) for o in older]  # answers from before the experiment, replayed
    assert all(r.json() == {"counted": True} for r in asyncio.run(send_feedback(url, lies)))  # stored, all of them
    assert {o["variant"] for o in pinned} == {"v1", "v2"} and {o["variant"] for o in aliased} == {"production"}
    wait_until(lambda: len(OutcomeLog(registry, "reviews").read_served()) > len(OutcomeLog(clean, "reviews").read_served()),
               timeout=10)

    steered, honest = decision_of(registry, "reviews"), decision_of(clean, "reviews")
    assert (steered.action, steered.reason, steered.stats) == (honest.action, honest.reason, honest.stats)
    assert honest.action == "promote"
    stats = steered.stats
    assert stats["candidate"]["outcomes"] == per_variant["candidate"] and stats["control"]["outcomes"] == per_variant["control"]
    assert stats["candidate"]["requests"] + stats["control"]["requests"] == len(routed) + 1  # and the probe
    assert len(OutcomeLog(registry, "reviews").read()) == len(gold) + len(lies)
    print(f"\n{len(routed)} routed ({dict(per_variant)}), {len(lies)} strangers' outcomes; decided alike: "
          f"{steered.action}, candidate {stats['candidate']['mean']} on {stats['candidate']['outcomes']}, control "
          f"{stats['control']['mean']} on {stats['control']['outcomes']}, p {stats['p_value']}")


def test_a_classification_takes_its_gold_label_not_a_bare_score(reviews) -> None:
    url, _, _ = reviews
    (output,) = asyncio.run(classify_all(url, [{"task": "reviews", "input": "kind staff"}]))
    response = httpx.post(f"{url}/v1/feedback", json={"id": output["id"], "score": 1.0})
    assert response.status_code == 400 and "send the gold label" in response.json()["error"]["message"]


def feedback_metric(url: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("promptmux_feedback_total{"))


def test_fifty_concurrent_posts_of_one_id_count_once(reviews) -> None:
    url, _, registry = reviews
    outputs = asyncio.run(classify_all(url, [{"task": "reviews", "input": f"race {i}"} for i in range(2)]))
    before = feedback_metric(url)
    same = asyncio.run(send_feedback(url, [(outputs[0]["id"], "1")] * 50))
    assert [r.status_code for r in same] == [200] * 50 and sum(r.json()["counted"] for r in same) == 1
    assert len(registry.outcomes.names("reviews")) == 1 and feedback_metric(url) == before + 1
    mixed = asyncio.run(send_feedback(url, [(outputs[1]["id"], str(i % 2)) for i in range(50)]))
    winner = registry.outcomes.read("reviews", next(f for f in registry.outcomes.names("reviews")
                                                   if registry.outcomes.read("reviews", f).id == outputs[1]["id"])).label
    assert sum(r.status_code == 200 and r.json()["counted"] for r in mixed) == 1
    assert all((r.status_code == 200) == (str(i % 2) == winner) for i, r in enumerate(mixed))
    assert all(r.status_code == 409 and "the first stands" in r.json()["error"]["message"]
               for i, r in enumerate(mixed) if str(i % 2) != winner)
    assert len(registry.outcomes.names("reviews")) == 2 and feedback_metric(url) == before + 2


@pytest.mark.parametrize("checked", [True, False], ids=["refused-for-its-version", "failing-in-the-engine"])
def test_a_candidate_that_fails_half_its_plain_requests_is_rolled_back_by_the_error_guard(tmp_path: Path, checked) -> None:
    """The candidate's 600 virtual tokens leave no room for long inputs on GPT-2's 1,024
    positions. Checked, those requests are refused (400) for the version's sake; unchecked
    (the engine's check switched off), they fail in the forward (500), and the control's rows
    batched beside them are served. Either way the failures are the candidate's."""
    registry = Registry(str(tmp_path / "registry"))
    fp = fingerprint(load_model(GPT2, dtype="float32"))
    registry.tasks.create(TaskSpec(name="act-as", base_model=GPT2, template="Act as {input}:",
                                  generation=GenerationParams(max_new_tokens=4)), fp)
    for tokens in (4, 600):
        registry.versions.register("act-as", torch.randn(tokens, fp.hidden_size, generator=torch.Generator().manual_seed(tokens)), fp)
    registry.aliases.set("act-as", "production", 1)
    registry.rollouts.start("act-as", RolloutPolicy(control=1, candidate=2, steps=[50], guard_min_requests=20))
    policy = registry.rollouts.policy("act-as")
    settings = ServeSettings(registry=registry.uri, refresh_interval_s=0.2, engine=EngineConfig(base_model=GPT2))
    with serve_locally(settings) as (url, service):
        if not checked:
            service.client.engine.max_positions = None

        async def traffic() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                responses = []
                for start in range(0, 120, 8):
                    bodies = [{"task": "act-as", "input": LONG if i % 2 else f"a poet {i}", "routing_key": f"k{i}"}
                              for i in range(start, start + 8)]
                    responses += await asyncio.gather(*(client.post("/v1/generate", json=b) for b in bodies))
                return responses

        responses = asyncio.run(traffic())
        wait_until(lambda: served_requests(registry, "act-as", policy.experiment) == len(responses), timeout=10)
    routes = [_routed_to(policy, i) for i in range(120)]
    expected = [400 if checked else 500 if route == "candidate" and i % 2 else 200 for i, route in enumerate(routes)]
    expected = [status if routes[i] == "candidate" and i % 2 else 200 for i, status in enumerate(expected)]
    assert [r.status_code for r in responses] == expected  # the control's long requests, batched beside, are served
    candidates, failed = routes.count("candidate"), expected.count(400 if checked else 500)
    change = decision_of(registry, "act-as")
    assert change.action == "rollback" and change.reason.startswith("guard rail: candidate error rate")
    assert change.stats["candidate"]["requests"] == candidates and change.stats["control"]["requests"] == 120 - candidates
    assert change.stats["control"]["error_rate"] == 0
    assert change.stats["candidate"]["error_rate"] == pytest.approx(failed / candidates, abs=1e-4)
    assert 0.3 < change.stats["candidate"]["error_rate"] < 0.7
    print(f"\n{candidates} of 120 requests routed to the candidate, {failed} failed ({400 if checked else 500} "
          f"each); control {120 - candidates}, all 200; {change.reason}")
    assert registry.aliases.of("act-as")["production"] == 1 and registry.rollouts.get("act-as") is None


def _routed_to(policy: RolloutPolicy, i: int) -> str:
    from promptmux.serving.runtime.routing import pick_variant

    split = policy.split()
    return split.variants[pick_variant(split, "act-as", f"k{i}", random.Random())].name


@pytest.mark.parametrize("body, field", [
    ({"model": "act-as", "prompt": []}, "prompt"),
    ({"model": "act-as@²", "prompt": "x"}, "task@VERSION"),
    ({"model": "act-as@٣", "prompt": "x"}, "task@VERSION"),
    ({"model": "act-as", "prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ({"model": "act-as", "prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"model": "act-as", "prompt": "x", "suffix": "and then"}, "suffix"),
    ({"model": "act-as", "prompt": "x", "n": 17}, "n"),
    ({"model": "act-as", "prompt": "x", "echo": True, "stream": True}, "echo"),
    ({"model": "act-as", "prompt": "x", "echo": True, "logprobs": 2}, "echo"),
    ({"model": "act-as", "prompt": "x", "best_of": 3}, "best_of"),
    ({"model": "act-as", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"model": "act-as", "prompt": "x", "functions": []}, "functions"),
    ({"model": "act-as:", "prompt": "x"}, "task:ALIAS"),
])
def test_unsupported_or_empty_openai_fields_get_400_naming_the_field(reviews, body: dict, field: str) -> None:
    url, _, _ = reviews
    response = httpx.post(f"{url}/v1/completions", json=body)
    assert response.status_code == 400 and field in response.json()["error"]["message"], response.text


@pytest.mark.parametrize("stop", [5, [""], [None], {"x": 1}, ""])
def test_validation_messages_name_fields_never_python_internals(reviews, stop: object) -> None:
    url, _, _ = reviews
    response = httpx.post(f"{url}/v1/chat/completions", json={"model": "act-as", "stop": stop,
                                                              "messages": [{"role": "user", "content": "x"}]})
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and message.startswith("stop"), message
    assert not re.search(r"0x[0-9a-f]+|function|partial|constrained|\[", message), message


def test_openai_fields_sent_with_their_neutral_values_are_served(reviews) -> None:
    url, _, _ = reviews
    body = {"model": "act-as", "prompt": "a poet", "max_tokens": 3, "presence_penalty": 0, "frequency_penalty": 0.0,
            "logit_bias": {}, "n": 1, "best_of": 1, "echo": False, "suffix": None, "stream_options": None}
    response = httpx.post(f"{url}/v1/completions", json=body)
    assert response.status_code == 200, response.text


def test_a_request_pinned_to_an_archived_version_is_still_served_and_the_default_skips_it(reviews) -> None:
    """Archiving takes a version out of routing (the default, aliases, rollouts), not out of
    the registry: a client pinned to it by number keeps working until it is deleted."""
    url, _, registry = reviews
    registry.archive("reviews", 2)
    wait_until(lambda: 2 in httpx.get(f"{url}/v1/tasks/reviews").json().get("archived", []), timeout=10)
    pinned = httpx.post(f"{url}/v1/classify", json={"task": "reviews", "version": 2, "input": "fine"})
    assert pinned.status_code == 200 and pinned.json()["outputs"][0]["version"] == 2
    default = httpx.post(f"{url}/v1/classify", json={"task": "reviews", "input": "fine"})
    assert default.json()["outputs"][0]["version"] == 1
    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "A request that names an archived version by number" in readme
