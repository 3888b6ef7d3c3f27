"""The coordinator's view of who a node is: the SuperLink's node id and its registered name.

A reply's self-declared name never decides attribution; a mismatch is refused and audited.
"""

from __future__ import annotations

from pathlib import Path

from privacy.audit import query
from server.coordinator_audit import CoordinatorAudit
from server.node_names import NodeNames
from server.server_app import Identities


def test_registered_names_are_kept_by_node_id(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    names = NodeNames(url)
    names.add(2**64 - 5, "north", "a" * 64)  # SuperLink node ids are uint64
    names.add(17, "south", "b" * 64)
    assert NodeNames(url).all() == {2**64 - 5: "north", 17: "south"}


def test_a_reply_claiming_another_name_is_refused_and_audited(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    audit = CoordinatorAudit(url, tmp_path / "audit" / "coordinator.pem", "9")
    ids = Identities({17: "south", 18: "north"}, audit)
    assert ids.check(17, "south") is None
    why = ids.check(17, "north")  # south's node pretends to be north
    assert why is not None and "registered as 'south'" in why
    unknown = ids.check(99, "south")
    assert unknown is not None and "not registered" in unknown
    assert ids.name(17) == "south" and ids.name(99) == "node-id:99"
    refused = query(url, "coordinator", action="node.identity-refused")
    assert [(e.details["node_id"], e.details["claimed"]) for e in refused] == [
        (17, "north"),
        (99, "south"),
    ]
