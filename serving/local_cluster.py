"""`promptmux serve`: a local Ray cluster with Serve, running until Ctrl-C or SIGTERM.

On either signal Serve and the Ray cluster this process started are shut down, so no
Ray process outlives the command.
"""

import os
import signal
import threading

from registry.cli import console
from serving.settings import ServeSettings

APP_NAME = "promptmux"


def run_local(
    settings: ServeSettings, host: str, port: int, replicas: int, replica_cpus: float, replica_gpus: float
) -> None:
    import ray
    from ray import serve

    from serving.deployment import PromptmuxDeployment

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, configure_logging=False)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        deployment = PromptmuxDeployment.options(
            num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus}
        )
        serve.run(deployment.bind(settings.replica_args()), name=APP_NAME, route_prefix="/", blocking=False)
        console.print(f"promptmux serving {settings.engine.base_model} from {settings.registry} "
                      f"on http://{host}:{port} ({replicas} replica(s)); Ctrl-C to stop", highlight=False)
        stop.wait()
    finally:
        console.print("shutting down Serve and the local Ray cluster")
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
