"""The rollout controller's Serve deployment: one replica per application runs the loop
that promotes or rolls back rollouts (`runtime.controller`).

It lives apart from the serving replica's module so that its process imports the registry
and the rollout statistics only, never torch, transformers or the engine.
"""

from typing import Any

from ray import serve

from promptmux.registry import Registry
from promptmux.serving.rollouts.controller import RolloutController
from promptmux.serving.runtime.settings import ServeSettings

# How often a replica Serve stops checks for requests still in flight (Ray's default is 2 s):
# a replica stopped after promptmux's own drain has none, and stops at the first check.
SHUTDOWN_POLL_S = 0.1


@serve.deployment(name="promptmux-controller", num_replicas=1, ray_actor_options={"num_cpus": 0},
                  graceful_shutdown_wait_loop_s=SHUTDOWN_POLL_S)
class RolloutControllerDeployment:
    """One rollout controller per application (see `runtime.controller`)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        parsed = ServeSettings.model_validate(settings)
        self.controller = RolloutController(Registry(parsed.registry), parsed.controller_interval_s)
        self.controller.start()

    def check_health(self) -> None:
        if not self.controller.alive():
            raise RuntimeError("the rollout controller's loop has stopped")

    def __del__(self) -> None:
        controller = getattr(self, "controller", None)
        if controller is not None:
            controller.stop()
