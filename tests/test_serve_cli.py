"""`promptmux serve` as a user runs it: a subprocess that owns a local Ray cluster."""

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import psutil
from serve_fixtures import build_registry, free_port, healthy, wait_until

from registry import RolloutSpec, RolloutVariant


def test_promptmux_serve_end_to_end_and_clean_shutdown(tmp_path) -> None:
    registry = build_registry(tmp_path / "registry")
    registry.set_rollout("act-as", RolloutSpec(variants=[RolloutVariant(version=1, weight=50),
                                                         RolloutVariant(version=2, weight=50)]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-c", "from registry.cli import main; main()", "serve", "--registry", registry.uri,
         "--port", str(port), "--base-model", "tiny-random-llama"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    children: set[int] = set()
    try:
        wait_until(lambda: process.poll() is not None or healthy(url), timeout=240, interval=0.5)
        assert process.poll() is None, process.stdout.read()
        children = {child.pid for child in psutil.Process(process.pid).children(recursive=True)}

        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        variants = set()
        for user in ("ann", "bob", "cyd", "dan", "eve", "fay"):
            completion = client.completions.create(model="act-as", prompt="a poet", max_tokens=3, user=user)
            variants.add(completion.model_extra["promptmux"]["variant"])
        assert variants <= {"v1", "v2"}
        stream = client.completions.create(model="summarize", prompt="a day", max_tokens=3, stream=True)
        assert [chunk.choices[0].finish_reason for chunk in stream][-1] in ("stop", "length")
        metrics = httpx.get(f"{url}/metrics").text
        for variant in variants:
            assert f'variant="{variant}"' in metrics
        assert 'task="summarize"' in metrics

        registry.set_alias("summarize", "production", 1)
        moved = time.monotonic()
        wait_until(lambda: client.completions.create(model="summarize", prompt="a day", max_tokens=1)
                   .model_extra["promptmux"]["variant"] == "production", timeout=5, interval=0.2)
        assert time.monotonic() - moved < 5
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "shutting down Serve and the local Ray cluster" in output
    leftovers = [pid for pid in children if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not leftovers, [psutil.Process(pid).cmdline()[:3] for pid in leftovers]
