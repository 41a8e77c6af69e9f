"""A model's input as promptmux feeds it everywhere (training, evaluation, serving).

A text task's input is its template, rendered and tokenized with the tokenizer's special
tokens; a chat-format task's is a conversation through the model's own chat template.
"""

from transformers import PreTrainedTokenizerBase

from promptmux.core.errors import InvalidConversationError, NoChatTemplateError
from promptmux.core.fields import Message
from promptmux.registry.schemas import TaskSpec


def text_ids(tokenizer: PreTrainedTokenizerBase, text: str, error: type[Exception]) -> list[int]:
    """Token ids of a text that follows other tokens (a verbalizer, a target), without special
    tokens; raises `error` when the text tokenizes to nothing."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        raise error(f"{text!r} tokenizes to nothing")
    return ids


def check_chat_template(tokenizer: PreTrainedTokenizerBase, model_id: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise NoChatTemplateError(f"{model_id} has no chat template: a chat-format task needs one (use format text, or "
                                  "a base model whose tokenizer has a chat template)")


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """Token ids of a conversation through the model's own chat template, with the generation
    prompt: the model is to answer as the assistant."""
    check_chat_template(tokenizer, getattr(tokenizer, "name_or_path", "the base model"))
    return list(tokenizer.apply_chat_template([m.model_dump() for m in messages], add_generation_prompt=True,
                                              tokenize=True, return_dict=False))


def encode_task_input(tokenizer: PreTrainedTokenizerBase, spec: TaskSpec, request: "str | list[Message]") -> list[int]:
    """A task's model input for a request, as promptmux feeds it everywhere (training,
    evaluation, serving): a text is framed by the template (a chat-format task: as the user
    message of a conversation); a conversation is for chat-format tasks only."""
    if spec.format == "chat":
        messages = [Message(role="user", content=request)] if isinstance(request, str) else request
        return encode_chat(tokenizer, spec.conversation(messages))
    if not isinstance(request, str):
        raise InvalidConversationError(f"task {spec.name!r} takes a text, not a conversation")
    return encode_input(tokenizer, spec.render(request))


def encode_input(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a model input as promptmux feeds it everywhere (training, evaluation,
    serving): the tokenizer's special tokens, minus a trailing EOS that some tokenizers
    (T5/ByT5) append, since the model is to continue after the input."""
    ids = tokenizer(text, add_special_tokens=True).input_ids
    if len(ids) > 1 and ids[-1] == tokenizer.eos_token_id:
        ids = ids[:-1]
    return ids
