"""Chat: chat-format tasks and `/v1/chat/completions`, with the official `openai` client.

A chat-format task is trained on the tiny model (`promptmux train --format chat`), then
served over real HTTP (uvicorn on a loopback port): the client's reply equals `promptmux
generate` for the same task and input at temperature 0 token for token (compared through
the log-probabilities' tokens, since random weights write special tokens that decode to
nothing), streamed deltas add up to the plain reply, and every OpenAI route answers errors
in OpenAI's shape.
"""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from helpers import serve_locally

from promptmux.core.fields import GenerationParams, Message
from promptmux.models.inputs import encode_task_input
from promptmux.models.loading import fingerprint, load_model, load_tokenizer
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings
from promptmux.tasks.data import examples, load_records, split
from promptmux.tasks.spec_file import read_fields, resolve
from promptmux.tasks.train import train_task

BASE = "tiny-random-llama"
DATA = Path(__file__).resolve().parent.parent / "tasks" / "examples" / "data"


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Registry:
    """A chat-format task trained as `promptmux train --spec act-as.yaml --format chat` trains it,
    on the project's own roles data, plus a plain-template task and a chat-format classifier."""
    folder = tmp_path_factory.mktemp("chat")
    spec, fields, config = resolve(read_fields(DATA.parent / "act-as.yaml"),
                                   {"name": "act-as-chat", "format": "chat", "system": "You write prompts.", "base_model": BASE},
                                   {}, {"epochs": 1, "num_virtual_tokens": 4})
    train, held_out = split(examples(load_records(DATA / "roles.jsonl"), fields, DATA / "roles.jsonl"), 0.2, 0)
    train_task(spec, train, held_out, config, Registry(str(folder / "registry")), folder / "run", "roles", console=None)
    registry = Registry(str(folder / "registry"))
    fp = fingerprint(load_model(BASE, dtype="float32"))
    registry.tasks.create(TaskSpec(name="plain", template="Act as {input}:", base_model=BASE,
                                  generation=GenerationParams(max_new_tokens=6)), fp)
    registry.versions.register("plain", torch.randn(4, fp.hidden_size, generator=torch.Generator().manual_seed(4)), fp)
    registry.tasks.create(TaskSpec(name="verdict", kind="classification", format="chat", labels={"0": "no", "1": "yes"},
                                  template="Review: {input}\nGood?", base_model=BASE), fp)
    registry.versions.register("verdict", torch.randn(4, fp.hidden_size, generator=torch.Generator().manual_seed(5)), fp)
    return registry


@pytest.fixture(scope="module")
def served(registry: Registry) -> Iterator[tuple[str, PromptmuxService]]:
    with serve_locally(ServeSettings(registry=registry.uri, engine=EngineConfig(base_model=BASE, cpu_threads=2))) as served:
        yield served


@pytest.fixture(scope="module")
def server(served: tuple[str, PromptmuxService]) -> str:
    return served[0]


def test_a_chat_request_goes_down_to_the_engine_client_once_and_comes_back(served, monkeypatch) -> None:
    """http -> runtime -> engine client -> engine and back: each request, plain, streamed or a
    classification, is one call of the runtime on the engine client, and its inputs meet the
    engine's input processor once (the layers test holds the imports that keep it so)."""
    url, service = served
    calls: list[str] = []
    client, inputs = service.client, service.client.engine.inputs
    def counted(name: str):
        original = getattr(client, name)

        async def called(request):
            calls.append(name)
            return await original(request)
        return called

    for name in ("classify", "generate", "stream"):
        monkeypatch.setattr(client, name, counted(name))
    rows = inputs.rows
    monkeypatch.setattr(inputs, "rows", lambda request, prompt: calls.append("rows") or rows(request, prompt))
    openai_client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    ask = dict(model="act-as-chat", messages=[{"role": "user", "content": "a chef"}], max_tokens=3)
    openai_client.chat.completions.create(**ask)
    assert "".join(c.choices[0].delta.content or "" for c in openai_client.chat.completions.create(**ask, stream=True)) is not None
    openai_client.chat.completions.create(model="verdict", messages=[{"role": "user", "content": "lovely"}])
    assert calls == ["generate", "rows", "stream", "rows", "classify", "rows"]


