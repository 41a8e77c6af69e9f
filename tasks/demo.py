"""`promptmux demo`: a walk-through of the registry on the embedded default model.

It creates two tasks, registers soft prompts initialised by PEFT from text, points
aliases, sets a 50/50 rollout, exports a version as a PEFT adapter and loads it back
with `PeftModel.from_pretrained`, then verifies the whole registry.
"""

import tempfile
from typing import Annotated

import torch
import typer
from peft import PeftModel

from registry import Registry, RolloutSpec, RolloutVariant, TaskSpec
from registry.base_models import DEFAULT_BASE_MODEL, fingerprint, load_model, load_tokenizer
from registry.cli import BaseModelOption, console, list_tasks, show
from tasks.prompt_init import initial_prompt

DEMO_TASKS = (
    (
        TaskSpec(
            name="review-satisfaction",
            kind="classification",
            template="Comment: {input}\nSatisfaction:\n",
            labels={"0": "0", "1": "1"},
            base_model=DEFAULT_BASE_MODEL,
            description="Is the customer of a dog groomer satisfied?",
        ),
        ("Classify the satisfaction of this review", "Was the customer happy with the groomer"),
    ),
    (
        TaskSpec(name="act-as", template="Act as: {input}\nPrompt:", base_model=DEFAULT_BASE_MODEL),
        ("Write a prompt that makes the assistant act as the given role",),
    ),
)


def demo(
    registry: Annotated[str | None, typer.Option("--registry", help="registry to fill (default: a new temporary one)")] = None,
    base_model: BaseModelOption = None,
    num_virtual_tokens: Annotated[int, typer.Option(help="soft-prompt length")] = 8,
) -> None:
    """Walk through the registry on the embedded model: register, alias, roll out, export, verify."""
    model_id = base_model or DEFAULT_BASE_MODEL
    uri = registry or tempfile.mkdtemp(prefix="promptmux-demo-")
    reg = Registry(uri)
    console.rule(f"promptmux demo — registry {reg.uri}, base model {model_id} (random weights: outputs are noise)")
    model = load_model(model_id, dtype="float32")
    base = fingerprint(model)
    for spec, init_texts in DEMO_TASKS:
        spec = spec.model_copy(update={"base_model": model_id})
        reg.create_task(spec, base, exist_ok=True)
        parent = None
        for text in init_texts:
            prompt = initial_prompt(model, model_id, num_virtual_tokens, "text", text)
            manifest = reg.register(spec.name, prompt, base, init_method="text", init_text=text, parent_version=parent)
            console.print(f"registered {spec.name} version {manifest.version} (init text {text!r})")
            parent = manifest.version
    first, second = (v.version for v in reg.versions("review-satisfaction")[-2:])
    reg.set_alias("review-satisfaction", "production", first)
    reg.set_alias("review-satisfaction", "staging", second)
    reg.set_rollout(
        "review-satisfaction",
        RolloutSpec(variants=[RolloutVariant(version=first, weight=50), RolloutVariant(version=second, weight=50)]),
    )
    list_tasks(registry=reg.uri)
    show("review-satisfaction", registry=reg.uri)

    export_dir = tempfile.mkdtemp(prefix="promptmux-export-")
    reg.export("review-satisfaction", second, export_dir)
    tokenizer = load_tokenizer(model_id)
    peft_model = PeftModel.from_pretrained(model, export_dir)
    text = DEMO_TASKS[0][0].render("The groomer was gentle and my dog looks great")
    with torch.no_grad():
        logits = peft_model(**tokenizer(text, return_tensors="pt")).logits[0, -1]
    console.print(f"exported version {second} to {export_dir}; PeftModel.from_pretrained loads it: "
                  f"next-token logits shape {tuple(logits.shape)}")
    results = reg.verify()
    console.print(f"verify: {sum(r.ok for r in results)} of {len(results)} entries intact")
