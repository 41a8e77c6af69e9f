"""Torch threads on a CPU: the cores this replica was given, less those others keep busy.

torch's OpenMP workers split every operation evenly and wait for each other at its end.
When another process holds one of their cores, every operation waits for the worker
that is not running, and a decode step gets many times slower, not twice (measured on
2 cores beside one busy process: 3-4x; beside a busy Ray node: 7-30x). So the engine
starts with the CPUs it was given and, about once a second while it works, measures
from `/proc/stat` how much of those CPUs other processes used and runs on the cores
left free (at least one). Where `/proc/stat` is missing, or the count was set explicitly
(`engine.cpu_threads`), it stays as given: another thread count sums in another order,
and a fixed count keeps results bit-for-bit repeatable.

Torch keeps the thread count per calling thread, so `adjust` must be called from the
thread that runs the model, which is why the model runner calls it before each forward.
"""

import os
import time

import torch

SAMPLE_S = 1.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal


def cpu_busy_s(cpus: set[int]) -> float | None:
    """Seconds the given CPUs have spent busy since boot, by every process; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    busy = 0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            busy += sum(int(fields[i]) for i in BUSY_FIELDS if i < len(fields))
    return busy / TICKS_PER_S


class CpuThreads:
    def __init__(self, given: int, adaptive: bool = True) -> None:
        self.given = given
        self.adaptive = adaptive
        self.cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
        self.threads = given
        self.others_cores = 0.0
        self._last = self._sample()
        torch.set_num_threads(given)

    def _sample(self) -> tuple[float, float, float] | None:
        busy = cpu_busy_s(self.cpus)
        if busy is None:
            return None
        times = os.times()
        return time.monotonic(), busy, times.user + times.system

    def adjust(self) -> None:
        """Set the calling thread's torch threads to the given cores other processes left free."""
        due = self._last is not None and time.monotonic() - self._last[0] >= SAMPLE_S
        if self.adaptive and self.given > 1 and due:
            now = self._sample()
            wall = now[0] - self._last[0]
            others = max(0.0, (now[1] - self._last[1]) - (now[2] - self._last[2])) / wall
            self.others_cores, self._last = others, now
            self.threads = max(1, min(self.given, round(len(self.cpus) - others)))
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
