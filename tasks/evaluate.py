"""Held-out evaluation of a prompt-tuned model, before and after tuning.

Classification: every label's verbalizer is scored by log-probability after the input.
"Before" is the untuned base model in two forms, both reported so neither is hidden: its
best plain zero-shot form, the fair baseline (its own chat template, the task's
instruction, the input and the answers it may give, scored as the first word of the
assistant's answer; the template form where the model has no chat template), and the
soft prompt's own form without the soft prompt (the template after the instruction; a
chat-format task's own rendering), the watsonx tutorial's comparison. Generation: held-out
loss and perplexity, and sample generations (the PEFT tutorial's check).
"""

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
from peft import PeftModel
from rich.console import Console
from rich.progress import track

from promptmux.registry import TaskKind
from promptmux.tasks.data import Example
from promptmux.tasks.encoding import TaskEncoder
from promptmux.tasks.scores import classification_report

SAMPLES = 3


class Evaluator:
    def __init__(self, model: PeftModel, encoder: TaskEncoder, init_text: str, batch_size: int,
                 console: Console | None = None) -> None:
        self.model, self.encoder, self.init_text, self.batch_size = model, encoder, init_text, batch_size
        self.console = console or Console(stderr=True)

    @torch.no_grad()
    def _logits(self, sequences: list[list[int]], base_only: bool) -> Iterator[tuple[int, torch.Tensor]]:
        """(index of the chunk's first sequence, logits `[B, longest, vocab]` of its input positions)."""
        side = "untuned base model" if base_only else "soft prompt"
        starts = range(0, len(sequences), self.batch_size)
        for start in track(starts, f"scoring {len(sequences)} sequences ({side})", console=self.console, transient=True):
            batch = self.encoder.collate([{"input_ids": s, "labels": s} for s in sequences[start: start + self.batch_size]])
            del batch["labels"]
            batch = {k: v.to(self.model.device) for k, v in batch.items()}
            with self.model.disable_adapter() if base_only else contextlib.nullcontext():
                logits = self.model(**batch).logits
            yield start, logits[:, -batch["input_ids"].shape[1]:].float()  # drop the virtual-token positions

    def target_logprob_sums(self, sequences: list[tuple[list[int], int]], base_only: bool = False) -> list[float]:
        """Sum of the log-probabilities of each sequence's last `n` (target) tokens."""
        sums = []
        for start, logits in self._logits([ids for ids, _ in sequences], base_only):
            for b, (ids, n) in enumerate(sequences[start: start + len(logits)]):
                logprobs = torch.log_softmax(logits[b, len(ids) - n - 1: len(ids) - 1], -1)
                sums.append(float(logprobs[torch.arange(n), torch.tensor(ids[len(ids) - n:])].sum()))
        return sums

    def eval_loss(self, examples: list[Example]) -> float:
        sequences = [self.encoder.sequence(e) for e in examples]
        return -sum(self.target_logprob_sums(sequences)) / sum(n for _, n in sequences)

    def label_scores(self, inputs: list[list[int]], verbalizers: dict[str, list[int]], base_only: bool) -> list[list[float]]:
        """Log-probability of every label's verbalizer after each input. Single-token
        verbalizers need one forward per input; longer ones one per (input, label)."""
        labels = list(verbalizers)
        if all(len(v) == 1 for v in verbalizers.values()):
            scores = []
            for start, logits in self._logits(inputs, base_only):
                for b, ids in enumerate(inputs[start: start + len(logits)]):
                    row = torch.log_softmax(logits[b, len(ids) - 1], -1)
                    scores.append([float(row[verbalizers[label][0]]) for label in labels])
        else:
            flat = self.target_logprob_sums(
                [(ids + verbalizers[label], len(verbalizers[label])) for ids in inputs for label in labels], base_only
            )
            scores = [flat[i * len(labels): (i + 1) * len(labels)] for i in range(len(inputs))]
        return scores

    def classify(self, examples: list[Example], inputs: list[list[int]], verbalizers: dict[str, list[int]],
                 base_only: bool) -> tuple[dict, float]:
        """The classification report of `inputs` scored with `verbalizers`, and the loss of the gold labels."""
        labels = list(verbalizers)
        scores = self.label_scores(inputs, verbalizers, base_only)
        predicted = [labels[max(range(len(labels)), key=row.__getitem__)] for row in scores]
        report = classification_report([e.target for e in examples], predicted, labels)
        gold = [(row[labels.index(e.target)], len(verbalizers[e.target])) for row, e in zip(scores, examples)]
        return report, -sum(score for score, _ in gold) / sum(n for _, n in gold)

    @torch.no_grad()
    def samples(self, examples: list[Example]) -> list[dict]:
        warnings.filterwarnings("ignore", message="Position ids are not supported")  # PEFT's, harmless here
        params, tokenizer = self.encoder.spec.generation, self.encoder.tokenizer
        outputs = []
        for example in track(examples[:SAMPLES], "generating sample outputs", console=self.console, transient=True):
            ids = torch.tensor([self.encoder.input_ids(example.input)], device=self.model.device)
            # use_cache=False: with transformers 5.24 and PEFT 0.21.2, PEFT's cached decoding of
            # a prompt-tuned model drifts after the second token; a few samples can afford the full forward.
            generated = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, use_cache=False,
                max_new_tokens=min(params.max_new_tokens, self.encoder.max_output_tokens),
                repetition_penalty=params.repetition_penalty, pad_token_id=tokenizer.pad_token_id,
            )
            text = tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True)
            outputs.append({"input": example.input, "output": text})
        return outputs

    def evaluate(self, examples: list[Example], stage: str) -> dict:
        if self.encoder.spec.kind is TaskKind.classification:
            return self._classification(examples, stage)
        loss = self.eval_loss(examples)
        return {f"eval_loss_{stage}": loss, f"perplexity_{stage}": math.exp(min(loss, 50.0)),
                f"samples_{stage}": self.samples(examples)}

    def _classification(self, examples: list[Example], stage: str) -> dict:
        """After tuning: the tuned prompt. Before: the untuned model in its template form and,
        where it has a chat template, in its chat zero-shot form (the fair baseline). The loss
        (the training loss on the held-out set, what the validation loss is compared with) is
        the soft-prompt form's."""
        encoder = self.encoder
        if stage == "after":
            report, loss = self.classify(examples, [encoder.input_ids(e.input) for e in examples], encoder.verbalizers, False)
            return {"tuned": report, "eval_loss_after": loss}
        template, loss = self.classify(examples, [encoder.template_zero_shot_ids(e.input, self.init_text) for e in examples],
                                       encoder.verbalizers, True)
        result = {"template_base_model": template, "base_model": template, "base_form": "template", "eval_loss_before": loss}
        if encoder.has_chat_template:
            answers = {label: encoder.text_ids(word) for label, word in encoder.chat_answers().items()}
            chat, _ = self.classify(examples, [encoder.chat_zero_shot_ids(e.input, self.init_text) for e in examples],
                                    answers, True)
            result.update(base_model=chat, base_form="chat zero-shot")
        return result
