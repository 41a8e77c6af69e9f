"""The view of a running search: trials running and done, the best validation loss so far,
and the time left, as a Ray Tune callback in the driver (a line per event off a terminal).
It holds no console (Ray Tune keeps its callbacks in the experiment's state, which
`--resume` restores): it prints through the module's own."""

import time
from typing import Any

from ray.tune import Callback
from rich.console import Console

CONSOLE = Console(stderr=True, highlight=False, soft_wrap=True)


class TrialProgress(Callback):
    def __init__(self, total: int) -> None:
        self.total, self.started = total, time.monotonic()
        self.running: set[str] = set()
        self.done: dict[str, float | None] = {}
        self.best: tuple[float, str] | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._say(f"trial {self._name(trial)} started")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        loss = result.get("val_loss")
        if loss is not None and (self.best is None or loss < self.best[0]):
            self.best = (loss, self._name(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "done")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed")

    def _end(self, trial: Any, how: str) -> None:
        self.running.discard(trial.trial_id)
        last = trial.last_result or {}
        self.done[trial.trial_id] = last.get("best_val_loss")
        stopped = "" if last.get("finished") or how == "failed" else " (stopped early by ASHA)"
        self._say(f"trial {self._name(trial)} {how}{stopped}: best validation loss {last.get('best_val_loss', float('nan')):.4f}")

    def _say(self, event: str) -> None:
        finished, elapsed = len(self.done), time.monotonic() - self.started
        left = f", about {elapsed / finished * (self.total - finished):.0f} s left" if finished else ""
        best = f"; best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        CONSOLE.print(f"[{finished}/{self.total} done, {len(self.running)} running{left}] {event}{best}")

    @staticmethod
    def _name(trial: Any) -> str:
        settings = trial.config["trial"]
        return f"#{settings['index']} {settings['method']} lr {settings['lr']:g}"
