"""What PEFT computes for one request alone: the reference every engine test compares with."""

import functools

import torch
from peft import PeftModel
from transformers import RepetitionPenaltyLogitsProcessor

from promptmux.models.loading import load_model


@functools.lru_cache(maxsize=48)
def peft_model(base_model: str, version_dir: str, dtype: str = "float32") -> PeftModel:
    return PeftModel.from_pretrained(load_model(base_model, dtype=dtype), version_dir).eval()


def _forward(model: PeftModel, ids: torch.Tensor, task_id: int | None) -> torch.Tensor:
    """PEFT's full forward; a multitask prompt is told its task (`task_ids`)."""
    extra = {"task_ids": torch.tensor([task_id])} if task_id is not None else {}
    return model(input_ids=ids, **extra).logits


def peft_generate(
    base_model: str, version_dir: str, ids: list[int], max_new_tokens: int, repetition_penalty: float = 1.0,
    eos_ids: tuple[int, ...] = (1,), task_id: int | None = None,
) -> list[int]:
    """Greedy decoding the plainest way: PEFT's full forward over the whole sequence for every
    new token (no cache), with transformers' own repetition-penalty processor.

    Not `PeftModel.generate`: with transformers 5.24 and PEFT 0.21.2 its cached decoding
    drifts from this for every prompt-learning method (for prompt tuning from the third token
    on; 5.23 agreed with it token for token), so it is no longer a reference."""
    model = peft_model(base_model, version_dir)
    penalty = RepetitionPenaltyLogitsProcessor(repetition_penalty) if repetition_penalty != 1.0 else None
    sequence, tokens = list(ids), []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            inputs = torch.tensor([sequence])
            scores = _forward(model, inputs, task_id)[:, -1].float()
            if penalty is not None:
                scores = penalty(inputs, scores)
            token = int(scores.argmax(-1))
            if token in eos_ids:
                break
            tokens.append(token)
            sequence.append(token)
    return tokens


def peft_logprobs(base_model: str, version_dir: str, ids: list[int], task_id: int | None = None,
                  dtype: str = "float32") -> torch.Tensor:
    """log-softmax of every position's next-token logits for `ids` alone: `[len(ids), vocab]`."""
    model = peft_model(base_model, version_dir, dtype)
    with torch.no_grad():
        logits = _forward(model, torch.tensor([ids]), task_id)[0, -len(ids):]
    return torch.log_softmax(logits.float(), -1)
