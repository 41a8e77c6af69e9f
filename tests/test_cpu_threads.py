"""The engine's torch threads follow the cores other processes leave free."""

import os
import time

import pytest
import torch

from promptmux.serving.bench.machine import busy_neighbour
from promptmux.serving.engine.threads import SAMPLE_S, CpuThreads, cpu_busy_s

CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def work_and_adjust(threads: CpuThreads, seconds: float) -> None:
    """Matrix products for `seconds`, adjusting the thread count as the engine does before each forward."""
    a = torch.randn(256, 256)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        threads.adjust()
        a = torch.tanh(a @ a)


@pytest.mark.skipif(CPUS < 2 or cpu_busy_s({0}) is None, reason="needs 2 CPUs and /proc/stat")
def test_a_busy_neighbour_takes_a_thread_away_and_leaving_gives_it_back() -> None:
    threads = CpuThreads(CPUS)
    assert torch.get_num_threads() == CPUS
    with busy_neighbour():
        work_and_adjust(threads, 3 * SAMPLE_S)
        assert threads.others_cores > 0.5
        assert threads.threads == CPUS - 1 and torch.get_num_threads() == CPUS - 1
    for _ in range(10):  # what the tests before left running may take a few seconds to settle
        work_and_adjust(threads, 2 * SAMPLE_S)
        if threads.threads == CPUS:
            break
    assert threads.threads == CPUS and torch.get_num_threads() == CPUS


@pytest.mark.skipif(CPUS < 2 or cpu_busy_s({0}) is None, reason="needs 2 CPUs and /proc/stat")
def test_a_count_set_explicitly_stays_put() -> None:
    threads = CpuThreads(CPUS, adaptive=False)
    with busy_neighbour():
        work_and_adjust(threads, 2 * SAMPLE_S)
    assert threads.threads == CPUS and torch.get_num_threads() == CPUS


def test_serve_gives_replicas_a_gpu_where_cuda_is_present_unless_told_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray hides every GPU from a replica given none: the default asks for one wherever CUDA
    is present. (This machine has no GPU; CUDA's presence is what the default reads.)"""
    import torch

    from promptmux.serving.hosting.local_cluster import default_replica_gpus

    assert default_replica_gpus("auto") == (1.0 if torch.cuda.is_available() else 0.0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert (default_replica_gpus("auto"), default_replica_gpus("cuda"), default_replica_gpus("cpu")) == (1.0, 1.0, 0.0)
