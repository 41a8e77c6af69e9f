"""deploy/: the Serve config is what Ray accepts and builds promptmux; the KubeRay manifest embeds it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from helpers import build_registry, free_port, healthy, wait_until
from ray.serve.schema import ServeDeploySchema

from promptmux.serving.runtime.settings import ServeSettings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_serve_yaml_is_a_valid_ray_serve_config_for_the_builder() -> None:
    config = ServeDeploySchema.model_validate(yaml.safe_load((DEPLOY / "serve.yaml").read_text()))
    app = config.applications[0]
    assert app.import_path == "promptmux.serving.hosting.deployment:build"
    deployment = app.deployments[0]
    assert deployment.autoscaling_config["max_replicas"] >= 1
    assert deployment.ray_actor_options.num_gpus == 1
    settings = ServeSettings.model_validate(app.args)
    assert deployment.graceful_shutdown_timeout_s == settings.drain_timeout_s  # Serve waits as long as we drain
    assert settings.engine.device == "cuda" and settings.engine.dtype == "bfloat16"


def test_rayservice_manifest_embeds_a_valid_serve_config() -> None:
    manifest = yaml.safe_load((DEPLOY / "rayservice.yaml").read_text())
    assert manifest["kind"] == "RayService"
    embedded = ServeDeploySchema.model_validate(yaml.safe_load(manifest["spec"]["serveConfigV2"]))
    ServeSettings.model_validate(embedded.applications[0].args)
    worker = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_ray_serve_run_starts_the_cpu_config(tmp_path: Path) -> None:
    """`serve run` (Ray's own CLI) on deploy/serve-cpu.yaml as its comment says to run it,
    with only the port moved to a free one."""
    config = yaml.safe_load((DEPLOY / "serve-cpu.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(config))
    registry = build_registry(tmp_path / "registry")
    serve_cli = Path(sys.executable).parent / "serve"
    # RAY_ADDRESS=local: a cluster of its own (`serve run` would join one running on the machine)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PROMPTMUX_REGISTRY": registry.uri, "RAY_ADDRESS": "local"}
    process = subprocess.Popen([str(serve_cli), "run", str(tmp_path / "serve.yaml")], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: process.poll() is not None or healthy(url), timeout=240, interval=0.5)
        assert process.poll() is None, process.stdout.read()
        response = httpx.post(f"{url}/v1/classify", json={"task": "grooming", "input": "Lovely"}, timeout=60)
        assert response.status_code == 200 and response.json()["outputs"][0]["label"] in ("0", "1")
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C does to `serve run`
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            # Seen on the first run in a new virtualenv only: Ray's CLI took minutes to stop
            # its cluster after Ctrl-C (the config had served; usually it stops in 3-4 s).
            # What this test checks is the config; the group is killed so nothing is left behind.
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
