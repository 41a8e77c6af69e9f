"""Everything a request's inputs must pass before they join a batch, on the engine's side of
the client (vLLM v1 keeps its input processor there too): a chat request fitted to its task's
format, the template or chat template rendered and tokenized, the verbalizers, the
parameters against the engine's limits, and each row against the model's positions. What can
fail fails here, for the whole request, before any of its rows runs."""

from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from promptmux.core.errors import InvalidRequestError, NoChatTemplateError
from promptmux.core.fields import GenerationParams, Input
from promptmux.models.inputs import encode_input, encode_task_input, text_ids
from promptmux.registry import PromptVersion, TaskKind, TaskSpec
from promptmux.serving.engine.batching import ClassificationRow, GenerationRow
from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.engine.limits import over_limit
from promptmux.serving.engine.prompt_cache import CachedPrompt

PositionCheck = Callable[[int, int, int, str], None]


@dataclass(frozen=True)
class EngineRequest:
    """A request as the engine client takes it: the task and the version routed to it, its
    inputs (each repeated `choices` times: OpenAI's `n`), the decoding parameters resolved
    against the task's defaults (None for a classification), what the client calls
    max_new_tokens, whether the inputs are chat conversations (fitted to the task's format),
    and whose rows they are (the scheduler's fair share)."""

    spec: TaskSpec
    manifest: PromptVersion
    inputs: list[Input]
    params: GenerationParams | None = None
    tokens_field: str = "max_new_tokens"
    conversation: bool = False
    choices: int = 1
    owner: str = "admin"
    weight: float = 1.0


class InputProcessor:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: EngineConfig, check_positions: PositionCheck) -> None:
        self.tokenizer, self.config, self.check_positions = tokenizer, config, check_positions

    def rows(self, request: EngineRequest, prompt: CachedPrompt) -> list[GenerationRow] | list[ClassificationRow]:
        """The request's rows, every check made (`PositionLimitError` names the virtual tokens,
        the input and the new tokens). The verbalizers and parameters are the same for every
        input: done once. Choice i of a seeded sampling request samples with seed + i."""
        spec = request.spec
        inputs = [self.fitted(spec, i) for i in request.inputs] if request.conversation else request.inputs
        if spec.kind is TaskKind.classification:
            verbalizers = self.verbalizers(spec.labels)
            longest = max(len(ids) for ids in verbalizers.values())
            return [ClassificationRow(prompt, self._checked(spec, i, prompt, longest, "verbalizer tokens"), verbalizers)
                    for i in inputs]
        params = request.params or spec.generation
        self.check_params(params, request.tokens_field)
        rows = []
        for i, text in enumerate(inputs):
            ids = self._checked(spec, text, prompt, params.max_new_tokens, request.tokens_field)
            reseeded = params if request.choices == 1 else _reseeded(params, i)
            row = GenerationRow(prompt, ids, reseeded)
            row.owner, row.weight = request.owner, request.weight
            rows.append(row)
        return rows

    def _checked(self, spec: TaskSpec, request: Input, prompt: CachedPrompt, new: int, new_field: str) -> list[int]:
        ids = self.encode_request(spec, request)
        self.check_positions(prompt.num_virtual_tokens, len(ids), new, new_field)
        return ids

    @staticmethod
    def fitted(spec: TaskSpec, request: Input) -> Input:
        """A chat request's input: the conversation for a chat-format task; for a plain-template
        task, the content of its one user message (more is refused, saying so)."""
        if spec.format == "chat" or isinstance(request, str):
            return request
        if [m.role for m in request] != ["user"]:
            roles = ", ".join(m.role for m in request)
            raise InvalidRequestError(f"task {spec.name!r} has a plain template: it takes exactly one user message as its "
                                      f"input; this request has {len(request)} message(s) ({roles})")
        return request[0].content

    def encode(self, text: str) -> list[int]:
        """Token ids of a rendered input (a trailing EOS some tokenizers append is dropped)."""
        return self._within_limits(encode_input(self.tokenizer, text))

    def encode_request(self, spec: TaskSpec, request: Input) -> list[int]:
        """Token ids of a task's request: a text framed by its template, or (a chat-format task) a
        conversation through the base model's chat template; the same function training uses."""
        try:
            ids = encode_task_input(self.tokenizer, spec, request)
        except NoChatTemplateError as exc:
            raise InvalidRequestError(str(exc)) from exc
        return self._within_limits(ids)

    def _within_limits(self, ids: list[int]) -> list[int]:
        if not ids:
            raise InvalidRequestError("the input is empty after tokenization")
        if len(ids) > self.config.max_input_tokens:
            raise InvalidRequestError(f"input has {len(ids)} tokens; the limit is {self.config.max_input_tokens}")
        return ids

    def check_params(self, params: GenerationParams, tokens_field: str = "max_new_tokens") -> None:
        """Refuse parameters past the engine's limits, naming the field as the client sent it."""
        if params.max_new_tokens > self.config.max_new_tokens:
            raise InvalidRequestError(over_limit(tokens_field, params.max_new_tokens, self.config.max_new_tokens))

    def verbalizers(self, labels: dict[str, str]) -> dict[str, list[int]]:
        """Each label's verbalizer as token ids (what `ClassificationRow` carries)."""
        return {label: text_ids(self.tokenizer, text, InvalidRequestError) for label, text in labels.items()}

    def token_text(self, token_id: int) -> str:
        """A token's text, special tokens included (log-probabilities name their tokens)."""
        return self.tokenizer.decode([token_id])


def _reseeded(params: GenerationParams, choice: int) -> GenerationParams:
    if params.seed is None or params.temperature == 0:
        return params
    return params.model_copy(update={"seed": (params.seed + choice) % 2**64})
