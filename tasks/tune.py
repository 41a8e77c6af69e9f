"""`promptmux tune`: a task's best prompt, chosen on validation across PEFT methods and
settings, its trials spread over a Ray cluster by Ray Tune.

The search is a list of trial settings (method, learning rate, virtual tokens, epochs, prompt
initialisation) drawn without replacement from a search space with a seed: the same command
draws the same trials. Each trial trains with `fit`, the loop `promptmux train` runs, on the
training data's fit share, and reports its validation loss at every validation pass; ASHA
stops the trials whose loss trails the others' at the same pass. The choice is the trial
with the lowest validation loss, never the test set. The chosen settings are then trained
once more here by `train_task`, seeded as the trial was and on as many threads, so the same
prompt: it evaluates the held-out (test) set, once, and registers the version as `promptmux
train` does, with every trial's row in its metrics (`metrics.tuning`).

Ray Tune keeps the experiment's state under the run folder: `--resume` restores it, and no
trial that finished runs again.
"""

import itertools
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from pydantic import Field, ValidationError
from rich.console import Console
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from promptmux.core.errors import PromptmuxError, describe
from promptmux.core.strict_model import StrictModel
from promptmux.registry import Registry, TaskSpec
from promptmux.tasks.config import TrainConfig, TrainMethod
from promptmux.tasks.data import Example, split
from promptmux.tasks.fit import fit, validation_passes
from promptmux.tasks.prompt_init import prompt_model
from promptmux.tasks.train import TrainResult, train_task

EXPERIMENT = "search"


class MethodSearch(StrictModel):
    lr: list[float] = Field(min_length=1, description="learning rates to try with this method")


class SearchSpace(StrictModel):
    """What a search draws its trials from. The default is what docs/quality.md measured on
    dog grooming: each method's learning rates around the ones that worked (prompt tuning near
    0.03, P-tuning and prefix tuning ten times lower), a short and a longer prompt, one to
    three epochs, and prompt tuning's prompt started from text or at random."""

    methods: dict[TrainMethod, MethodSearch] = Field(min_length=1)
    num_virtual_tokens: list[int] = Field(min_length=1)
    epochs: list[int] = Field(min_length=1)
    init: list[Literal["text", "random", "sample-vocab"]] = Field(min_length=1, description="prompt tuning only")

    def settings(self) -> list["TrialSettings"]:
        """Every combination, in a fixed order."""
        combos = []
        for method, search in self.methods.items():
            inits = self.init if method == "prompt" else ["random"]
            for lr, tokens, epochs, init in itertools.product(search.lr, self.num_virtual_tokens, self.epochs, inits):
                combos.append(TrialSettings(method=method, lr=lr, num_virtual_tokens=tokens, epochs=epochs, init=init))
        return combos


DEFAULT_SEARCH = SearchSpace(
    methods={"prompt": MethodSearch(lr=[0.1, 0.03, 0.01]), "p-tuning": MethodSearch(lr=[0.01, 0.003, 0.001]),
             "prefix": MethodSearch(lr=[0.003, 0.001, 0.0003])},
    num_virtual_tokens=[8, 20], epochs=[1, 2, 3], init=["text", "random"],
)


class TrialSettings(StrictModel):
    method: TrainMethod
    lr: float = Field(gt=0)
    num_virtual_tokens: int = Field(ge=1)
    epochs: int = Field(ge=1)
    init: Literal["text", "random", "sample-vocab"]

    def label(self) -> str:
        init = f", init {self.init}" if self.method == "prompt" else ""
        return f"{self.method} lr {self.lr:g}, {self.num_virtual_tokens} tokens, {self.epochs} epoch(s){init}"


def read_search(path: Path) -> SearchSpace:
    """A YAML search file (SearchSpace's fields; those left out keep the default's)."""
    try:
        fields = yaml.safe_load(path.read_text()) or {}
        space = DEFAULT_SEARCH.model_validate({**DEFAULT_SEARCH.model_dump(), **fields})
    except (OSError, yaml.YAMLError) as exc:
        raise PromptmuxError(f"cannot read search file {path}: {exc}") from exc
    except ValidationError as exc:
        raise PromptmuxError(f"search file {path}: {describe(exc.errors())}") from exc
    return space


