"""A free local port, for the servers that `promptmux serve`, the demo and the tests start.

It lives in the base package because it is the one that `serving` and `tasks` (the demo)
may both import.
"""

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]
