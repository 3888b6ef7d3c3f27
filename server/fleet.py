"""Talking to the run's nodes: who they are, the roll call, fast request/reply, the finish.

Every reply is attributed to the node id the SuperLink authenticated and the name that id was
registered under (`Identities`), never to a name the reply claims; refusals and malformed
replies are recorded with their reason and never used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from common import wire
from common.contract import Contract
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from server.coordinator_audit import CoordinatorAudit
from server.node_names import NodeNames
from server.run_settings import RunSettings
from server.spend_reports import SpendReports

log = logging.getLogger("flwr")


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why and what to do."""


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum or time.monotonic() > deadline:
            return nodes
        time.sleep(1.0)


class FastGrid:
    """The run's grid, restricted to admitted nodes, polling for replies every `poll` seconds.

    Flower's `send_and_receive` sleeps 3 s between pulls; this one uses the Grid's public
    `push_messages` / `pull_messages` with a short interval (a round waits on the nodes, not on
    the coordinator's poll).

    One pull can outlast the deadline: Flower retries the objects of a reply whose upload was cut
    (a node partitioned mid-push) until the SuperLink gives up on it, and then returns an error
    reply for it. Replies that arrived meanwhile are still collected by one last pull, so a node
    that answered in time is never dropped because another's upload stalled the coordinator.
    """

    def __init__(
        self,
        grid: Grid,
        admitted: set[int] | None = None,
        poll: float = 0.1,
        on_unanswered: Callable[[dict[int, str]], None] | None = None,
    ) -> None:
        self._grid = grid
        self.admitted = admitted
        self.poll = poll
        self.on_unanswered = on_unanswered  # {node: why it gave no usable reply}, per exchange

    def get_node_ids(self) -> list[int]:
        ids = list(self._grid.get_node_ids())
        return ids if self.admitted is None else [n for n in ids if n in self.admitted]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        sent = list(messages)
        pushed = list(self._grid.push_messages(sent))  # in order; None: could not be pushed
        node_of = {mid: m.metadata.dst_node_id for mid, m in zip(pushed, sent, strict=True)}
        unanswered = {
            m.metadata.dst_node_id: "the message could not be sent (the SuperLink refused it)"
            for mid, m in zip(pushed, sent, strict=True)
            if mid is None
        }
        pending = {mid for mid in pushed if mid is not None}
        wait = timeout if timeout is not None else 3600.0
        deadline = time.monotonic() + wait
        replies: list[Message] = []

        def pull() -> None:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)

        stalled = False  # the last pull returned after the deadline
        while pending and time.monotonic() < deadline:
            pull()
            stalled = time.monotonic() >= deadline
            if pending and not stalled:
                time.sleep(self.poll)
        if pending and stalled:
            pull()
        # an error reply (e.g. Flower's for an upload cut mid-push) names the message it answers,
        # not the node: attribute it by the message's recipient
        for reply in replies:
            if reply.has_error() and reply.metadata.reply_to_message_id in node_of:
                node = node_of[reply.metadata.reply_to_message_id]
                unanswered[node] = f"error reply: {(reply.error.reason or '')[:200]}"
        unanswered.update({node_of[mid]: f"no reply within {wait:.0f} s" for mid in pending})
        if unanswered and self.on_unanswered is not None:
            self.on_unanswered(unanswered)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def query_nodes(
    grid: Grid,
    nodes: list[int],
    kind: str,
    config: ConfigRecord,
    timeout: float,
    arrays: ArrayRecord | None = None,
) -> tuple[dict[int, Message], dict[int, str]]:
    """Send one query to `nodes`; returns ({node: reply}, {node: why there is none})."""
    msgs = [Message(wire.request(config, arrays), dst_node_id=n, message_type=kind) for n in nodes]
    replies: dict[int, Message] = {}
    for reply in FastGrid(grid).send_and_receive(msgs, timeout=timeout):
        node = reply.metadata.src_node_id
        if node in nodes:  # else e.g. an error the SuperLink raised for an unreachable node
            replies[node] = reply
    missing = {node: f"no reply within {timeout:.0f} s" for node in set(nodes) - set(replies)}
    return replies, missing


