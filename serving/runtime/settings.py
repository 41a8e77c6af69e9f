"""Settings of a serving replica: one pydantic-settings object (env prefix `PROMPTMUX_`)."""

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from promptmux.registry import default_registry_uri
from promptmux.serving.engine.config import EngineConfig


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTMUX_", env_nested_delimiter="__", extra="forbid")

    registry: str = Field(default_factory=default_registry_uri, description="registry URI: a path or fsspec URL")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    refresh_interval_s: float = Field(2.0, gt=0, le=300, description="how often registry edits are picked up")
    full_scan_interval_s: float = Field(
        300.0, gt=0, description="between refreshes that read only the registry's change feed, how long after the "
        "last full scan every task is re-read (catches files edited at rest)"
    )
    retry_rejected_s: float = Field(
        30.0, gt=0, description="a version refused as corrupt is validated again after this long (restored files serve again)"
    )
    max_inputs_per_request: int = Field(32, ge=1, le=1024)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies are refused with 413")
    request_timeout_s: float = Field(300.0, gt=0, description="a request still running after this gets 504")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="on shutdown, how long requests in flight may take to finish (Ray Serve's "
        "graceful_shutdown_timeout_s); streams still running then end with an error event"
    )
    api_token: SecretStr | None = Field(
        None, description="the admin key: if set, every endpoint but /healthz requires `Authorization: Bearer <key>` "
        "(a tenant's key, once tenants exist, opens its own tasks)"
    )
    console_edits: bool = Field(
        False, description="let the console at /ui edit (move aliases, end rollouts) with no admin key and no tenant "
        "configured; with keys, only the admin key's session edits"
    )
    replicas: int = Field(1, ge=1, description="replicas of this deployment: each enforces 1/replicas of every tenant quota")
    quota_window_s: float = Field(
        60.0, gt=0, le=3600, description="the sliding window tenant quotas are counted over; per-minute limits are "
        "scaled to it (200 tokens a minute allow 50 in a 15 s window)"
    )

    feedback_key: SecretStr | None = Field(
        None, description="hex key feedback ids are signed with (default: one kept in the registry, made on first use)"
    )
    traffic_interval_s: float = Field(
        60.0, gt=0, le=3600, description="how often each replica appends its per-task and per-tenant traffic to the "
        "registry, where the console reads the whole endpoint's last hour"
    )
    controller_interval_s: float = Field(
        2.0, gt=0, description="how often the rollout controller looks at automatic rollouts' feedback"
    )

    def replica_args(self) -> dict:
        """JSON-ready fields for the replicas' constructor (secrets in clear: pydantic masks them)."""
        args = self.model_dump(mode="json")
        for name in ("api_token", "feedback_key"):
            secret = getattr(self, name)
            if secret is not None:
                args[name] = secret.get_secret_value()
        return args
