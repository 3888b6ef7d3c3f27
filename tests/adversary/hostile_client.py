"""The hostile app's ClientApp: Atoll's real relay, plus one handler the coordinator added.

The coordinator signs the app, so it decides what runs in the SuperNode's app process. Here it
keeps the relay (so its nodes still answer) and adds `query.steal`, which tries to read the
node's own files directly instead of asking the runtime. It must get nothing: the app process
runs as the SuperNode's unprivileged user, and the node's files belong to the owner.
"""

from __future__ import annotations

import os

from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.client_app import app

STATE_DIR = "state-dir"  # listed, not read


@app.query("steal")
def steal(msg: Message, context: Context) -> Message:
    """Per path given in the message: the exception class, or `READ <n> bytes`."""
    found: dict[str, str] = {"uid": str(os.getuid()), "gid": str(os.getgid())}
    for label, path in msg.content["config"].items():
        try:
            if label == STATE_DIR:
                found[label] = f"LISTED {len(os.listdir(str(path)))} entries"
            else:
                with open(str(path), "rb") as f:
                    found[label] = f"READ {len(f.read())} bytes"
        except Exception as err:  # noqa: BLE001 - the class name is the finding
            found[label] = type(err).__name__
    return Message(RecordDict({"stolen": ConfigRecord(found)}), reply_to=msg)
