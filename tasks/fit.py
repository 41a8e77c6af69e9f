"""The training loop: `transformers.Trainer` on a PEFT prompt-learning model.

Trainer brings gradient accumulation, bf16, learning-rate schedules, periodic validation,
early stopping and multi-GPU runs (`torchrun`, `accelerate launch`); what is ours is the
data, a rich progress bar, the learning curve, a warning when training loss collapses while
validation loss does not follow it, and keeping the best prompt: Trainer's own
`load_best_model_at_end` reloads an adapter from its checkpoint, which PEFT refuses for
prefix tuning (a projected prefix saves its output, not the MLP; peft#2256), so the
trainable parameters of the best validation pass are kept in memory and put back at the end.
"""

import importlib.util
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import PeftModel
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from transformers import (
    EarlyStoppingCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from transformers.integrations import TensorBoardCallback

from promptmux.core.errors import PromptmuxError
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.data import Example
from promptmux.tasks.encoding import TaskEncoder
from promptmux.tasks.progress import Paced

# A loss this many times, and this many nats, above the one it should match means trouble:
# training loss vs validation loss (memorising); validation vs held-out loss (the held-out
# data is not like the training data: seen as 0.0003 vs 0.99, where a healthy run had 0.22).
COLLAPSE_RATIO = 5.0
COLLAPSE_GAP = 0.1
DIVERGED_WINDOW, DIVERGED_RATIO, DIVERGED_GAP = 5, 3.0, 2.0  # a loss climbing well above its start stops the run
SHIFT_GAP = 0.5


@dataclass
class Curve:
    """Losses per optimizer step; validation at step 0 and every `eval_steps`."""

    step: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    warnings: list[str] = field(default_factory=list)


class _Examples(torch.utils.data.Dataset):
    def __init__(self, examples: list[Example], encoder: TaskEncoder) -> None:
        self.items = [encoder.training_item(e) for e in examples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.items[index]


class _RichProgress(TrainerCallback):
    """A rich progress bar with the running training loss and the last validation loss."""

    def __init__(self, console: Console, description: str) -> None:
        self.console, self.paced = console, Paced()  # off a terminal: a line every few seconds instead of a bar
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TextColumn("loss {task.fields[loss]:.4f}  val {task.fields[val]:.4f}"),
                                 TimeRemainingColumn(), console=console)
        self.description = description
        self.bar: TaskID | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.progress.start()
        self.bar = self.progress.add_task(self.description, total=state.max_steps, loss=math.nan, val=math.nan)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs) -> None:
        logs = logs or {}
        if "loss" in logs:
            self.progress.update(self.bar, loss=logs["loss"])
        if "eval_loss" in logs:
            self.progress.update(self.bar, val=logs["eval_loss"])

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.progress.update(self.bar, completed=state.global_step)
        if not self.console.is_terminal and self.paced():
            fields = self.progress.tasks[0].fields
            self.console.print(f"{self.description}: step {state.global_step}/{state.max_steps}, loss "
                               f"{fields['loss']:.4f}, val {fields['val']:.4f}", highlight=False)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        self.progress.stop()


class _Divergence(TrainerCallback):
    """Stop a run whose training loss has climbed well above where it started (the mean of
    the last few logged losses over `DIVERGED_RATIO` times the first few and `DIVERGED_GAP`
    above them): the learning rate is too high for the method, and later steps only make the
    prompt worse. The warning names the learning rate."""

    def __init__(self, lr: float, method: str, warnings: list[str]) -> None:
        self.lr, self.method, self.warnings, self.losses = lr, method, warnings, []

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, logs=None, **kwargs) -> None:
        if "loss" not in (logs or {}):
            return
        self.losses.append(logs["loss"])
        window = DIVERGED_WINDOW
        if len(self.losses) < 2 * window:
            return
        start, now = sum(self.losses[:window]) / window, sum(self.losses[-window:]) / window
        if now > DIVERGED_RATIO * start and now - start > DIVERGED_GAP:
            control.should_training_stop = True
            self.warnings.append(f"training stopped at step {state.global_step}: the loss climbed to {now:.2f} from "
                                 f"{start:.2f} at the start; learning rate {self.lr:g} is too high for {self.method} "
                                 "(try a tenth of it)")


