"""Ports for the servers that `promptmux serve`, the demo and the tests start: a free one,
and a check that the one asked for is free.

It lives in the base package because it is the one that `serving` and `tasks` (the demo)
may both import.
"""

import errno
import socket

from promptmux.core.errors import PromptmuxError


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Refuse a port that something already listens on (or a host this machine cannot listen
    on), by binding it for a moment as the HTTP proxy will."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
            probe.bind((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PromptmuxError(f"port {port} on {host} is in use: stop what listens there, or choose another "
                                 "with --port") from None
        raise PromptmuxError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
