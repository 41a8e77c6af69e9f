"""An S3 API server on 127.0.0.1 for tests and benchmarks: moto's server mode in its own
process (as s3fs's own tests run it), with its address and test credentials put into the
environment, where s3fs, subprocesses and Ray's workers all find them (botocore reads
`AWS_ENDPOINT_URL`). moto is a development dependency (`pip install -e .[dev]`)."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
import httpx

from promptmux.serving.hosting.ports import free_port


@contextmanager
def s3_server() -> Iterator[str]:
    """Start the server, yield its URL, stop it; the environment is restored afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    settings = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {name: os.environ.get(name) for name in settings}
    try:
        _wait_for(url, server)
        os.environ.update(settings)
        _forget_clients()
        yield url
    finally:
        _forget_clients()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.terminate()
        server.wait(timeout=30)


def new_bucket() -> str:
    """A new, empty bucket on the server of the environment: `s3://<bucket>`."""
    bucket = f"promptmux-{uuid.uuid4().hex[:12]}"
    fsspec.filesystem("s3", use_listings_cache=False).mkdir(bucket)
    return f"s3://{bucket}"


def _forget_clients() -> None:
    """Drop the S3 filesystems fsspec keeps per set of arguments: each holds a client bound to
    the endpoint the environment named when it was made, which may be another server's."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _wait_for(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the moto S3 server did not start (is moto[server] installed?)") from None
            time.sleep(0.1)
