"""The Ray Serve deployment: a thin shell that hosts one `PromptmuxService` per replica.

The task travels in the request body, never as a Serve multiplexed model id: Serve would
split batches by that id, and mixing tasks in one batch is the point. Batching is the
engine's own continuous batching, so requests go straight to it (no `@serve.batch`).
"""

from typing import Any

from ray import serve
from ray.serve import Application

from serving.app import build_app
from serving.service import PromptmuxService
from serving.settings import ServeSettings


@serve.deployment(name="promptmux", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress()
class PromptmuxDeployment:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.service = PromptmuxService(ServeSettings.model_validate(settings))

    def __serve_build_asgi_app__(self):  # noqa: ANN204 - Serve's hook, returns the ASGI app
        return build_app(self.service)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose engine loop died is replaced."""
        self.service.health()

    def __del__(self) -> None:
        service = getattr(self, "service", None)
        if service is not None:
            service.shutdown()


def build(args: dict[str, Any]) -> Application:
    """Application builder for `serve run` / `serve deploy` (`import_path: serving.deployment:build`);
    `args` are `ServeSettings` fields."""
    return PromptmuxDeployment.bind(ServeSettings.model_validate(args).replica_args())
