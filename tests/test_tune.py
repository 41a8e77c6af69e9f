"""`promptmux tune` on the tiny model, with Ray Tune on a real two-node Ray cluster
(`ray.cluster_utils.Cluster`, both nodes on this machine) and one registry.

A search of 6 trials over two methods is killed (the command and everything it started)
once two trials have finished, and resumed on the same cluster: the finished trials are not
run again, the trials ran on both nodes, the chosen trial is the one with the lowest
validation loss, only its settings are trained again and evaluated on the test set, and the
registry holds that one version with every trial's row.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from helpers import BASE, wait_until

from promptmux.registry import Registry
from promptmux.tasks.tune import DEFAULT_SEARCH, draw_trials

pytest.importorskip("ray.tune", reason="ray[tune] is not installed (make install installs it)")
ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tasks" / "examples" / "act-as.yaml"
DATA = ROOT / "tasks" / "examples" / "data" / "roles.jsonl"


def finished_trials(out: Path) -> dict[str, str]:
    """Trial folders whose last result says done, with their results (each stamped with the
    time it was reported: a trial run again would report anew)."""
    done = {}
    for result in (out / "search").glob("run_trial_*/result.json"):
        text = result.read_text()
        lines = text.splitlines()
        if lines and json.loads(lines[-1]).get("done"):
            done[result.parent.name] = text
    return done


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the command and every process it started."""
    family = [process.pid, *(child.pid for child in psutil.Process(process.pid).children(recursive=True))]
    os.killpg(process.pid, signal.SIGKILL)
    for pid in family:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
    process.wait()


@pytest.fixture
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_a_search_on_two_nodes_killed_and_resumed_registers_the_best_on_validation_once(
        tmp_path: Path, two_nodes) -> None:
    registry, out = tmp_path / "registry", tmp_path / "search"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    command = [str(Path(sys.executable).parent / "promptmux"), "tune", "--spec", str(SPEC), "--data", str(DATA),
               "--base-model", BASE, "--registry", str(registry), "--output-dir", str(out), "--json", "--trials", "6",
               "--methods", "prompt,prefix", "--seed", "3", "--address", two_nodes.address]
    started = time.monotonic()
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_until(lambda: first.poll() is not None or len(finished_trials(out)) >= 2, timeout=240, interval=0.5)
    assert first.poll() is None, first.stdout.read().decode()[-3000:]
    kill_group(first)
    before = finished_trials(out)
    assert 2 <= len(before) < 6 and not Registry(str(registry)).tasks.exists("act-as")

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    print(f"6 trials, killed and resumed, in {time.monotonic() - started:.0f} s")
    summary = json.loads(resumed.stdout)
    after = finished_trials(out)
    assert {name: after[name] for name in before} == before  # a finished trial's results were not written again
    trials = summary["trials"]
    space = DEFAULT_SEARCH.model_copy(update={"methods": {m: DEFAULT_SEARCH.methods[m] for m in ("prompt", "prefix")}})
    assert [row["settings"]["method"] for row in trials] == [s.method for s in draw_trials(space, 6, 3)]
    assert {row["settings"]["method"] for row in trials} == {"prompt", "prefix"}
    assert len({row["node"] for row in trials} - {None}) == 2  # the trials ran on both nodes
    best = min((row for row in trials if row["best_val_loss"] is not None), key=lambda row: row["best_val_loss"])
    assert summary["chosen"]["trial"] == best["trial"]

    reg = Registry(str(registry))
    assert reg.versions.numbers("act-as") == [1]  # the chosen prompt alone is registered, once
    version = reg.versions.get("act-as", 1)
    assert version.metrics["tuning"]["chosen"] == best["trial"] and len(version.metrics["tuning"]["trials"]) == 6
    assert version.method == {"prompt": "prompt_tuning", "prefix": "prefix_tuning"}[best["settings"]["method"]]
    assert version.num_virtual_tokens == best["settings"]["num_virtual_tokens"]
    assert version.training["lr"] == best["settings"]["lr"]
    # trained again with the trial's settings and seed: the same validation loss; then the test set, once
    assert version.metrics["best_validation_loss"] == pytest.approx(best["best_val_loss"], abs=1e-4)
    assert version.metrics["eval_examples"] == 3
    reported = [json.loads(line) for path in (out / "search").glob("run_trial_*/result.json")
                for line in path.read_text().splitlines()]
    assert reported and all(not {"eval_loss_after", "tuned", "eval_examples"} & set(r) for r in reported)  # no trial saw it
