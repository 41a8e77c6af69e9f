"""Where output goes and how progress shows, for the CLI and the jobs it runs: rich's spinner
on a terminal, and elsewhere (output to a file, CI) a line when a long step starts and one
every few seconds while it lasts, so that a log never sits silent for minutes while work goes on."""

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

EVERY_S = 10.0
# Piped output (logs, CI) gets room for whole tables; a terminal keeps its own width.
console = Console() if sys.stdout.isatty() else Console(width=160)
err_console = Console(stderr=True, soft_wrap=True)


@contextmanager
def status(console: Console, text: str, every_s: float = EVERY_S) -> Iterator[None]:
    """`console.status(text)` on a terminal; elsewhere `text ...`, then `text ... N s` every
    `every_s` seconds until the block ends."""
    if console.is_terminal:
        with console.status(text):
            yield
        return
    console.print(f"{text} ...", highlight=False)
    started, done = time.monotonic(), threading.Event()

    def beat() -> None:
        while not done.wait(every_s):
            console.print(f"{text} ... {time.monotonic() - started:.0f} s", highlight=False)

    beating = threading.Thread(target=beat, name="progress", daemon=True)
    beating.start()
    try:
        yield
    finally:
        done.set()
        beating.join()


class Paced:
    """Whether `every_s` seconds have passed since it last said yes (the first call says yes)."""

    def __init__(self, every_s: float = EVERY_S) -> None:
        self.every_s, self.last = every_s, -float("inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True
