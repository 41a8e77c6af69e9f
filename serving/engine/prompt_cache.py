"""A bounded, validated cache of soft prompts on the model's device.

Entries are keyed by (task, version, sha256), so a version is never confused with
another registry's version of the same number. Each entry holds the prompt embedding
in the model's dtype and, when pinned KV is on, the key/value states of its virtual
tokens. The cache is bounded in bytes and evicts the least recently used entry; a
batch in flight keeps its own references, so eviction never pulls tensors from under
it. Loading goes through the registry (safetensors only, sha256-checked) and the
engine's `prepare`, which refuses prompts that do not fit the base model.
"""

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from promptmux.registry import PromptVersion, Registry


@dataclass(frozen=True)
class PromptKey:
    task: str
    version: int
    sha256: str

    @classmethod
    def of(cls, manifest: PromptVersion) -> "PromptKey":
        return cls(manifest.task, manifest.version, manifest.sha256)


@dataclass
class CachedPrompt:
    key: PromptKey
    embeds: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeds.shape[0]

    @property
    def nbytes(self) -> int:
        tensors = [self.embeds] + [t for pair in self.kv or [] for t in pair]
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0
    loaded: list[str] = field(default_factory=list)


class PromptCache:
    """LRU over prepared prompts, bounded by `capacity_bytes` (at least one entry is kept)."""

    def __init__(
        self,
        registry: Registry,
        capacity_bytes: int,
        prepare: Callable[[PromptVersion, torch.Tensor], CachedPrompt],
    ) -> None:
        self.registry = registry
        self.capacity_bytes = capacity_bytes
        self._prepare = prepare
        self._entries: OrderedDict[PromptKey, CachedPrompt] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, manifest: PromptVersion) -> CachedPrompt:
        key = PromptKey.of(manifest)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
        loaded_manifest, tensor = self.registry.load_prompt(manifest.task, manifest.version)
        entry = self._prepare(loaded_manifest, tensor)
        with self._lock:
            self.misses += 1
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._evict()
        return entry

    def _evict(self) -> None:
        while len(self._entries) > 1 and sum(e.nbytes for e in self._entries.values()) > self.capacity_bytes:
            self._entries.popitem(last=False)
            self.evictions += 1

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self.hits,
                misses=self.misses,
                evictions=self.evictions,
                bytes=sum(e.nbytes for e in self._entries.values()),
                entries=len(self._entries),
                loaded=[f"{k.task}@{k.version}" for k in self._entries],
            )
