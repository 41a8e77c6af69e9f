"""Settings of a serving replica: one pydantic-settings object (env prefix `PROMPTMUX_`)."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from registry import default_registry_uri
from serving.config import EngineConfig


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PROMPTMUX_", env_nested_delimiter="__", extra="forbid")

    registry: str = Field(default_factory=default_registry_uri, description="registry URI: a path or fsspec URL")
    engine: EngineConfig = Field(default_factory=EngineConfig)
    refresh_interval_s: float = Field(2.0, gt=0, le=300, description="how often registry edits are picked up")
    max_inputs_per_request: int = Field(32, ge=1, le=1024)
