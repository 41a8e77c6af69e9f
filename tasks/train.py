"""Train a task's soft prompt with PEFT prompt tuning, evaluate it against the untuned base
model, and register it as the task's next version.

Classification: the loss covers the verbalizer tokens only; evaluation scores every
label's verbalizer by log-probability (tuned prompt vs the base model prompted with the
template and the init text) and reports accuracy, macro F1 and the confusion matrix.
Generation: causal-LM loss on the target text; evaluation by held-out loss and perplexity
and sample generations, before and after tuning.

Nothing is written to the registry until training and evaluation have succeeded.
"""

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from peft import get_peft_model  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn  # noqa: E402

from registry import PromptVersion, Registry, TaskKind, TaskSpec  # noqa: E402
from registry.base_models import encode_input, fingerprint, load_model, load_tokenizer  # noqa: E402
from registry.names import validate_alias  # noqa: E402
from tasks.data import DataError, Example  # noqa: E402
from tasks.prompt_init import prompt_config  # noqa: E402
from tasks.scores import classification_report  # noqa: E402

IGNORE = -100
SAMPLES = 3


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_model: str
    num_virtual_tokens: int = Field(20, ge=1, le=1024)
    init: Literal["random", "text", "sample-vocab"] = "text"
    init_text: str | None = None
    lr: float = Field(3e-2, gt=0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_input_tokens: int = Field(256, ge=1)
    max_output_tokens: int = Field(64, ge=1)
    seed: int = 42
    device: Literal["auto", "cuda", "cpu"] = "auto"
    trust_remote_code: bool = False


@dataclass
class TrainResult:
    manifest: PromptVersion
    metrics: dict
    curve_png: Path
    metrics_json: Path


def default_init_text(spec: TaskSpec) -> str:
    if spec.description:
        return spec.description
    if spec.kind is TaskKind.classification:
        return f"Classify the input as one of: {', '.join(spec.labels)}."
    return f"Complete the {spec.name} task."


class _Trainer:
    def __init__(self, spec: TaskSpec, config: TrainConfig) -> None:
        self.spec, self.config = spec, config
        device = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(config.seed)
        self.tokenizer = load_tokenizer(config.base_model, config.trust_remote_code)
        self.base = load_model(config.base_model, torch.float32, device, config.trust_remote_code)
        self.fingerprint = fingerprint(self.base)
        self.init_text = config.init_text or default_init_text(spec)
        self.model = get_peft_model(
            self.base, prompt_config(config.base_model, config.num_virtual_tokens, config.init, self.init_text)
        )
        self.verbalizers = {label: self._text_ids(v) for label, v in spec.labels.items()}

    def _text_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        if not ids:
            raise DataError(f"{text!r} tokenizes to nothing")
        return ids

    def _input_ids(self, text: str, prefix: str = "") -> list[int]:
        return encode_input(self.tokenizer, prefix + self.spec.render(text))[-self.config.max_input_tokens:]

    def sequence(self, example: Example) -> tuple[list[int], int]:
        """(input + target ids, number of target tokens at the end)."""
        if self.spec.kind is TaskKind.classification:
            target = self.verbalizers[example.target]
        else:
            target = self._text_ids(example.target)[: self.config.max_output_tokens] + [self.tokenizer.eos_token_id]
        return self._input_ids(example.input) + target, len(target)

    def batch(self, sequences: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        width = max(len(ids) for ids, _ in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        labels = torch.full((len(sequences), width), IGNORE)
        for b, (seq, n_target) in enumerate(sequences):
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
            labels[b, len(seq) - n_target: len(seq)] = torch.tensor(seq[len(seq) - n_target:])
        device = self.base.device
        return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}

    @torch.no_grad()
    def target_logprobs(self, sequences: list[tuple[list[int], int]], base_only: bool = False) -> list[float]:
        """Sum of log-probabilities of each sequence's target tokens."""
        sums: list[float] = []
        for start in range(0, len(sequences), self.config.batch_size):
            chunk = sequences[start: start + self.config.batch_size]
            inputs = self.batch(chunk)
            labels = inputs.pop("labels")
            if base_only:
                with self.model.disable_adapter():
                    logits = self.model(**inputs).logits
            else:
                logits = self.model(**inputs).logits
            logits = logits[:, -labels.shape[1]:][:, :-1].float()
            targets = labels[:, 1:]
            logprobs = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
            sums += (logprobs * (targets != IGNORE)).sum(-1).tolist()
        return sums

    def eval_loss(self, examples: list[Example]) -> float:
        sequences = [self.sequence(e) for e in examples]
        total = sum(self.target_logprobs(sequences))
        return -total / sum(n for _, n in sequences)

    def classify(self, examples: list[Example], base_only: bool) -> list[str]:
        labels = list(self.spec.labels)
        prefix = f"{self.init_text}\n" if base_only else ""
        sequences = [(self._input_ids(e.input, prefix) + self.verbalizers[label], len(self.verbalizers[label]))
                     for e in examples for label in labels]
        scores = self.target_logprobs(sequences, base_only)
        return [labels[max(range(len(labels)), key=lambda j: scores[i * len(labels) + j])] for i in range(len(examples))]

    @torch.no_grad()
    def samples(self, examples: list[Example]) -> list[dict]:
        outputs = []
        warnings.filterwarnings("ignore", message="Position ids are not supported")  # PEFT's, harmless here
        for example in examples[:SAMPLES]:
            ids = torch.tensor([self._input_ids(example.input)], device=self.base.device)
            generated = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.config.max_output_tokens,
                do_sample=False, repetition_penalty=1.5, pad_token_id=self.tokenizer.pad_token_id,
            )
            text = self.tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
            outputs.append({"input": example.input, "output": text})
        return outputs

    def evaluate(self, examples: list[Example], stage: str) -> dict:
        if self.spec.kind is TaskKind.classification:
            base_only = stage == "before"  # the untuned base model, prompted with template and init text
            gold, labels = [e.target for e in examples], list(self.spec.labels)
            report = classification_report(gold, self.classify(examples, base_only), labels)
            return {"base_model" if base_only else "tuned": report}
        loss = self.eval_loss(examples)
        return {f"eval_loss_{stage}": loss, f"perplexity_{stage}": math.exp(min(loss, 50.0)),
                f"samples_{stage}": self.samples(examples)}

    def fit(self, train: list[Example], held_out: list[Example], console: Console) -> dict[str, list]:
        optimizer = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.config.lr)
        generator = torch.Generator().manual_seed(self.config.seed)
        per_epoch = math.ceil(len(train) / (self.config.batch_size * self.config.grad_accum))
        total_steps = per_epoch * self.config.epochs
        eval_every = max(1, total_steps // 8)
        curve: dict[str, list] = {"step": [], "train_loss": [], "eval_step": [0], "eval_loss": [self.eval_loss(held_out)]}
        self.model.train()
        step = 0
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn()]
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task(f"training {self.spec.name}", total=total_steps, loss=float("nan"))
            for _ in range(self.config.epochs):
                order = torch.randperm(len(train), generator=generator).tolist()
                chunks = [order[i: i + self.config.batch_size] for i in range(0, len(order), self.config.batch_size)]
                for first in range(0, len(chunks), self.config.grad_accum):
                    group = chunks[first: first + self.config.grad_accum]
                    losses = []
                    for chunk in group:
                        loss = self.model(**self.batch([self.sequence(train[i]) for i in chunk])).loss / len(group)
                        loss.backward()
                        losses.append(loss.item() * len(group))
                    optimizer.step()
                    optimizer.zero_grad()
                    step += 1
                    curve["step"].append(step)
                    curve["train_loss"].append(sum(losses) / len(losses))
                    if step % eval_every == 0 or step == total_steps:
                        self.model.eval()
                        curve["eval_step"].append(step)
                        curve["eval_loss"].append(self.eval_loss(held_out))
                        self.model.train()
                    progress.update(bar, advance=1, loss=curve["train_loss"][-1])
        self.model.eval()
        return curve


