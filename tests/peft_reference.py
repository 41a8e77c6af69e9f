"""What PEFT computes for one request alone: the reference every engine test compares with."""

import functools

import torch
from peft import PeftModel

from registry.base_models import load_model


@functools.lru_cache(maxsize=32)
def peft_model(base_model: str, version_dir: str) -> PeftModel:
    return PeftModel.from_pretrained(load_model(base_model, dtype="float32"), version_dir).eval()


def peft_generate(
    base_model: str, version_dir: str, ids: list[int], max_new_tokens: int, repetition_penalty: float = 1.0,
    eos_ids: tuple[int, ...] = (1,),
) -> list[int]:
    model = peft_model(base_model, version_dir)
    inputs = torch.tensor([ids])
    with torch.no_grad():
        output = model.generate(
            input_ids=inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
            do_sample=False, repetition_penalty=repetition_penalty, pad_token_id=0,
        )
    tokens = output[0, len(ids):].tolist()
    for position, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[:position]
    return tokens


def peft_logprobs(base_model: str, version_dir: str, ids: list[int]) -> torch.Tensor:
    """log-softmax of every position's next-token logits for `ids` alone: `[len(ids), vocab]`."""
    model = peft_model(base_model, version_dir)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -len(ids):]
    return torch.log_softmax(logits.float(), -1)
