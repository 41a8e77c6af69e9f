"""Multitask prompt tuning (Wang et al.): a prompt shared by several tasks, `prompt_embeddings`
[n, hidden], and per task a low-rank factor, `prefix_task_cols` [tasks, n, rank] @
`prefix_task_rows` [tasks, rank, hidden]. A version serves one task (`task_id`): the shared
prompt times that task's factor, as a soft prompt. Imported, never trained here."""

from typing import Any

from promptmux.core.errors import InvalidArtifactError
from promptmux.methods.base import PeftMethod, Randn
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.methods.prompt import EMBEDDINGS, Prompt, ServingForm

TASK_COLS, TASK_ROWS = "prefix_task_cols", "prefix_task_rows"


class MultitaskPromptTuning(PeftMethod):
    name = "multitask_prompt_tuning"
    tensor_names = frozenset({EMBEDDINGS, TASK_COLS, TASK_ROWS})

    def check_layout(self, prompt: Prompt, source: str) -> None:
        super().check_layout(prompt, source)
        n, hidden = prompt.embeddings.shape
        cols, rows = prompt.tensors[TASK_COLS], prompt.tensors[TASK_ROWS]
        if cols.dim() != 3 or rows.dim() != 3 or cols.shape[0] != rows.shape[0] or cols.shape[1] != n \
                or rows.shape[2] != hidden or cols.shape[2] != rows.shape[1]:
            raise InvalidArtifactError(f"{source}: {TASK_COLS} {tuple(cols.shape)} and {TASK_ROWS} {tuple(rows.shape)} "
                                       f"do not fit {EMBEDDINGS} {tuple(prompt.embeddings.shape)} as [tasks, n, rank] and "
                                       "[tasks, rank, hidden]")
        tasks, rank = cols.shape[0], cols.shape[2]
        declared = {"num_tasks": prompt.peft_config.get("num_tasks", 1), "num_ranks": prompt.peft_config.get("num_ranks", 1)}
        for name, size in (("num_tasks", tasks), ("num_ranks", rank)):
            if declared[name] != size:  # PEFT builds its parameters from the config: loading these tensors fails
                raise InvalidArtifactError(f"{source}: adapter_config says {name} {declared[name]} but {TASK_COLS} is "
                                           f"{tuple(cols.shape)} ([tasks, n, rank]): PEFT cannot load it")
        if prompt.task_id is None or not 0 <= prompt.task_id < tasks:
            raise InvalidArtifactError(f"{source}: a multitask prompt of {tasks} tasks serves one of them: choose it with "
                                       f"--task-id 0..{tasks - 1} (got {prompt.task_id})")

    def serving_form(self, prompt: Prompt) -> ServingForm:
        t = prompt.task_id
        factor = prompt.tensors[TASK_COLS][t].float() @ prompt.tensors[TASK_ROWS][t].float()
        return ServingForm(prompt.embeddings.float() * factor, None)

    def task_id(self, config: dict[str, Any], asked: int | None) -> int | None:
        """An adapter of one task serves it without being told."""
        return 0 if asked is None and config.get("num_tasks") == 1 else asked

    def example(self, model: BaseModelFingerprint, n: int, randn: Randn) -> Prompt:
        return Prompt(self.name, {EMBEDDINGS: randn(n, model.hidden_size), TASK_COLS: randn(2, n, 4),
                                  TASK_ROWS: randn(2, 4, model.hidden_size)},
                      {"peft_type": self.peft_type, "num_virtual_tokens": n, "num_tasks": 2, "num_ranks": 4}, 1)


METHOD = MultitaskPromptTuning()
