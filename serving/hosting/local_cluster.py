"""`promptmux serve`: a local Ray cluster with Serve, running until Ctrl-C or SIGTERM.

The first signal drains: replicas refuse new requests (503 with `Retry-After`) and let
those in flight finish within `drain_timeout_s`; streams still running then end with an
error event. Only then are Serve and the Ray cluster this process started shut down, so
no Ray process outlives the command. A second signal skips the rest of the drain.
"""

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from promptmux.serving.runtime.settings import ServeSettings

APP_NAME = "promptmux"
DRAIN_SIGNAL = "promptmux-drain"
DRAIN_MARGIN_S = 10.0  # past the grace period: ending the streams still running and flushing them


def init_ray(num_cpus: int, **options: object) -> Path:
    """`ray.init` for promptmux: a new local cluster (never one found running on the machine),
    no dashboard, no token warning, and the proxy's own errors as JSON bodies (`proxy_errors`,
    installed through Ray Serve's proxy callback). The folder its processes log to."""
    import ray

    from promptmux.serving.hosting.proxy_errors import CALLBACK, CALLBACK_ENV

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault(CALLBACK_ENV, CALLBACK)
    context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, configure_logging=False, **options)
    return Path(context.address_info["session_dir"]) / "logs"


def default_replica_gpus(device: str) -> float:
    """A GPU per replica where CUDA is present, unless the engine is told to run on the CPU:
    Ray hides every GPU from a replica given none."""
    import torch

    return 1.0 if device != "cpu" and torch.cuda.is_available() else 0.0


def run_local(
    settings: ServeSettings, host: str, port: int, replicas: int, replica_cpus: float, replica_gpus: float,
    access_log: bool = False, say: Callable[[str], None] = print,
) -> None:
    """Serve until a signal, then drain; `say` prints the few lines an operator reads."""
    import ray
    from ray import serve
    from ray.serve.schema import LoggingConfig

    from promptmux.serving.hosting.controller_deployment import RolloutControllerDeployment
    from promptmux.serving.hosting.deployment import PromptmuxDeployment
    from promptmux.serving.hosting.drain_signal import DRAIN_NAMESPACE, DrainSignal

    init_ray(max(2, os.cpu_count() or 2))
    stop, hurry = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        (hurry if stop.is_set() else stop).set()

    for signum in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(signum, on_signal)
    try:
        drain = DrainSignal.options(name=DRAIN_SIGNAL, namespace=DRAIN_NAMESPACE).remote()
        logging_config = LoggingConfig(enable_access_log=access_log)  # a line per request only when asked for
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)
        deployment = PromptmuxDeployment.options(
            num_replicas=replicas, ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
            graceful_shutdown_timeout_s=settings.drain_timeout_s, logging_config=logging_config,
        )
        controller = RolloutControllerDeployment.bind(settings.replica_args())
        serve.run(deployment.bind(settings.replica_args(), DRAIN_SIGNAL, controller), name=APP_NAME, route_prefix="/",
                  blocking=False)
        say(f"promptmux serving {settings.engine.base_model} from {settings.registry} "
            f"on http://{host}:{port} ({replicas} replica(s)); Ctrl-C to stop")
        stop.wait()
        say(f"draining: new requests get 503; requests in flight have {settings.drain_timeout_s:g} s "
            "to finish (signal again to stop now)")
        ray.get(drain.start.remote(settings.drain_timeout_s))
        deadline = time.monotonic() + settings.drain_timeout_s + DRAIN_MARGIN_S
        while ray.get(drain.drained_count.remote()) < replicas and time.monotonic() < deadline:
            if hurry.wait(0.1):
                break
    finally:
        say("shutting down Serve and the local Ray cluster")
        try:  # the application goes first: `serve.shutdown()` kills its controller mid-call, which Ray reports as
            serve.delete(APP_NAME)  # a failed task on every clean stop; the cluster is ours and goes with it
        finally:
            ray.shutdown()
