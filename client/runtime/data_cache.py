"""The node's validated data, kept in memory and reloaded when its source changes.

A file source is fingerprinted by its stat (size, mtime, inode) — `stat` never opens the file,
so a check costs no read. A SQL source cannot be fingerprinted cheaply: it is reloaded once per
run (the roll call of a new run reads it again).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from sqlalchemy.engine import make_url

from client.node import NodeData, NodeError, load_node_data
from client.runtime.config import DataConfig
from common.contract import Contract


def _password(cfg: DataConfig) -> str | None:
    if not cfg.password_file:
        return os.environ.get("ATOLL_DATA_PASSWORD") or None
    try:
        return Path(cfg.password_file).read_text().strip()
    except OSError:
        raise NodeError("data", "the data source's password file is unreadable") from None


def source_url(cfg: DataConfig) -> str:
    """The source to read: a path, or a SQL URL with the password from its file/environment."""
    if "://" not in cfg.source:
        return cfg.source
    password = _password(cfg)
    url = make_url(cfg.source)
    if password is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


class DataCache:
    def __init__(self, cfg: DataConfig, contract: Contract) -> None:
        self.cfg = cfg
        self.contract = contract
        self._key: object = None
        self._data: NodeData | None = None
        self._lock = threading.Lock()
        self.loads = 0  # how many times the source was read (tests and the status line)

    def _fingerprint(self, run_id: str) -> object:
        if "://" in self.cfg.source:
            return ("run", run_id)
        try:
            st = os.stat(self.cfg.source)
        except OSError:
            return ("missing",)
        return (st.st_size, st.st_mtime_ns, st.st_ino)

    def get(self, run_id: str) -> NodeData:
        with self._lock:
            key = self._fingerprint(run_id)
            if self._data is None or key != self._key:
                self._data = load_node_data(
                    source_url(self.cfg),
                    self.contract,
                    table=self.cfg.table,
                    query=self.cfg.query,
                    id_from_row=self.cfg.id_from_row,
                    test_fraction=self.cfg.test_fraction,
                )
                self._key = key
                self.loads += 1
            return self._data