def plot_curve(curve: dict[str, list], title: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(curve["step"], curve["train_loss"], label="train loss", linewidth=1)
    axis.plot(curve["eval_step"], curve["eval_loss"], "o-", label="eval loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (target tokens)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def train_task(
    spec: TaskSpec,
    train: list[Example],
    held_out: list[Example],
    config: TrainConfig,
    registry: Registry,
    output_dir: Path,
    data_fingerprint: str,
    alias: str | None = None,
    note: str = "",
    console: Console | None = None,
) -> TrainResult:
    """Train, evaluate, write the learning curve and metrics, then register the new version."""
    console = console or Console(stderr=True)
    if alias:
        validate_alias(alias)
    if spec.kind is TaskKind.classification:
        unknown = sorted({e.target for e in train + held_out} - set(spec.labels))
        if unknown:
            raise DataError(f"targets {unknown} are not labels of {spec.name!r} ({', '.join(spec.labels)})")
    existing = registry.get_task(spec.name) if registry.has_task(spec.name) else None
    trainer = _Trainer(spec, config)
    if existing and existing.base_fingerprint.differences(trainer.fingerprint):
        raise DataError(f"task {spec.name!r} is registered for another base model ({existing.spec.base_model})")
    started = time.time()
    before = trainer.evaluate(held_out, "before")
    curve = trainer.fit(train, held_out, console)
    after = trainer.evaluate(held_out, "after")
    metrics = {**before, **after, "train_examples": len(train), "eval_examples": len(held_out),
               "final_train_loss": curve["train_loss"][-1], "final_eval_loss": curve["eval_loss"][-1],
               "train_seconds": round(time.time() - started, 2)}
    if spec.kind is TaskKind.classification:
        metrics.update(accuracy=after["tuned"]["accuracy"], macro_f1=after["tuned"]["macro_f1"],
                       base_accuracy=before["base_model"]["accuracy"], base_macro_f1=before["base_model"]["macro_f1"])
    output_dir.mkdir(parents=True, exist_ok=True)
    curve_png, metrics_json = output_dir / "learning_curve.png", output_dir / "metrics.json"
    plot_curve(curve, f"{spec.name} on {config.base_model}", curve_png)
    metrics_json.write_text(json.dumps({"metrics": metrics, "curve": curve, "config": config.model_dump()}, indent=2))

    if existing is None:
        registry.create_task(spec, trainer.fingerprint, exist_ok=True)
    parent = registry.latest(spec.name).version if registry.versions(spec.name, include_archived=False) else None
    manifest = registry.register(
        spec.name,
        trainer.model.get_prompt_embedding_to_save("default").detach(),
        trainer.fingerprint,
        init_method=config.init,
        init_text=trainer.init_text if config.init == "text" else None,
        training=config.model_dump(),
        metrics=metrics,
        data_fingerprint=data_fingerprint,
        parent_version=parent,
        note=note,
    )
    if alias:
        registry.set_alias(spec.name, alias, manifest.version)
    return TrainResult(manifest, metrics, curve_png, metrics_json)
