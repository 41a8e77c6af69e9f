"""Examples as token ids, exactly as the serving engine will see them.

A training sequence is the rendered input (`encode_task_input`, the same function the
engine uses: the template, or for a chat-format task the base model's chat template around
it) followed by its target: the label's verbalizer for classification, the target text
and EOS for generation. Only the target tokens carry a loss. A generation target is
written as the model would continue the input: after a space when the template ends in
none ("Prompt:" + " Suggest ..."), so the prompt is not tuned towards word pieces that
never follow a colon.
"""

import torch
from transformers import PreTrainedTokenizerBase

from promptmux.core.errors import DataError, NoChatTemplateError
from promptmux.core.fields import Message
from promptmux.models.inputs import check_chat_template, encode_chat, encode_input, encode_task_input, text_ids
from promptmux.registry import TaskKind, TaskSpec
from promptmux.tasks.data import Example

IGNORE = -100



class TaskEncoder:
    def __init__(self, spec: TaskSpec, tokenizer: PreTrainedTokenizerBase, max_input_tokens: int,
                 max_output_tokens: int) -> None:
        self.spec, self.tokenizer = spec, tokenizer
        self.max_input_tokens, self.max_output_tokens = max_input_tokens, max_output_tokens
        self.verbalizers = {label: self.text_ids(v) for label, v in spec.labels.items()}
        self.has_chat_template = bool(getattr(tokenizer, "chat_template", None))
        if spec.format == "chat":
            try:
                check_chat_template(tokenizer, spec.base_model)
            except NoChatTemplateError as exc:
                raise DataError(str(exc)) from exc

    def text_ids(self, text: str) -> list[int]:
        return text_ids(self.tokenizer, text, DataError)

    def input_ids(self, text: str) -> list[int]:
        """The model input of `text`, as served."""
        return encode_task_input(self.tokenizer, self.spec, text)[-self.max_input_tokens:]

    def template_zero_shot_ids(self, text: str, instruction: str) -> list[int]:
        """The untuned model's input in the task's own form, the soft prompt's place taken by
        the instruction (a text task) or by nothing (a chat task: its system message and template)."""
        if self.spec.format == "chat":
            return self.input_ids(text)
        return encode_input(self.tokenizer, f"{instruction}\n{self.spec.render(text)}")[-self.max_input_tokens:]

    def chat_zero_shot_ids(self, text: str, instruction: str) -> list[int]:
        """The untuned model's best plain zero-shot form: its own chat template, the instruction,
        the input as the template frames it, and the answers it may give."""
        answers = " or ".join(word for word in self.chat_answers().values())
        content = f"{instruction}\n\n{self.spec.render(text)}\n\nAnswer with one word: {answers}."
        return encode_chat(self.tokenizer, [Message(role="user", content=content)])[-self.max_input_tokens:]

    def chat_answers(self) -> dict[str, str]:
        """Each label's verbalizer as a bare word, as an assistant would start its answer."""
        return {label: verbalizer.strip() or verbalizer for label, verbalizer in self.spec.labels.items()}

    def sequence(self, example: Example) -> tuple[list[int], int]:
        """(input + target ids, number of target tokens at the end)."""
        if self.spec.kind is TaskKind.classification:
            target = self.verbalizers[example.target]
        else:
            separated = self.spec.template.endswith((" ", "\n")) or example.target[:1].isspace()
            text = example.target if separated else f" {example.target}"
            target = self.text_ids(text)[: self.max_output_tokens] + [self.tokenizer.eos_token_id]
        return self.input_ids(example.input) + target, len(target)

    def training_item(self, example: Example) -> dict[str, list[int]]:
        ids, n_target = self.sequence(example)
        return {"input_ids": ids, "labels": [IGNORE] * (len(ids) - n_target) + ids[len(ids) - n_target:]}

    def collate(self, items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Right-pad a batch: `input_ids`, `attention_mask`, `labels` all `[B, longest]`."""
        width = max(len(item["input_ids"]) for item in items)
        ids = torch.full((len(items), width), self.tokenizer.pad_token_id)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE)
        for b, item in enumerate(items):
            n = len(item["input_ids"])
            ids[b, :n] = torch.tensor(item["input_ids"])
            mask[b, :n] = 1
            labels[b, :n] = torch.tensor(item["labels"])
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