def test_the_trained_task_is_chat_formatted_and_renders_through_the_chat_template(registry: Registry) -> None:
    spec = registry.tasks.get("act-as-chat").spec
    assert (spec.format, spec.system) == ("chat", "You write prompts.")
    text = load_tokenizer(BASE).decode(encode_task_input(load_tokenizer(BASE), spec, "a chess coach"))
    assert text == ("<|im_start|>system\nYou write prompts.<|im_end|>\n<|im_start|>user\n"
                    "I want you to act as a chess coach.\nPrompt:<|im_end|>\n<|im_start|>assistant\n")
    conversation = spec.conversation([Message(role="system", content="Be terse."), Message(role="user", content="x"),
                                      Message(role="assistant", content="ok"), Message(role="user", content="y")])
    assert [m.content for m in conversation] == ["Be terse.", "x", "ok", "I want you to act as y.\nPrompt:"]


def token_texts(ids: list[int]) -> list[str]:
    tokenizer = load_tokenizer(BASE)
    return [tokenizer.decode([token]) for token in ids]


@pytest.mark.parametrize("task", ["act-as-chat", "plain"])
def test_the_openai_client_gets_what_promptmux_generate_gives(cli, registry, server, task, tmp_path: Path) -> None:
    lines = tmp_path / "in.jsonl"
    lines.write_text(json.dumps({"task": task, "input": "a chess coach", "params": {"max_new_tokens": 12}}) + "\n")
    assert cli("generate", "--input", str(lines), "--output", str(tmp_path / "out.jsonl"), "--registry", registry.uri,
               "--base-model", BASE).code == 0
    offline = json.loads((tmp_path / "out.jsonl").read_text())["result"]
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    messages = [{"role": "user", "content": "a chess coach"}]
    reply = client.chat.completions.create(model=task, messages=messages, max_tokens=12, temperature=0, logprobs=True,
                                           top_logprobs=3)
    choice = reply.choices[0]
    assert [t.token for t in choice.logprobs.content] == token_texts(offline["token_ids"])
    assert choice.message.content == offline["text"] and choice.finish_reason == offline["finish_reason"]
    assert reply.usage.completion_tokens == len(offline["token_ids"]) and reply.id.startswith("pmx1.")
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob >= t.logprob - 1e-6 for t in choice.logprobs.content)
    streamed = client.chat.completions.create(model=task, messages=messages, max_tokens=12, temperature=0, stream=True,
                                              stream_options={"include_usage": True}, logprobs=True)
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].usage.completion_tokens == len(offline["token_ids"])
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert [t.token for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content] == \
        token_texts(offline["token_ids"])
    feedback = httpx.post(f"{server}/v1/feedback", json={"id": reply.id, "score": 1.0})
    assert feedback.json() == {"counted": True}  # the response id is the signed feedback id


