"""server.fleet.FastGrid: a round's replies when one node's upload stalls the coordinator's pull.

The grid below scripts what Flower's grid does when a node is partitioned mid-upload: the pull
that meets its half-pushed reply retries the missing objects until the SuperLink gives up, then
returns an error reply for it — long after the round's deadline. It implements only the three
Grid calls FastGrid makes; the real grid is exercised by tests/test_faults_hosts.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from server.fleet import FastGrid


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps messages with the running task's identity (the ServerApp's, here)."""
    for key, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, key, value)


def _reply(ask: Message, to: str, *, error: bool = False) -> Message:
    """A node's reply to `ask` (pushed as message id `to`) as Flower's grid hands it over."""
    if error:
        reply = Message(error=Error(code=1, reason="object-push session expired"), reply_to=ask)
        node = 0  # Flower's error reply names the pulling side, not the node
    else:
        reply = Message(RecordDict(), reply_to=ask)
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
    replies = FastGrid(grid, poll=0.01).send_and_receive(_asks(), timeout=0.5)  # type: ignore[arg-type]
    answered = sorted(m.metadata.src_node_id for m in replies if not m.has_error())
    assert answered == [2, 3], replies
    assert sum(m.has_error() for m in replies) == 1
    assert grid.pulls == 2  # the stalled pull, then one last sweep — no waiting past it


def test_a_reply_that_had_not_arrived_by_the_deadline_is_not_waited_for() -> None:
    grid = StallingGrid(stall=0.0, answered_at=3600.0)  # nodes 2 and 3 never answer
    t0 = time.monotonic()
    replies = FastGrid(grid, poll=0.01).send_and_receive(_asks(), timeout=0.3)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 5.0
    assert [m.has_error() for m in replies] == [True]