class _BestPrompt(TrainerCallback):
    """Keep a copy of the trainable parameters at each new best validation loss; restore it at the end."""

    def __init__(self, model: PeftModel) -> None:
        self.model = model
        self.best_loss = math.inf
        self.best: dict[str, torch.Tensor] = {}

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None,
                    **kwargs) -> None:
        loss = (metrics or {}).get("eval_loss", math.inf)
        if loss < self.best_loss:
            self.best_loss = loss
            self.best = {name: p.detach().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        with torch.no_grad():
            for name, param in self.model.named_parameters():
                if name in self.best:
                    param.copy_(self.best[name])


def steps_per_epoch(config: TrainConfig, examples: int) -> int:
    return math.ceil(examples / (config.batch_size * config.grad_accum))


def eval_every(config: TrainConfig, per_epoch: int) -> int:
    """Optimizer steps between validation passes."""
    return max(1, per_epoch // config.evals_per_epoch)


def validation_passes(config: TrainConfig, examples: int) -> int:
    """The validation passes a run over `examples` makes when nothing stops it early (one at the start)."""
    per_epoch = steps_per_epoch(config, examples)
    return 1 + per_epoch * config.epochs // eval_every(config, per_epoch)


def _arguments(config: TrainConfig, per_epoch: int, checkpoints: Path, device: str) -> TrainingArguments:
    eval_steps = eval_every(config, per_epoch)
    return TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=config.warmup_ratio,
        num_train_epochs=config.epochs,
        eval_strategy="steps",
        eval_steps=eval_steps,
        eval_on_start=True,
        save_strategy="no",  # the best prompt is kept in memory (`_BestPrompt`)
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        prediction_loss_only=True,
        logging_steps=1,
        report_to=[name for name in config.report_to if name != "tensorboard"] or "none",
        disable_tqdm=True,
        remove_unused_columns=False,
        bf16=config.bf16,
        use_cpu=device == "cpu",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
    )


TRACKER_PACKAGES = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow",), "wandb": ("wandb",)}


def check_trackers(config: TrainConfig) -> None:
    """Refuse, before anything loads, a tracker whose library is not installed."""
    for name in config.report_to:
        if not any(importlib.util.find_spec(package) for package in TRACKER_PACKAGES[name]):
            raise PromptmuxError(f"--report-to {name} needs {TRACKER_PACKAGES[name][0]}: pip install 'promptmux[{name}]'")


def trackers(config: TrainConfig, work_dir: Path) -> list[TrainerCallback]:
    """Trainer's TensorBoard callback writing into the run's folder (`<run>/tensorboard`), which
    outlives the checkpoints; MLflow and W&B go through `report_to`."""
    if "tensorboard" not in config.report_to:
        return []
    callback = TensorBoardCallback()
    callback.logging_dir = str(work_dir / "tensorboard")
    return [callback]


def fit(model: PeftModel, encoder: TaskEncoder, train: list[Example], validation: list[Example], config: TrainConfig,
        work_dir: Path, console: Console, extra: Sequence[TrainerCallback] = ()) -> Curve:
    """Train the prompt; on return the model holds the prompt with the best validation loss.
    `extra` callbacks see every step too (a tuning trial reports its validation losses)."""
    per_epoch = steps_per_epoch(config, len(train))
    checkpoints = work_dir / "checkpoints"
    args = _arguments(config, per_epoch, checkpoints, model.device.type)
    diverged: list[str] = []
    callbacks: list[TrainerCallback] = [_RichProgress(console, f"training {encoder.spec.name}"), _BestPrompt(model),
                                        _Divergence(config.lr, config.method, diverged), *trackers(config, work_dir),
                                        *extra]
    if config.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    trainer = Trainer(model=model, args=args, train_dataset=_Examples(train, encoder),
                      eval_dataset=_Examples(validation, encoder), data_collator=encoder.collate, callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the rich bar shows the losses instead of printed dicts
    trainer.train()
    model.eval()
    shutil.rmtree(checkpoints, ignore_errors=True)
    curve = curve_from_history(trainer.state, per_epoch * config.epochs)
    for warning in diverged:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    curve.warnings[:0] = diverged
    return curve


def curve_from_history(state: TrainerState, planned_steps: int) -> Curve:
    curve = Curve()
    for entry in state.log_history:
        if "loss" in entry:
            curve.step.append(entry["step"])
            curve.train_loss.append(entry["loss"])
        if "eval_loss" in entry:
            curve.eval_step.append(entry["step"])
            curve.eval_loss.append(entry["eval_loss"])
    curve.best_step = curve.eval_step[curve.eval_loss.index(min(curve.eval_loss))]
    curve.stopped_early = state.global_step < planned_steps
    recent = curve.train_loss[-max(1, len(curve.train_loss) // 10):]
    train_loss, best_eval = sum(recent) / len(recent), min(curve.eval_loss)
    if far_above(best_eval, train_loss, COLLAPSE_GAP):
        curve.warnings.append(
            f"training loss fell to {train_loss:.4f} while the best validation loss is {best_eval:.4f}: the prompt "
            "memorises the training data; try fewer epochs, a lower learning rate or fewer virtual tokens"
        )
    return curve


def far_above(loss: float, reference: float, gap: float) -> bool:
    return loss > COLLAPSE_RATIO * reference and loss - reference > gap
