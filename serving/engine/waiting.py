"""The queue of requests waiting for a decode slot, fair across owners (tenants).

Within one owner, order is first come, first served. Across owners, admission follows
deficit round robin (Shreedhar and Varghese, SIGCOMM 1995) with each owner's weight as its
quantum: owners with requests waiting take turns, each turn adding its weight to the
owner's credit and admitting one request per whole unit of credit. So while others wait,
an owner's share of admissions follows its weight, however many requests it queued; an
owner whose queue empties loses its credit (it cannot bank a burst). With one owner this is
plain FIFO. `fair=False` is FIFO across owners too: the baseline `bench fairness` compares.
"""

from collections import deque
from itertools import count

from promptmux.serving.engine.sequence import Sequence


class WaitingQueue:
    def __init__(self, fair: bool = True) -> None:
        self.fair = fair
        self._queues: dict[str, deque[tuple[int, Sequence]]] = {}  # owner -> its requests, oldest first
        self._turns: deque[str] = deque()  # owners with requests waiting, in round-robin order
        self._credit: dict[str, float] = {}
        self._turn_started = False  # the owner at the front has had this turn's credit
        self._arrivals = count()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, sequence: Sequence) -> None:
        owner = sequence.row.owner
        if owner not in self._queues:
            self._queues[owner] = deque()
            self._turns.append(owner)
            self._credit[owner] = 0.0
        self._queues[owner].append((next(self._arrivals), sequence))
        self._size += 1

    def oldest(self) -> Sequence:
        """The request that has waited longest, whoever it belongs to."""
        return min((queue[0] for queue in self._queues.values()), key=lambda item: item[0])[1]

    def peek(self) -> Sequence | None:
        """The request to admit next (cancelled ones are dropped on the way), or None."""
        while self._size:
            owner = self._next_owner()
            sequence = self._queues[owner][0][1]
            if not sequence.cancelled:
                return sequence
            self._take(owner)
        return None

    def pop(self) -> Sequence:
        """Admit the request `peek` returned: it is charged to its owner's credit."""
        owner = self._next_owner()
        if self.fair:
            self._credit[owner] -= 1.0
        return self._take(owner)

    def drain(self) -> list[Sequence]:
        """Every request still waiting, in arrival order; the queue is left empty."""
        items = sorted((item for queue in self._queues.values() for item in queue), key=lambda item: item[0])
        self._queues, self._turns, self._credit, self._size, self._turn_started = {}, deque(), {}, 0, False
        return [sequence for _, sequence in items]

    def _next_owner(self) -> str:
        if not self.fair:
            return min(self._queues, key=lambda owner: self._queues[owner][0][0])
        while True:
            owner = self._turns[0]
            if self._credit[owner] >= 1.0:
                return owner
            if not self._turn_started:  # its turn begins: its weight is its credit for this turn
                self._credit[owner] += self._weight(owner)
                self._turn_started = True
            else:  # its turn is over: the next owner's begins
                self._turns.rotate(-1)
                self._turn_started = False

    def _weight(self, owner: str) -> float:
        return self._queues[owner][0][1].row.weight

    def _take(self, owner: str) -> Sequence:
        queue = self._queues[owner]
        _, sequence = queue.popleft()
        self._size -= 1
        if not queue:
            del self._queues[owner], self._credit[owner]
            if self._turns[0] == owner:
                self._turn_started = False
            self._turns.remove(owner)
        return sequence
