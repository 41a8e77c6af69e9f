"""A bounded, validated cache of soft prompts on the model's device.

Entries are keyed by (task, version, sha256), so a version is never confused with
another registry's version of the same number. Loading goes through the registry
(safetensors only, sha256- and shape-checked), then the checks that only the serving
side can make: the prompt fits the served base model, its values stay finite once cast
to the serving dtype, and it fits in the cache at all.

The cache is bounded in bytes by a running count and evicts the least recently used
entry; a batch in flight keeps its own references, so eviction never pulls tensors
from under it. Each entry is charged for its embedding and for the key/value states
of its virtual tokens (pinned KV), which the engine computes on its own thread at the
prompt's first batch: loading never runs the model, so any thread may load.

Loads are single-flight (IBM TGIS's prompt cache has the same aim): threads that miss
the same key wait for the one load in progress instead of reading the file again.
"""

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from promptmux.registry import IncompatiblePromptError, PromptVersion, Registry
from promptmux.registry.schemas import BaseModelFingerprint

MiB = 2**20


@dataclass(frozen=True)
class PromptKey:
    task: str
    version: int
    sha256: str

    @classmethod
    def of(cls, manifest: PromptVersion) -> "PromptKey":
        return cls(manifest.task, manifest.version, manifest.sha256)


@dataclass(eq=False)
class CachedPrompt:
    key: PromptKey
    embeds: torch.Tensor  # [virtual tokens, hidden], serving dtype, on the device
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [heads, virtual tokens, head dim]
    nbytes: int = 0  # what the cache charges: the embedding and its KV, pinned or not yet

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeds.shape[0]


@dataclass(frozen=True)
class ServingFormat:
    """What a prompt must become to serve: the model it must fit, its dtype and device, and
    the bytes of pinned KV per virtual token (0 when pinned KV is off)."""

    fingerprint: BaseModelFingerprint
    dtype: torch.dtype
    device: torch.device
    kv_bytes_per_token: int = 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0
    loaded: list[str] = field(default_factory=list)


class PromptCache:
    """LRU over prepared prompts, bounded by `capacity_bytes`."""

    def __init__(self, registry: Registry, capacity_bytes: int, serving: ServingFormat) -> None:
        self.registry = registry
        self.capacity_bytes = capacity_bytes
        self.serving = serving
        self._entries: OrderedDict[PromptKey, CachedPrompt] = OrderedDict()
        self._loading: dict[PromptKey, Future[CachedPrompt]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def resident(self, manifest: PromptVersion) -> CachedPrompt | None:
        """The entry if it is loaded (a hit), else None; never loads."""
        with self._lock:
            return self._hit(PromptKey.of(manifest))

    def _hit(self, key: PromptKey) -> CachedPrompt | None:
        """The entry, counted as a hit and made the most recent, if present (under the lock)."""
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return entry

    def get(self, manifest: PromptVersion) -> CachedPrompt:
        """The entry, loading it on a miss (or waiting for the load another thread started)."""
        key = PromptKey.of(manifest)
        with self._lock:
            entry = self._hit(key)
            if entry is not None:
                return entry
            loading = self._loading.get(key)
            owner = loading is None
            if owner:
                loading = self._loading[key] = Future()
                self.misses += 1
            else:
                self.hits += 1  # served by the load in progress
        if not owner:
            return loading.result()
        try:
            entry = self._load(manifest)
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            loading.set_exception(exc)
            raise
        with self._lock:
            del self._loading[key]
            self._entries[key] = entry
            self._bytes += entry.nbytes
            self._evict()
        loading.set_result(entry)
        return entry

    def _load(self, manifest: PromptVersion) -> CachedPrompt:
        loaded, tensor = self.registry.load_prompt(manifest.task, manifest.version)
        source = f"{loaded.task}@{loaded.version}"
        problem = self.serving.fingerprint.misfit(loaded.base_fingerprint, tensor.shape[1])
        if problem:
            raise IncompatiblePromptError(f"{source} does not fit the served base model: {problem}")
        embeds = tensor.to(self.serving.device, self.serving.dtype)
        if not torch.isfinite(embeds).all():
            largest = float(tensor.abs().max())
            raise IncompatiblePromptError(
                f"{source} does not fit {str(self.serving.dtype).removeprefix('torch.')}: values up to {largest:.4g} "
                "overflow it; serve in a wider dtype (engine.dtype) or retrain the prompt"
            )
        n = embeds.shape[0]
        nbytes = embeds.numel() * embeds.element_size() + n * self.serving.kv_bytes_per_token
        if nbytes > self.capacity_bytes:
            raise IncompatiblePromptError(
                f"{source} needs {_size(nbytes)} with its KV; the whole prompt cache holds "
                f"{_size(self.capacity_bytes)} (engine.prompt_cache_mb)"
            )
        return CachedPrompt(PromptKey.of(loaded), embeds, None, nbytes)

    def _evict(self) -> None:
        """Drop the least recently used entries until the count fits (the newest always does)."""
        while self._bytes > self.capacity_bytes:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.nbytes
            self.evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self.hits,
                misses=self.misses,
                evictions=self.evictions,
                bytes=self._bytes,
                entries=len(self._entries),
                loaded=[f"{k.task}@{k.version}" for k in self._entries],
            )


def _size(nbytes: int) -> str:
    return f"{nbytes / MiB:.1f} MiB" if nbytes >= MiB else f"{nbytes / 1024:.1f} KiB"
