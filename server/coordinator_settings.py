"""What only the coordinator host knows: its database URL, its audit and publishing keys, and
where its data contracts are.

These never travel in a run config (Flower stores run configs in the SuperLink's state database
and forwards them to every SuperNode). The ServerApp reads them from the environment the
SuperLink was started with: `ATOLL_COORDINATOR_CONFIG` names a TOML file (mode 0600) with

    registry-url = "postgresql+psycopg://atoll:...@db/atoll"   # or sqlite:///...
    audit-key = "/etc/atoll/coordinator-audit/coordinator.pem"
    publishing-key = "/etc/atoll/publishing/publishing.pem"   # signs every registry row
    contracts-dir = "/etc/atoll/contracts"                     # runs name a contract by its hash
    checkpoint-dir = "/mnt/audit-share/coordinator"            # signed checkpoints, off this host

`atoll superlink start --registry URL --audit-key PATH --publishing-key PATH --contracts DIR
--checkpoint-dir DIR`
writes that file beside the SuperLink's state database and starts the SuperLink with the
variable set; `LocalFederation` does the same. The publishing key's `.pub` is what the API and
CLI pin (`--registry-public-key`) to verify registry rows (`server.registry_signing`).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.contract import Contract, ContractError, contract_from_json, load_contract
from common.errors import AtollError
from common.files import toml_value, write_private

ENV = "ATOLL_COORDINATOR_CONFIG"


class CoordinatorSettingsError(AtollError, RuntimeError):
    """The coordinator's own settings are missing or invalid; the message says how to fix it."""


class CoordinatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    registry_url: str = Field(alias="registry-url", min_length=1)
    audit_key: Path = Field(alias="audit-key")
    publishing_key: Path = Field(alias="publishing-key")
    contracts_dir: Path = Field(alias="contracts-dir")
    # where the coordinator log's signed checkpoints go (one per run, each extending the last);
    # never beside the audit key: whoever can replace the key could rewrite them too
    checkpoint_dir: Path = Field(alias="checkpoint-dir")

    @model_validator(mode="after")
    def _checkpoints_away_from_the_key(self) -> CoordinatorSettings:
        key_dir = self.audit_key.expanduser().resolve().parent
        if self.checkpoint_dir.expanduser().resolve().is_relative_to(key_dir):
            raise ValueError(
                f"checkpoint-dir {self.checkpoint_dir} is beside the audit key {self.audit_key}: "
                "whoever can replace the key could rewrite the checkpoints too; use a directory "
                "on another volume or host (e.g. a mounted share)"
            )
        return self

    @classmethod
    def load(cls) -> CoordinatorSettings:
        """From the file named by $ATOLL_COORDINATOR_CONFIG, validated, or a clear error."""
        name = os.environ.get(ENV, "")
        if not name:
            raise CoordinatorSettingsError(
                f"${ENV} is not set in the SuperLink's environment: start the SuperLink with "
                "`atoll superlink start --registry URL --audit-key PATH --publishing-key PATH "
                "--contracts DIR --checkpoint-dir DIR`, or set it to a TOML file holding "
                "registry-url, audit-key, publishing-key, contracts-dir and checkpoint-dir"
            )
        path = Path(name)
        try:
            raw = tomllib.loads(path.read_text())
            return cls.model_validate(raw)
        except OSError as err:
            raise CoordinatorSettingsError(f"coordinator settings {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise CoordinatorSettingsError(f"coordinator settings {path}: {err}") from None
        except ValidationError as err:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            raise CoordinatorSettingsError(f"coordinator settings {path}: {where}") from None

    def contract(self, contract_hash: str) -> Contract:
        """The run's contract: `<contracts-dir>/<hash>.json` (put there by `stage_contract`),
        checked against its hash, or a clear error."""
        path = self.contracts_dir / f"{contract_hash}.json"
        try:
            contract = contract_from_json(path.read_text())
        except OSError as err:
            raise CoordinatorSettingsError(
                f"contract {contract_hash[:16]}… is not in the coordinator's contracts directory "
                f"{self.contracts_dir} ({err.strerror}): submit the run with `atoll run "
                "--contract FILE --contracts-dir DIR` (DIR = the SuperLink's --contracts)"
            ) from None
        except (ContractError, ValueError) as err:
            raise CoordinatorSettingsError(f"contract {path}: {err}") from None
        if contract.hash != contract_hash:
            raise CoordinatorSettingsError(
                f"contract {path} does not match its hash (it was altered): stage it again with "
                "`atoll run --contract FILE`"
            )
        return contract

    def write(self, path: Path) -> Path:
        """Save as TOML, mode 0600 (it may hold a database password)."""
        fields = self.model_dump(by_alias=True, mode="json").items()
        return write_private(path, "".join(f"{k} = {toml_value(v)}\n" for k, v in fields))


def stage_contract(path: Path, contracts_dir: Path) -> str:
    """Put the contract at `path` (on the coordinator host) where the ServerApp finds it by hash
    (`CoordinatorSettings.contract`); returns the hash, the run config's `contract-hash`."""
    try:
        contract = load_contract(path)
    except ContractError as err:
        raise CoordinatorSettingsError(str(err)) from None
    contracts_dir.mkdir(parents=True, exist_ok=True)
    target = contracts_dir / f"{contract.hash}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(contract.canonical_json())
    tmp.replace(target)  # atomic: a concurrent run never reads half a contract
    return contract.hash