class Identities:
    """Who each node is: the name its SuperLink node id was registered under, never a claim."""

    def __init__(self, registered: dict[int, str], audit: CoordinatorAudit) -> None:
        self.registered = registered
        self.audit = audit

    @classmethod
    def load(cls, registry_url: str, audit: CoordinatorAudit) -> Identities:
        """The names recorded at registration (`server/node_names.py`); the audit log names
        every node by them too."""
        names = NodeNames(registry_url)
        try:
            ids = cls(names.all(), audit)
        finally:
            names.close()
        audit.names = ids.registered
        return ids

    def learn(self, grid: Grid) -> None:
        """Add the SuperLink's own record of registered names (it wins over ours)."""
        for info in grid.get_nodes():
            if info.name:
                self.registered[int(info.node_id)] = str(info.name)

    def name(self, node: int) -> str:
        return self.registered.get(node, f"node-id:{node}")

    def check(self, node: int, claimed: str) -> str | None:
        """None if the reply's claimed name is the registered one; else the refusal reason."""
        if node in self.registered and claimed == self.registered[node]:
            return None
        why = (
            f"node id {node} is registered as '{self.registered[node]}' but its reply claims "
            f"'{claimed[:60]}'"
            if node in self.registered
            else f"node id {node} is not registered with this coordinator"
        )
        self.audit("node.identity-refused", node_id=node, claimed=claimed[:100], reason=why)
        return why


def roll_call(
    grid: Grid,
    contract: Contract,
    settings: RunSettings,
    reports: SpendReports,
    run_id: str,
    ids: Identities,
) -> tuple[dict[int, pb.Joined], dict[int, str]]:
    """Ask every connected node to join: it checks contract and budget before reading data."""
    nodes = wait_for_nodes(grid, settings.min_nodes, timeout=min(settings.round_timeout, 300))
    ids.learn(grid)
    replies, refused = query_nodes(
        grid, nodes, wire.ROLLCALL, node_settings(settings, contract, 1), settings.round_timeout
    )
    roster: dict[int, pb.Joined] = {}
    for node, reply in replies.items():
        joined = wire.joined_of(reply)
        if isinstance(joined, pb.Refusal):
            refused[node] = f"[{joined.code}] {joined.message}"
        elif (why := ids.check(node, joined.node_name)) is not None:
            refused[node] = f"[identity] {why}"
        else:
            roster[node] = joined
    for node, why in refused.items():
        log.warning("node %s did not join: %s", ids.name(node), why)
        reports.record(
            run_id=run_id, node=ids.name(node), task=contract.task, status="refused", reason=why
        )
    if len(roster) < settings.min_nodes:
        raise RunFailed(
            f"only {len(roster)} node(s) joined (min-nodes={settings.min_nodes}); "
            f"{len(refused)} refused — see the reasons above, start more nodes or lower min-nodes"
        )
    log.info(
        "roll call: %s",
        ", ".join(
            f"{ids.name(n)} ({j.size_bucket} train rows, run ε≤{j.planned_epsilon:.2f})"
            for n, j in roster.items()
        ),
    )
    return roster, refused


def node_settings(settings: RunSettings, contract: Contract, server_round: int) -> ConfigRecord:
    """The run's settings as every node receives them; one message per round: a node evaluates
    the incoming global weights inside its train request, the final model on finish."""
    return wire.settings_record(
        {
            **settings.node_config(contract.hash),
            wire.SETTINGS_KEYS["server_round"]: server_round,
            wire.SETTINGS_KEYS["evaluate_incoming"]: settings.eval_noise > 0,
        }
    )


def finish_nodes(
    grid: Grid,
    settings: RunSettings,
    contract: Contract,
    reports: SpendReports,
    run_id: str,
    roster: dict[int, pb.Joined],
    ids: Identities,
    final: ArrayRecord | None,
) -> dict[int, pb.Finished]:
    """Tell every admitted node the run is over (they release unspent budget); record spend.

    With the final weights, each node first evaluates them and may release its drift reference
    (charged, noised releases, part of the run's reservation); returns each node's confirmed
    finish (its final evaluation and reference, where it sent them).
    """
    config = node_settings(settings, contract, settings.rounds)
    replies, failed = query_nodes(
        grid,
        list(roster),
        wire.FINISH,
        config,
        timeout=min(settings.round_timeout, 300),
        arrays=final,
    )
    finals: dict[int, pb.Finished] = {}
    for node, reply in replies.items():
        finished = wire.finished_of(reply)
        if isinstance(finished, pb.Refusal):
            failed[node] = f"[{finished.code}] {finished.message}"
        elif (why := ids.check(node, finished.node_name)) is not None:
            failed[node] = f"[identity] {why}"
        else:
            finals[node] = finished
            reports.record(
                run_id=run_id,
                node=ids.name(node),
                task=contract.task,
                status="participated",
                metrics=wire.budget_metrics(finished.budget),
            )
    for node, why in failed.items():
        name = ids.name(node)
        reports.record(run_id=run_id, node=name, task=contract.task, status="failed", reason=why)
        log.warning("node %s did not confirm the end of the run: %s", name, why)
    return finals
