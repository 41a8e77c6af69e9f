"""Serving from a registry on an object store (the S3 server of `conftest.s3_server`) on a
two-node Ray cluster on this machine (Ray's own `cluster_utils.Cluster`, one replica per
node): an alias moved in the registry reaches both nodes within 5 seconds, through the
change feed. `promptmux serve --replicas 2` on S3 (a moved alias, a tenant revoked) is in
`test_serve_cli.py`.

The second node declares a GPU that no replica is given (`num_gpus` 0): each replica, whose
engine then runs on the CPU, logs the one warning that says so."""

from pathlib import Path

import psutil
import pytest
import ray
from helpers import BASE, build_registry, free_port, seconds_until_every_replica_serves, served_by, wait_until
from ray import serve
from ray.cluster_utils import Cluster

from promptmux.serving.engine.config import EngineConfig
from promptmux.serving.hosting.deployment import PromptmuxDeployment
from promptmux.serving.runtime.settings import ServeSettings


def raylet_of(pid: int) -> int:
    """The raylet (one per Ray node) whose worker process `pid` is."""
    for parent in psutil.Process(pid).parents():
        if parent.name() == "raylet" or any("raylet" in part for part in parent.cmdline()[:1]):
            return parent.pid
    raise AssertionError(f"process {pid} is not under a raylet")


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch) -> Cluster:
    if ray.is_initialized():
        ray.shutdown()
    # One proxy (both nodes share this machine's ports), which would otherwise keep every
    # request on its own node's replica while that one has room.
    monkeypatch.setenv("RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=1)  # a logical GPU: Ray does not look for the hardware
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()


def test_two_ray_nodes_serve_from_one_s3_registry_and_both_follow_a_moved_alias(s3_bucket: str, two_nodes) -> None:
    registry = build_registry(f"{s3_bucket}/registry")
    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    settings = ServeSettings(registry=registry.uri, engine=EngineConfig(base_model=BASE))
    app = PromptmuxDeployment.options(num_replicas=2, max_replicas_per_node=1, ray_actor_options={"num_cpus": 0.5})
    serve.run(app.bind(settings.replica_args()), name="promptmux", route_prefix="/")
    url = f"http://127.0.0.1:{port}"

    replicas = wait_until(lambda: (lambda seen: seen if len(seen) == 2 else None)(served_by(url)), timeout=60,
                          interval=0.5)
    nodes = {raylet_of(int(replica.rsplit(":", 1)[1])) for replica in replicas}
    assert len(nodes) == 2, f"both replicas run under one Ray node: {replicas}"
    elapsed = seconds_until_every_replica_serves(url, registry, 2)
    print(f"alias move on S3 reached both Ray nodes in {elapsed:.2f} s")
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    warned = [line for path in logs.glob("worker-*") for line in path.read_text(errors="replace").splitlines()
              if "engine runs on the CPU while the cluster has 1 GPU(s)" in line]
    assert len(warned) == 2, warned  # one per replica
