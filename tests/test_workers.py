"""`promptmux train --workers 2`: the same training loop data-parallel on Ray Train's
TorchTrainer (two CPU worker processes, gloo), on the tiny model. Each batch is split between
the workers, so an epoch takes half the optimizer steps of one worker's, and the prompt they
trained is registered as a one-worker run's would be."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BASE

from promptmux.registry import Registry

pytest.importorskip("ray.train.torch", reason="ray[tune] is not installed (make install installs it)")
ROOT = Path(__file__).resolve().parent.parent


def train(tmp_path: Path, task: str, *extra: str) -> dict:
    command = [str(Path(sys.executable).parent / "promptmux"), "train", "--spec", str(ROOT / "tasks/examples/act-as.yaml"),
               "--data", str(ROOT / "tasks/examples/data/roles.jsonl"), "--base-model", BASE, "--task", task,
               "--epochs", "2", "--registry", str(tmp_path / "registry"), "--output-dir", str(tmp_path / task), "--json",
               *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def test_two_workers_split_each_batch_and_register_the_prompt_they_trained(tmp_path: Path) -> None:
    two = train(tmp_path, "pair", "--workers", "2")
    examples = two["metrics"]["train_examples"]
    one_worker_steps = 2 * math.ceil(examples / 8)  # two epochs of batches of 8 (the spec's batch size)
    assert examples == 12 and two["metrics"]["steps"] == 2 * math.ceil(examples / 2 / 8) == one_worker_steps // 2
    registry = Registry(str(tmp_path / "registry"))
    pair = registry.versions.get("pair", 1)
    assert pair.training["workers"] == 2 and pair.metrics["eval_examples"] == 3
    curve = pair.metrics["learning_curve"]
    assert curve["step"] == [1, 2] and len(curve["eval_loss"]) == len(curve["eval_step"]) >= 2
    assert pair.metrics["best_validation_loss"] == pytest.approx(min(curve["eval_loss"]), abs=1e-5)
