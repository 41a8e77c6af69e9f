"""Registry writers that run in processes of their own, for the tests of concurrent writes.

Each is forked from one server process that has imported torch, PEFT and the registry
once (multiprocessing's forkserver): a writer starts in milliseconds, where a new
interpreter spends seconds importing, and is still a process of its own, with its own
locks and its own death when the test kills it."""

import multiprocessing
import os
from multiprocessing.connection import Connection

import torch

from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.registry import Registry, RolloutSpec, RolloutVariant

PROCESSES = multiprocessing.get_context("forkserver")
PROCESSES.set_forkserver_preload(["torch", "peft", "s3fs", "promptmux.methods.safetensors_files", "writers"])


def register_versions(uri: str, fp: BaseModelFingerprint, count: int, seed: int, rows: int, out: Connection,
                      edit_between: bool, environment: dict[str, str]) -> None:
    """Register `count` random prompts on task `shared`, sending "ready" and then each version
    claimed; with `edit_between`, also point `production` and the rollout at each new version."""
    os.environ.update(environment)  # the test's, as a new interpreter would get it (the S3 server's address)
    registry = Registry(uri)
    generator = torch.Generator().manual_seed(seed)
    out.send("ready")
    for i in range(count):
        manifest = registry.versions.register("shared", torch.randn(rows, fp.hidden_size, generator=generator), fp,
                                              note=f"{seed}-{i}")
        out.send(manifest.version)
        if edit_between:
            registry.aliases.set("shared", "production", manifest.version)
            registry.rollouts.set("shared", RolloutSpec(variants=[RolloutVariant(version=manifest.version, weight=1)]))


def edit_aliases(uri: str, worker: int) -> None:
    """Five alias edits and five rollout edits on task `shared`, each this worker's own."""
    registry = Registry(uri)
    for j in range(5):
        registry.aliases.set("shared", f"w{worker}-a{j}", 1 + (worker + j) % 3)
        registry.rollouts.set("shared", RolloutSpec(variants=[RolloutVariant(version=1 + worker % 3, weight=worker + 1)]))


class Writer:
    """A `register_versions` process and the end of the pipe it sends on."""

    def __init__(self, uri: str, fp: BaseModelFingerprint, count: int, seed: int, rows: int = 8,
                 edit_between: bool = False) -> None:
        self.received, sent = PROCESSES.Pipe(duplex=False)
        self.process = PROCESSES.Process(target=register_versions,
                                         args=(uri, fp, count, seed, rows, sent, edit_between, dict(os.environ)))
        self.process.start()
        sent.close()  # the writer holds the only sending end: its exit ends the stream

    def ready(self) -> bool:
        return self.received.recv() == "ready"

    def versions(self, timeout: float = 600) -> list[int]:
        """Every version the writer claimed, once it has exited with status 0."""
        claimed = []
        try:
            while True:
                message = self.received.recv()
                if message != "ready":
                    claimed.append(message)
        except EOFError:
            pass
        self.process.join(timeout)
        assert self.process.exitcode == 0, f"writer exited with {self.process.exitcode}"
        return claimed

    def kill(self) -> None:
        self.process.kill()
        self.process.join(60)
