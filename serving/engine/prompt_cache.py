"""A bounded, validated cache of prompts on the model's device.

Entries are keyed by (task, version, sha256), so a version is never confused with
another registry's version of the same number. Loading goes through a `PromptLoader` (a registry's
version store is one: safetensors only, sha256- and shape-checked), derives what serving needs of the version's
PEFT method (`promptmux.methods`: a soft prompt's embeddings, or a prefix's keys and
values), then makes the checks that only the serving side can make: the prompt fits the
served base model (a prefix: its layers, KV heads and head size against the engine's own
keys and values), its values stay finite once cast to the serving dtype, and it fits in
the cache at all.

The cache is bounded in bytes by a running count and evicts the least recently used
entry; a batch in flight keeps its own references, so eviction never pulls tensors
from under it. Each entry is charged its real bytes: a soft prompt its embedding and the
key/value states of its virtual tokens (pinned KV), which the engine computes on its own
thread at the prompt's first batch; a prefix its keys and values, 2 x layers x KV heads x
head size x tokens x dtype size. Loading never runs the model, so any thread may load.

Loads are single-flight (IBM TGIS's prompt cache has the same aim): threads that miss
the same key wait for the one load in progress instead of reading the file again.
"""

import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import torch

from promptmux.core.errors import IncompatiblePromptError
from promptmux.methods.catalog import method
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.methods.prompt import Prompt
from promptmux.registry import PromptVersion

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
    embeds: torch.Tensor | None  # [virtual tokens, hidden], serving dtype, on the device; None for a prefix
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer [heads, virtual tokens, head dim]
    nbytes: int = 0  # what the cache charges: the embedding and its KV, pinned or not yet

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeds.shape[0] if self.embeds is not None else self.kv[0][0].shape[1]


@dataclass(frozen=True)
class ServingFormat:
    """What a prompt must become to serve: the model it must fit, its dtype and device, the
    bytes of pinned KV per virtual token (0 when pinned KV is off), and the shape of the
    model's keys and values per layer, (KV heads, head size), as its own cache holds them
    (empty when pinned KV is off: then a prefix cannot be served)."""

    fingerprint: BaseModelFingerprint
    dtype: torch.dtype
    device: torch.device
    kv_bytes_per_token: int = 0
    kv_layout: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, fingerprint: BaseModelFingerprint, dtype: torch.dtype, device: torch.device,
           pinned: list[tuple[torch.Tensor, torch.Tensor]] | None) -> "ServingFormat":
        """The format of an engine whose pinned KV, measured on a probe prompt, is `pinned` (None: off)."""
        if pinned is None:
            return cls(fingerprint, dtype, device)
        nbytes = sum(t.numel() * t.element_size() for pair in pinned for t in pair)
        return cls(fingerprint, dtype, device, nbytes // pinned[0][0].shape[1], tuple((k.shape[0], k.shape[2]) for k, _ in pinned))


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0
    loaded: list[str] = field(default_factory=list)


class PromptLoader(Protocol):
    """Where the engine's prompts come from: a version's manifest and its checked tensors.
    A registry's version store (`registry.versions`) is one; the engine needs nothing else."""

    def load_prompt(self, task: str, version: int) -> tuple[PromptVersion, Prompt]: ...


class PromptCache:
    """LRU over prepared prompts, bounded by `capacity_bytes`."""

    def __init__(self, loader: PromptLoader, capacity_bytes: int, serving: ServingFormat) -> None:
        self.loader = loader
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
        loaded, prompt = self.loader.load_prompt(manifest.task, manifest.version)
        source = f"{loaded.task}@{loaded.version}"
        kind = method(prompt.method)
        form = kind.serving_form(prompt)
        width = form.embeds.shape[1] if form.embeds is not None else None
        problem = self.serving.fingerprint.misfit(loaded.base_fingerprint, width)
        if problem:
            raise IncompatiblePromptError(f"{source} does not fit the served base model: {problem}")
        if form.embeds is not None:
            embeds, kv = self._cast(form.embeds, source), None
            nbytes = embeds.numel() * embeds.element_size() + form.num_virtual_tokens * self.serving.kv_bytes_per_token
        else:
            kind.check_servable(form, self.serving.kv_layout, source)
            embeds, kv = None, [(self._cast(k, source), self._cast(v, source)) for k, v in form.kv]
            nbytes = sum(t.numel() * t.element_size() for pair in kv for t in pair)
        if nbytes > self.capacity_bytes:
            raise IncompatiblePromptError(
                f"{source} needs {_size(nbytes)} with its KV; the whole prompt cache holds "
                f"{_size(self.capacity_bytes)} (engine.prompt_cache_mb)"
            )
        return CachedPrompt(PromptKey.of(loaded), embeds, kv, nbytes)

    def _cast(self, tensor: torch.Tensor, source: str) -> torch.Tensor:
        """The tensor in the serving dtype on the device, refused if it overflows the dtype."""
        cast = tensor.to(self.serving.device, self.serving.dtype)
        if not torch.isfinite(cast).all():
            largest = float(tensor.abs().max())
            raise IncompatiblePromptError(
                f"{source} does not fit {str(self.serving.dtype).removeprefix('torch.')}: values up to {largest:.4g} "
                "overflow it; serve in a wider dtype (engine.dtype) or retrain the prompt"
            )
        return cast

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
