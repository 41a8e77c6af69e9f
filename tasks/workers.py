"""Training on more than one worker: `promptmux train --workers N` runs the same Trainer
loop (`fit`) data-parallel on Ray Train's `TorchTrainer`, one process per worker.

Ray Train starts the workers and their process group (gloo on CPUs, NCCL on GPUs); Trainer
sees it and wraps the prompt model in DistributedDataParallel, so each worker trains on its
share of every batch and the gradients are averaged. Every worker builds the model from the
same seed and keeps its best validation pass (the validation loss is averaged too), so they
end with the same prompt; the first hands it back, with its learning curve, through a Ray
Train checkpoint, and the command copies it into its own model, which it then evaluates and
registers as a one-worker run would.
"""

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from peft import PeftModel
from rich.console import Console
from safetensors.torch import load_file, save_file

from promptmux.registry import TaskSpec
from promptmux.tasks.config import TrainConfig
from promptmux.tasks.data import Example
from promptmux.tasks.encoding import TaskEncoder
from promptmux.tasks.fit import Curve, fit
from promptmux.tasks.prompt_init import prompt_model

PROMPT_FILE, CURVE_FILE = "prompt.safetensors", "curve.json"


def _worker_loop(settings: dict) -> None:
    """One worker: the model from the seed, `fit` on its share, and (the first worker) the
    trained parameters and the curve back as a checkpoint."""
    import ray.train

    spec, config = TaskSpec.model_validate(settings["spec"]), TrainConfig.model_validate(settings["config"])
    torch.set_num_threads(settings["threads"])
    model, encoder, _ = prompt_model(spec, config)
    with tempfile.TemporaryDirectory(prefix="promptmux-worker-") as work:
        curve = fit(model, encoder, settings["train"], settings["validation"], config, Path(work), Console(quiet=True))
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report({"best_val_loss": min(curve.eval_loss)})
            return
        save_file({name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad},
                  str(Path(work) / PROMPT_FILE))
        (Path(work) / CURVE_FILE).write_text(json.dumps(asdict(curve)))
        ray.train.report({"best_val_loss": min(curve.eval_loss)}, checkpoint=ray.train.Checkpoint.from_directory(work))


def fit_on_workers(model: PeftModel, encoder: TaskEncoder, train: list[Example], validation: list[Example],
                   config: TrainConfig, work_dir: Path, console: Console, *, workers: int,
                   cpus_per_worker: float = 1.0) -> Curve:
    """`fit`, data-parallel on `workers` Ray Train workers; on return `model` holds the prompt
    they trained (its best validation pass) and the curve is theirs."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    use_gpu = model.device.type == "cuda"
    console.print(f"training on {workers} workers (Ray Train, {'NCCL' if use_gpu else 'gloo'})", highlight=False)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": encoder.spec.model_dump(mode="json"), "config": config.model_dump(mode="json"),
                           "train": train, "validation": validation, "threads": max(1, int(cpus_per_worker))},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker=None if use_gpu else {"CPU": cpus_per_worker}),
        run_config=RunConfig(name="workers", storage_path=str((work_dir / "ray-train").resolve())),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as folder:
        state = load_file(str(Path(folder) / PROMPT_FILE))
        curve = Curve(**json.loads((Path(folder) / CURVE_FILE).read_text()))
    missing = set(state) - {name for name, _ in model.named_parameters()}
    if missing:
        raise RuntimeError(f"the workers' prompt has parameters this model lacks: {sorted(missing)[:3]}")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in state:
                param.copy_(state[name].to(param.device))
    model.eval()
    return curve
