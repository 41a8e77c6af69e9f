"""What every benchmark reports about the machine it ran on, including whether it was quiet.

Timings on a CPU shared with another busy process are not comparable: torch's OpenMP
threads stall on each other and a run can be many times slower. Each report therefore
carries the load average before and after the run, and flags a busy machine.
"""

import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

# A 1-minute load average above this share of the cores means something else was running.
BUSY_LOAD_PER_CORE = 0.5


def workload(sizes: dict[str, dict], quick: bool, base_model: str | None) -> dict:
    """A benchmark's `quick` or `full` sizes, measured on `base_model` when one is given."""
    return {**sizes["quick" if quick else "full"], **({"base_model": base_model} if base_model else {})}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def machine_report(device: torch.device, load_before: float) -> dict:
    load_after = load_average()
    cores = os.cpu_count() or 1
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(), "cpu_cores": cores,
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_before": load_before, "load_average_after": load_after,
        # The run itself loads the cores, so only the load it started with says whether others did.
        "busy_before": load_before > BUSY_LOAD_PER_CORE * cores,
    }


@contextmanager
def busy_neighbour() -> Iterator[None]:
    """Another process spinning on one core for as long as the block runs."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        process.kill()
        process.wait()
