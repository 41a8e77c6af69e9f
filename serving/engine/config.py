"""Engine configuration: one pydantic object, shared by the CLI, the offline runner and Ray Serve.

Processes that read it and run no model (the rollout controller's replica, the CLI before
it starts a cluster) never import torch or transformers: they are imported only where a
device or a dtype is resolved.
"""

import os
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from promptmux.core.defaults import DEFAULT_BASE_MODEL
from promptmux.core.strict_model import StrictModel

if TYPE_CHECKING:
    import torch


class EngineConfig(StrictModel):
    base_model: str = DEFAULT_BASE_MODEL
    device: Literal["auto", "cuda", "cpu"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    trust_remote_code: bool = False
    pinned_kv: bool = Field(True, description="precompute each prompt's KV once; off recomputes virtual tokens")
    prompt_cache_mb: float = Field(1024.0, gt=0, description="device memory for prompt embeddings and their KV")
    max_batch_size: int = Field(32, ge=1, description="most rows decoded together")
    max_tokens_in_flight: int = Field(
        65536, ge=1, description="KV budget: virtual + input + max_new tokens summed over running rows"
    )
    kv_pool: bool = Field(
        True, description="hold running rows in the KV pool (allocated once); off: transformers' DynamicCache, "
        "concatenated every step and re-padded when rows join (how the engine decoded before the pool)"
    )
    kv_cache_mb: float | None = Field(
        None, gt=0, description="memory of the KV pool, allocated once at start-up; it then sets max_tokens_in_flight "
        "(default: a pool for max_tokens_in_flight tokens)"
    )
    max_waiting: int = Field(256, ge=0, description="requests queued beyond the running batch; more are refused")
    fair_admission: bool = Field(
        True, description="admit waiting requests fairly across owners (tenants) by weight; false: first come, first served"
    )
    admit_fraction: float = Field(
        0.25, gt=0, le=1, description="while rows run, admit newcomers only when this share of the batch is free"
    )
    max_admission_wait_steps: int = Field(
        32, ge=0, description="...or all waiting fit, or this many decode steps passed since the last admission"
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="torch threads on a CPU, fixed; unset, they start at $OMP_NUM_THREADS (which Ray sets "
        "from a replica's num_cpus), else the CPUs this process may run on, less the cores other processes keep busy"
    )
    max_input_tokens: int = Field(2048, ge=1)
    max_model_len: int | None = Field(
        None, ge=1, description="positions a row may use: virtual + input + new tokens (default: the model's own, "
        "max_position_embeddings; none for ALiBi models). Raise it only where the model's positions extend (RoPE "
        "scaling): past a learned position table (GPT-2, OPT) it is clamped to the table, with a warning at start-up"
    )
    max_new_tokens: int = Field(1024, ge=1, description="upper bound for any request's max_new_tokens")

    def resolved_device(self) -> str:
        from promptmux.models.loading import resolve_device

        return resolve_device(self.device)

    def resolved_cpu_threads(self) -> int:
        """More threads than the CPUs a process is given make torch's OpenMP workers stall on each other."""
        if self.cpu_threads:
            return self.cpu_threads
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            return int(os.environ["OMP_NUM_THREADS"])
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1

    def resolved_dtype(self) -> "torch.dtype":
        """`auto`: bfloat16 on a GPU that supports it, else float32."""
        import torch

        if self.dtype != "auto":
            return getattr(torch, self.dtype)
        if self.resolved_device() == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