def test_a_chat_classification_answers_its_label_with_probabilities(registry, server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    reply = client.chat.completions.create(model="verdict", messages=[{"role": "user", "content": "lovely"}], n=2)
    labels = [c.message.content for c in reply.choices]
    probabilities = reply.model_extra["promptmux"]["probabilities"]
    assert labels[0] == labels[1] in ("0", "1") and len(reply.model_extra["promptmux"]["ids"]) == 2
    assert probabilities[0][labels[0]] == max(probabilities[0].values())


def test_n_choices_are_rows_of_their_own_and_seeds_make_them_repeatable(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    ask = dict(model="plain", messages=[{"role": "user", "content": "a judge"}], max_tokens=6, n=3, temperature=1.2,
               seed=11, logprobs=True)
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    tokens = [[t.token for t in c.logprobs.content] for c in first.choices]
    assert tokens == [[t.token for t in c.logprobs.content] for c in again.choices]
    assert len({tuple(t) for t in tokens}) > 1  # seed + i per choice: not three copies


def test_completions_take_n_and_echo_models_retrieve_and_a_classification_refuses_logprobs(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    prompts = ["a judge", "a chef"]
    reply = client.completions.create(model="plain", prompt=prompts, n=2, echo=True, max_tokens=4, temperature=1.2, seed=5)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3] and 4 <= reply.usage.completion_tokens <= 16
    assert all(c.text.startswith(prompts[c.index // 2]) and len(c.text) > len(prompts[c.index // 2]) for c in reply.choices)
    assert reply.choices[0].text != reply.choices[1].text  # seed + i: two choices of one prompt differ
    assert client.models.retrieve("plain").id == "plain"
    assert {m.id for m in client.models.list()} >= {"plain", "verdict"}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    with pytest.raises(openai.BadRequestError, match="classification task"):
        client.chat.completions.create(model="verdict", messages=[{"role": "user", "content": "lovely"}], logprobs=True)
    with pytest.raises(openai.BadRequestError, match="classification task"):
        client.completions.create(model="verdict", prompt="lovely", logprobs=1)
    with pytest.raises(openai.BadRequestError, match="echo with stream"):
        client.completions.create(model="plain", prompt="x", echo=True, stream=True)


OPENAI_ERRORS = [  # (route, body, status, words of the message, param)
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "unknown task", None),
    ("/v1/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "x"}, {"role": "user",
                                                                                                "content": "y"}]},
     400, "exactly one user message", None),
    ("/v1/chat/completions", {"model": "plain", "messages": [{"role": "wizard", "content": "x"}]}, 400, "role",
     "messages.0.role"),
    ("/v1/chat/completions", {"model": "plain", "messages": []}, 400, "at least 1 item", "messages"),
    ("/v1/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "x"}],
                              "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools is not supported",
     None),
    ("/v1/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "x"}], "max_tokens": 100_000}, 400,
     "max_tokens 100000 exceeds", None),
    ("/v1/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "x"}],
                              "max_completion_tokens": 5000}, 400, "max_completion_tokens 5000 exceeds", None),
    ("/v1/chat/completions", {"model": "act-as-chat", "messages": [{"role": "system", "content": "x"}]}, 400,
     "needs a user message", None),
    ("/v1/chat/completions", {"model": "plain", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400,
     "top_logprobs needs logprobs", None),
    ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "unknown task", None),
    ("/v1/completions", {"model": "plain", "prompt": "x", "max_tokens": 100_000}, 400, "max_tokens 100000 exceeds", None),
    ("/v1/completions", {"model": "plain", "prompt": "x", "logprobs": 9}, 400, "logprobs", "logprobs"),
]


@pytest.mark.parametrize("route, body, status, words, param", OPENAI_ERRORS)
def test_openai_routes_answer_errors_in_openais_shape(server, route: str, body: dict, status: int, words: str,
                                                      param: str | None) -> None:
    response = httpx.post(f"{server}{route}", json=body, timeout=30)
    error = response.json()["error"]
    assert response.status_code == status and set(error) == {"message", "type", "param", "code"}, response.text
    assert words in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["code"] == ("model_not_found" if status == 404 else None)


def test_completions_give_logprobs_too(server) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="unused")
    completion = client.completions.create(model="plain", prompt="a judge", max_tokens=5, logprobs=2)
    logprobs = completion.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 5
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(5)]
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


def test_the_api_documents_itself_at_docs_and_the_readme_says_so(server) -> None:
    page = httpx.get(f"{server}/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text and httpx.get(f"{server}/openapi.json").status_code == 200
    assert "`GET /docs`" in (Path(__file__).resolve().parents[1] / "README.md").read_text()
