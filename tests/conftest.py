"""Shared fixtures: small real models built from configs, and throw-away registries."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Embedded models are built once per test session into a private cache.
os.environ.setdefault("PROMPTMUX_CACHE", str(Path(__file__).resolve().parent.parent / ".cache" / "test-models"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import torch
from helpers import REAL_MODEL
from transformers.utils import logging as transformers_logging

from promptmux.cli import main
from promptmux.methods.fingerprint import BaseModelFingerprint
from promptmux.models.embedded import built_path
from promptmux.models.loading import fingerprint, load_model
from promptmux.registry import Registry, TaskSpec
from promptmux.serving.bench.s3_server import new_bucket
from promptmux.serving.bench.s3_server import s3_server as running_s3_server

transformers_logging.disable_progress_bar()  # as the CLI runs: commands run in-process print what users see
REAL_MODEL_BUILD = pytest.StashKey[subprocess.Popen]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """On a fresh checkout, build the real model (about 20 s of one core, from its GGUF) in a
    niced process while the tests before its own run: the suite leaves a core idle a third
    of the time. `real_model` waits for it."""
    wanted = any("real_model" in getattr(item, "fixturenames", ()) for item in session.items)
    if wanted and not (built_path(REAL_MODEL) / "config.json").exists():
        build = "import sys; from promptmux.models.embedded import resolve_model_path; resolve_model_path(sys.argv[1])"
        session.stash[REAL_MODEL_BUILD] = subprocess.Popen(
            [sys.executable, "-c", build, REAL_MODEL], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.nice(19))


def pytest_sessionfinish(session: pytest.Session) -> None:
    build = session.stash.get(REAL_MODEL_BUILD, None)
    if build is not None and build.poll() is None:  # the run stopped before the real model's tests
        build.kill()
        build.wait()


@pytest.fixture(scope="session")
def real_model(request: pytest.FixtureRequest) -> str:
    """The real embedded model's id, once its background build (if one started) has ended;
    a build that failed is retried, and reported, where the model loads."""
    build = request.session.stash.get(REAL_MODEL_BUILD, None)
    if build is not None:
        build.wait()
    return REAL_MODEL


@pytest.fixture(scope="session")
def llama() -> torch.nn.Module:
    return load_model("tiny-random-llama", dtype="float32")


@pytest.fixture(scope="session")
def llama_fp(llama: torch.nn.Module) -> BaseModelFingerprint:
    return fingerprint(llama)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """An S3 API server on 127.0.0.1 (moto's server mode), for the whole session."""
    with running_s3_server() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A new, empty bucket on the S3 server: `s3://<bucket>`."""
    return new_bucket()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(str(tmp_path / "registry"))


@pytest.fixture
def task(registry: Registry, llama_fp: BaseModelFingerprint) -> str:
    registry.tasks.create(TaskSpec(name="sentiment", base_model="tiny-random-llama"), llama_fp)
    return "sentiment"


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Run `promptmux ...` in-process through the real entry point (exit code, stdout, stderr)."""

    def run(*args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", ["promptmux", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    yield run
