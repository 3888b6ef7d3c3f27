"""server.fleet.FastGrid: a round's replies when one node's upload stalls the coordinator's pull.

The grid below scripts what Flower's grid does when a node is partitioned mid-upload: the pull
that meets its half-pushed reply retries the missing objects until the SuperLink gives up, then
returns an error reply for it, long after the round's deadline, and that error reply names the
coordinator's side, not the node. It implements only the three Grid calls FastGrid makes; the
real grid is exercised by tests/test_faults_hosts.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.fleet import FastGrid
from server.strategies import make_strategy

COORDINATOR = 0  # the node id Flower's grid-side error replies carry


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity (the ServerApp's, here)."""
    for key, value in (("_run_id", 1), ("_node_id", COORDINATOR), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


def _reply(ask: Message, to: str, *, error: bool = False) -> Message:
    """A node's reply to `ask` (pushed as message id `to`) as Flower's grid hands it over."""
    if error:
        reply = Message(error=Error(code=1, reason="object-push session expired"), reply_to=ask)
        node = COORDINATOR
    else:
        arrays = ask.content["arrays"] if "arrays" in ask.content else ArrayRecord()
        metrics = MetricRecord({"num-examples": 1, "epsilon": 0.1})
        reply = Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=ask)
        node = ask.metadata.dst_node_id
    reply.metadata.__dict__["_src_node_id"] = node
    reply.metadata.__dict__["_reply_to_message_id"] = to
    return reply


class StallingGrid:
    """Node 1's reply is half-pushed: the first pull that meets it blocks `stall` s. Nodes 2
    and 3 answer while that pull blocks (their replies exist from `answered_at` on)."""

    def __init__(self, stall: float, answered_at: float) -> None:
        self.stall, self.t0 = stall, time.monotonic()
        self.answered_at = answered_at
        self.asks: dict[str, Message] = {}
        self.pulls = 0

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        self.asks = {f"m{m.metadata.dst_node_id}": m for m in messages}
        return list(self.asks)

    def pull_messages(self, ids: Iterable[str]) -> list[Message]:
        """Like Flower's: list the replies present now, then fetch each one's objects."""
        self.pulls += 1
        ids = set(ids)
        present = time.monotonic() - self.t0 >= self.answered_at
        out = [_reply(self.asks[m], m) for m in sorted(ids - {"m1"})] if present else []
        if "m1" in ids:  # the cut upload: its objects are retried, then an error reply
            time.sleep(self.stall)
            out.append(_reply(self.asks["m1"], "m1", error=True))
        return out

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


def _asks() -> list[Message]:
    return [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2, 3)]


def test_replies_that_arrived_while_a_stalled_pull_blocked_past_the_deadline_are_kept() -> None:
    grid = StallingGrid(stall=1.0, answered_at=0.3)
    seen: list[dict[int, str]] = []
    fast = FastGrid(grid, poll=0.01, on_unanswered=seen.append)  # type: ignore[arg-type]
    replies = fast.send_and_receive(_asks(), timeout=0.5)
    answered = sorted(m.metadata.src_node_id for m in replies if not m.has_error())
    assert answered == [2, 3], replies
    assert grid.pulls == 2  # the stalled pull, then one last sweep — no waiting past it
    # the error reply is the coordinator's, but it is attributed to the node it concerns
    assert len(seen) == 1 and list(seen[0]) == [1], seen
    assert "object-push session expired" in seen[0][1]


def test_a_reply_that_had_not_arrived_by_the_deadline_is_not_waited_for() -> None:
    grid = StallingGrid(stall=0.0, answered_at=3600.0)  # nodes 2 and 3 never answer
    seen: list[dict[int, str]] = []
    fast = FastGrid(grid, poll=0.01, on_unanswered=seen.append)  # type: ignore[arg-type]
    t0 = time.monotonic()
    replies = fast.send_and_receive(_asks(), timeout=2.0)
    assert time.monotonic() - t0 < 10.0
    assert [m.has_error() for m in replies] == [True]
    assert seen == [
        {
            1: "error reply: object-push session expired",
            2: "no reply within 2 s",
            3: "no reply within 2 s",
        }
    ]


def test_the_model_card_names_the_node_whose_upload_was_cut_never_the_coordinator() -> None:
    strategy = make_strategy("fedavg")
    fast = FastGrid(StallingGrid(stall=1.0, answered_at=0.3), poll=0.01)  # type: ignore[arg-type]
    fast.on_unanswered = strategy.note_unanswered
    start = ArrayRecord([np.ones(2, dtype=np.float32)])
    asks = list(strategy.configure_train(1, start, ConfigRecord(), fast))
    assert sorted(m.metadata.dst_node_id for m in asks) == [1, 2, 3]
    arrays, _metrics = strategy.aggregate_train(1, fast.send_and_receive(asks, timeout=0.5))
    assert arrays is not None and sorted(strategy.train_by_node[1]) == [2, 3]
    assert list(strategy.failures[1]) == [1], strategy.failures  # nothing under COORDINATOR
    assert "object-push session expired" in strategy.failures[1][1]