def draw_trials(space: SearchSpace, trials: int, seed: int) -> list[TrialSettings]:
    """`trials` settings drawn without replacement, the methods taking turns so that each is
    tried; the same seed draws the same list."""
    rng = random.Random(seed)
    by_method = {method: rng.sample(group, len(group)) for method, group in (
        (method, [s for s in space.settings() if s.method == method]) for method in space.methods)}
    drawn: list[TrialSettings] = []
    while len(drawn) < trials and any(by_method.values()):
        for queue in by_method.values():
            if queue and len(drawn) < trials:
                drawn.append(queue.pop())
    return drawn


def _report(**fields: Any) -> None:
    import ray
    from ray import tune

    tune.report({**fields, "node": ray.get_runtime_context().get_node_id()})


class _ReportToTune(TrainerCallback):
    """Each validation pass's loss to Ray Tune, whose scheduler may stop the trial there."""

    def __init__(self) -> None:
        self.best = float("inf")

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None,
                    **kwargs) -> None:
        loss = (metrics or {}).get("eval_loss", float("inf"))
        self.best = min(self.best, loss)
        _report(val_loss=loss, best_val_loss=self.best, step=state.global_step)


def trial_config(base: TrainConfig, settings: TrialSettings, lr_from: str) -> TrainConfig:
    """The training settings of a trial: the command's, with the trial's over them."""
    fields = {**base.model_dump(), **settings.model_dump(), "lr_from": lr_from}
    if settings.init != "text":
        fields["init_text"] = None
    return TrainConfig.model_validate(fields)


def run_trial(config: dict, spec: TaskSpec, fit_set: list[Example], validation: list[Example], base: TrainConfig,
              threads: int) -> None:
    """One trial, in a Ray worker: train with its settings, reporting as it goes."""
    torch.set_num_threads(threads)
    settings = TrialSettings.model_validate({k: v for k, v in config["trial"].items() if k != "index"})
    train_config = trial_config(base, settings, "the search")
    model, encoder, _ = prompt_model(spec, train_config)
    with tempfile.TemporaryDirectory(prefix="promptmux-trial-") as work:
        curve = fit(model, encoder, fit_set, validation, train_config, Path(work), Console(quiet=True), [_ReportToTune()])
    best = min(curve.eval_loss)  # ran to its end (ASHA stops a trial before this line): said so, with how it ended
    _report(val_loss=best, best_val_loss=best, step=curve.step[-1] if curve.step else 0, finished=True,
            stopped_early=curve.stopped_early)


@dataclass
class TuneResult:
    trials: list[dict[str, Any]]
    chosen: dict[str, Any]
    stopped_by_asha: int
    wall_s: float
    train: TrainResult


