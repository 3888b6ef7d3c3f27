"""The update rule's state a node keeps between the rounds of a run (in memory, never sent).

DP-SGD releases every step's noised gradient in the accounting sense; Adam's moments are computed
from those alone, so carrying them to the node's next round of the same run is post-processing
(no ε). They are keyed by run id, dropped when the run closes, and at most `MAX_RUNS` runs are
held (a coordinator that never finishes its runs cannot grow the node's memory). A runtime that
restarts loses them, and the run's next round starts its update rule afresh: slower, not wrong.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from client.training.dp_sgd import Moments

MAX_RUNS = 16


class MomentStore:
    """Per-run update-rule state, least recently used first out."""

    def __init__(self, max_runs: int = MAX_RUNS) -> None:
        self._runs: OrderedDict[str, Moments] = OrderedDict()
        self._max = max_runs
        self._lock = threading.Lock()

    def get(self, run_id: str) -> Moments | None:
        with self._lock:
            return self._runs.get(run_id)

    def put(self, run_id: str, moments: Moments) -> None:
        with self._lock:
            self._runs[run_id] = moments
            self._runs.move_to_end(run_id)
            while len(self._runs) > self._max:
                self._runs.popitem(last=False)

    def drop(self, run_id: str) -> None:
        with self._lock:
            self._runs.pop(run_id, None)

    def __contains__(self, run_id: object) -> bool:
        with self._lock:
            return run_id in self._runs
