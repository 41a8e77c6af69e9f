"""The rollout controller: every automatic rollout's closed loop, inside the serving app.

One per application (a small Serve deployment of its own). About every
`controller_interval_s` it looks at each task with an automatic rollout and lets
`auto_rollout.advance` read the new feedback, decide and act on the registry; the
replicas pick the new split or alias up at their next refresh. Each round first finishes
any registry edit a writer left half-done (a controller killed mid-decision, say), so a
restarted controller completes what its predecessor decided. Registry trouble is logged
and the next round tries again.
"""

import logging
import threading

from promptmux.core.errors import PromptmuxError
from promptmux.registry import Registry
from promptmux.registry.history import HistoryEntry
from promptmux.serving.rollouts.loop import OutcomeLog, advance

log = logging.getLogger(__name__)


class RolloutController:
    def __init__(self, registry: Registry, interval_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.logs: dict[str, OutcomeLog] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="promptmux-controller", daemon=True)

    def run_once(self) -> list[HistoryEntry]:
        for edit in self.registry.finish_pending():
            log.warning("rollout controller: finished a half-done edit (%s)", edit.summary())
        changes = []
        for task in self.registry.tasks.names():
            try:
                change = advance(self.registry, self.logs.setdefault(task, OutcomeLog(self.registry, task)))
            except PromptmuxError as exc:
                log.warning("rollout controller: %s skipped this round (%s)", task, exc)
                continue
            if change is not None:
                log.warning("rollout controller: %s %s", task, change.summary())
                changes.append(change)
        return changes

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stopped.set()

    def _loop(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # the registry may fail any round; the loop must not
                log.exception("rollout controller round failed; trying again next round")
