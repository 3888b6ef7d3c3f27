"""The node owner's runtime configuration (`node.toml`): where the data is and how to serve.

Only the owner writes this file; nothing the coordinator sends can change it. Example:

    name = "branch-north"
    contract = "/etc/atoll/telco_churn.yaml"
    state-dir = "/var/lib/atoll/node"          # ledger, keys, audit log (mode 0700)
    socket = "/run/atoll/node.sock"            # where the relay connects (local only)
    socket-group = "atoll-relay"               # optional: group that may connect (mode 0660)
    size-bucket = "1000-10000"                 # optional, public: the node's size, as a range
    trusted-app-key = "/etc/atoll/trusted-entities.yaml"  # optional: run only signed, unexpired
    allow-older-app = false                    #   builds not older than the newest one run

    [data]
    source = "/srv/customers.csv"              # CSV/Parquet path or SQLAlchemy URL
    table = ""                                 # for SQL: a table, or
    query = ""                                 #   a SELECT
    password-file = ""                         # for SQL: the password, never on a command line
    id-from-row = false
    test-fraction = 0.2
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from client.node import NodeError
from common.files import toml_value


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    source: str = Field(min_length=1, description="CSV/Parquet path or SQLAlchemy URL")
    table: str = ""
    query: str = ""
    password_file: str = Field("", alias="password-file")
    id_from_row: bool = Field(False, alias="id-from-row")
    test_fraction: float = Field(0.2, alias="test-fraction", gt=0, lt=1)


class NodeConfig(BaseModel):
    """Everything the runtime needs; paths are resolved against the file's directory."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    contract: Path
    state_dir: Path = Field(alias="state-dir")
    socket: Path
    socket_group: str = Field("", alias="socket-group")
    size_bucket: str = Field("", alias="size-bucket")
    # the coordinator's app-signing key(s) (trusted-entities file): build manifests must verify
    trusted_app_key: Path | None = Field(None, alias="trusted-app-key")
    allow_older_app: bool = Field(False, alias="allow-older-app")
    # torch's intra-op threads for training and evaluation. 1: DP-SGD on small Poisson batches is
    # dominated by per-op overhead, and on a shared host several threads per op wait on each
    # other (measured on 2 busy cores: one 20-row loss 6.5 ms with 2 threads, 0.36 ms with 1)
    torch_threads: int = Field(1, alias="torch-threads", ge=1, le=256)
    # signed checkpoints of the node's audit log, one at the end of every run and query, each
    # extending the last; outside state-dir (which holds the signing key): a mounted share from
    # another host, so whoever rewrites the database cannot rewrite them. None: no checkpoints
    checkpoint_dir: Path | None = Field(None, alias="checkpoint-dir")
    data: DataConfig

    @model_validator(mode="after")
    def _checkpoints_outside_state(self) -> NodeConfig:
        if self.checkpoint_dir is not None and self.checkpoint_dir.resolve().is_relative_to(
            self.state_dir.resolve()
        ):
            raise ValueError(
                f"checkpoint-dir {self.checkpoint_dir} is inside state-dir {self.state_dir}, "
                "beside the audit key: use a directory on another volume or host"
            )
        return self

    @field_validator("size_bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if value:
            parse_bucket(value)
        return value

    @classmethod
    def load(cls, path: Path) -> NodeConfig:
        """Read and validate `path`; every problem becomes a NodeError naming the key."""
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as err:
            raise NodeError("node-config", f"cannot read {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise NodeError("node-config", f"{path} is not valid TOML: {err}") from None
        base = path.resolve().parent
        for key in ("contract", "state-dir", "socket", "trusted-app-key", "checkpoint-dir"):
            if isinstance(raw.get(key), str):
                raw[key] = str((base / raw[key]).resolve())
        data = raw.get("data")
        if isinstance(data, dict) and isinstance(data.get("source"), str):
            src = data["source"]
            if "://" not in src:
                data["source"] = str((base / src).resolve())
        try:
            return cls.model_validate(raw)
        except ValidationError as err:
            fields = "; ".join(".".join(map(str, e["loc"])) + f": {e['msg']}" for e in err.errors())
            raise NodeError("node-config", f"{path}: {fields}") from None

    def to_toml(self) -> str:
        """The file form of this configuration (used by `atoll node init` and tests)."""

        top = self.model_dump(by_alias=True, mode="json", exclude={"data"}, exclude_none=True)
        lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
        lines.append("\n[data]")
        data = self.data.model_dump(by_alias=True, mode="json")
        lines += [f"{k} = {toml_value(v)}" for k, v in data.items()]
        return "\n".join(lines) + "\n"


# A 1-2-5 series of node sizes: the public range a node's size is reported in.
_EDGES = [b * 10**e for e in range(1, 9) for b in (1, 2, 5)]


def parse_bucket(bucket: str) -> tuple[int, int]:
    """`"1000-2000"` → (1000, 2000); raises ValueError for anything else."""
    lo, sep, hi = bucket.partition("-")
    if not sep or not lo.isdigit() or not hi.isdigit() or int(lo) >= int(hi):
        raise ValueError(f"size-bucket must look like '1000-2000', got '{bucket}'")
    return int(lo), int(hi)


def bucket_of(rows: int) -> str:
    """The 1-2-5 range holding `rows` (what a node reports when its owner declared none)."""
    lo = 0
    for edge in _EDGES:
        if rows < edge:
            return f"{lo}-{edge}"
        lo = edge
    return f"{lo}-{lo * 10}"