def tune_task(spec: TaskSpec, train: list[Example], held_out: list[Example], base: TrainConfig, registry: Registry,
              output_dir: Path, data_fingerprint: str, *, trials: int, search: SearchSpace, address: str | None = None,
              resume: bool = False, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, alias: str | None = None,
              console: Console | None = None) -> TuneResult:
    """Run the search (or `resume` it), choose on validation, train the choice again, evaluate
    it on `held_out` once and register it."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Ray Tune's own tables would fill stdout; ours say it instead
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from promptmux.tasks.tune_progress import TrialProgress

    console = console or Console(stderr=True)
    started = time.monotonic()
    drawn = draw_trials(search, trials, base.seed)
    fit_set, validation = split(train, base.validation_fraction, base.seed)
    threads = max(1, int(cpus_per_trial))
    state = (output_dir / EXPERIMENT).resolve()
    if resume and not (state / "tuner.pkl").exists():
        raise PromptmuxError(f"--resume: no search to resume under {output_dir} (its state is {state})")
    if not resume and state.exists():
        raise PromptmuxError(f"{state} holds a search already: --resume it, or choose another --output-dir")
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        else:
            ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, spec=spec, fit_set=fit_set, validation=validation, base=base,
                             threads=threads),
        {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    cluster = ray.cluster_resources()
    concurrency = max(1, int(cluster.get("CPU", 1) // cpus_per_trial))
    if gpus_per_trial:
        concurrency = min(concurrency, max(1, int(cluster.get("GPU", 0) // gpus_per_trial)))
    passes = max(validation_passes(base.model_copy(update={"epochs": s.epochs}), len(fit_set)) for s in drawn)
    progress = TrialProgress(len(drawn))
    if resume:
        tuner = tune.Tuner.restore(str(state), trainable=trainable, resume_errored=True)
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search([{"index": i, **s.model_dump()} for i, s in enumerate(drawn)])},
            tune_config=tune.TuneConfig(
                metric="val_loss", mode="min", max_concurrent_trials=concurrency, reuse_actors=True,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=passes + 1, grace_period=2,
                                        reduction_factor=2)),  # + 1: a trial that ran to its end says so
            run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(state.parent), verbose=0, callbacks=[progress]),
        )
    console.print(f"tuning {spec.name}: {len(drawn)} trials on {base.base_model}, {concurrency} at a time "
                  f"({cpus_per_trial:g} CPU each); ASHA stops those that trail", highlight=False)
    grid = tuner.fit()
    table = trial_table(grid)
    finished = [row for row in table if row["best_val_loss"] is not None]
    if not finished:
        raise PromptmuxError(f"no trial of the search finished (see {state})")
    chosen = min(finished, key=lambda row: (row["best_val_loss"], row["trial"]))
    console.print(f"chosen on validation: {TrialSettings.model_validate(chosen['settings']).label()} (validation loss "
                  f"{chosen['best_val_loss']:.4f}); training it again to evaluate on the held-out set once",
                  highlight=False)
    winner = trial_config(base, TrialSettings.model_validate(chosen["settings"]), "the search's choice")
    wall_s = round(time.monotonic() - started, 1)
    tuning = {"trials": table, "chosen": chosen["trial"],
              "stopped_by_asha": sum(row["stopped_early"] == "asha" for row in table),
              "search_wall_s": wall_s, "experiment": str(state)}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # as the trial ran: the same sums, the same prompt
    try:
        result = train_task(spec, train, held_out, winner, registry, output_dir / "chosen", data_fingerprint, alias,
                            note=f"chosen by promptmux tune over {len(table)} trials", console=console,
                            extra_metrics={"tuning": tuning})
    finally:
        torch.set_num_threads(previous_threads)
    again = result.metrics["best_validation_loss"]
    if abs(again - chosen["best_val_loss"]) > 1e-4 * max(1.0, abs(again)):
        console.print(f"[yellow]warning:[/yellow] trained again, the chosen settings reached validation loss {again:.5f}, "
                      f"not the trial's {chosen['best_val_loss']:.5f} (another device or library version?)", highlight=False)
    return TuneResult(table, chosen, tuning["stopped_by_asha"], wall_s, result)


def trial_table(grid: Any) -> list[dict[str, Any]]:
    """One row per trial, in the order drawn: its settings, best validation loss, steps run,
    validation passes, what stopped it early (ASHA, or the loop's own early stopping), its
    Ray node, and whether it failed."""
    rows = []
    for result in grid:
        trial = dict(result.config["trial"])
        index = trial.pop("index")
        reports = [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")
        passes = [r for r in reports if str(r.get("finished")) != "True" and "val_loss" in r]
        final = next((r for r in reports if str(r.get("finished")) == "True"), None)
        if result.error or not passes:
            stopped = None
        elif final is None:
            stopped = "asha"  # the trial never reached its last line
        else:
            stopped = "early stopping" if str(final.get("stopped_early")) == "True" else None
        rows.append({
            "trial": index, "settings": trial,
            "best_val_loss": round(float(min(r["val_loss"] for r in passes)), 5) if passes else None,
            "steps": int(max(r["step"] for r in passes)) if passes else 0, "validation_passes": len(passes),
            "stopped_early": stopped, "node": passes[-1].get("node") if passes else None,
            "status": "error" if result.error else "done",
        })
    return sorted(rows, key=lambda row: row["trial"])
