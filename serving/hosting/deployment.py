"""The Ray Serve deployment: a thin shell that hosts one `PromptmuxService` per replica.

The task travels in the request body, never as a Serve multiplexed model id: Serve would
split batches by that id, and mixing tasks in one batch is the point. Batching is the
engine's own continuous batching, so requests go straight to it (no `@serve.batch`).

Draining: `promptmux serve` sets a `DrainSignal` actor (`drain_signal.py`) on SIGTERM. Every replica waits on
it, drains its service (new requests 503, requests in flight finish within the grace
period) and reports back, and only then is Serve shut down. Under `serve run` or KubeRay,
Ray Serve's own `graceful_shutdown_timeout_s` (set from `drain_timeout_s`) waits for the
requests in flight of a replica it stops.
"""

import asyncio
import logging
from typing import Any

import ray
from fastapi import FastAPI
from ray import serve
from ray.exceptions import RayError, TaskCancelledError
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from promptmux.serving.hosting.controller_deployment import SHUTDOWN_POLL_S, RolloutControllerDeployment
from promptmux.serving.hosting.drain_signal import DRAIN_NAMESPACE
from promptmux.serving.http.app import build_app
from promptmux.serving.runtime.service import PromptmuxService
from promptmux.serving.runtime.settings import ServeSettings

log = logging.getLogger(__name__)


class DisconnectsAsMessages:
    """Ray Serve (2.60) raises `TaskCancelledError` from an ASGI `receive` when its proxy has
    cancelled a request whose client went away. ASGI's word for that is an `http.disconnect`
    message; without it Starlette answers the vanished client with a 500 and a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_or_disconnect() -> Message:
            try:
                return await receive()
            except TaskCancelledError:
                return {"type": "http.disconnect"}

        await self.app(scope, receive_or_disconnect, send)


def warn_if_gpus_unused(device: str) -> None:
    """One warning when this replica's engine runs on the CPU while its node has GPUs: Ray
    hides every GPU from a replica given none (`--replica-gpus 0`, `num_gpus: 0`)."""
    node_gpus = int(ray.cluster_resources().get("GPU", 0))
    if device == "cpu" and node_gpus:
        log.warning("this replica's engine runs on the CPU while the cluster has %d GPU(s): give replicas a GPU "
                    "(promptmux serve --replica-gpus 1, or ray_actor_options.num_gpus in the Serve config)", node_gpus)


@serve.deployment(name="promptmux", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5},
                  graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S)
@serve.ingress()
class PromptmuxDeployment:
    async def __init__(
        self, settings: dict[str, Any], drain_signal: str | None = None, controller: DeploymentHandle | None = None
    ) -> None:
        self.service = PromptmuxService(ServeSettings.model_validate(settings))
        warn_if_gpus_unused(self.service.device_type)
        self.controller = controller  # bound so that the application runs it
        self._drainer = None
        if drain_signal is not None:
            self._drainer = asyncio.create_task(self._drain_on(ray.get_actor(drain_signal, namespace=DRAIN_NAMESPACE)))

    async def _drain_on(self, signal: "ray.actor.ActorHandle") -> None:
        try:
            grace_s = await signal.wait.remote()
            await self.service.drain(grace_s)
            await signal.drained.remote(serve.get_replica_context().replica_id.unique_id)
        except RayError:  # the command that owns the signal is gone; Serve's own shutdown applies
            log.warning("drain signal lost; relying on Ray Serve's graceful shutdown")

    def __serve_build_asgi_app__(self) -> FastAPI:  # Serve's hook
        app = build_app(self.service)
        app.add_middleware(DisconnectsAsMessages)
        return app

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose engine loop died is replaced."""
        self.service.health()

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()


def build(args: dict[str, Any]) -> Application:
    """Application builder for `serve run` / `serve deploy` (`import_path: promptmux.serving.hosting.deployment:build`);
    `args` are `ServeSettings` fields."""
    settings = ServeSettings.model_validate(args)
    deployment = PromptmuxDeployment.options(graceful_shutdown_timeout_s=settings.drain_timeout_s)
    return deployment.bind(settings.replica_args(), None, RolloutControllerDeployment.bind(settings.replica_args()))
