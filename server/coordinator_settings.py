"""What only the coordinator host knows: its database URL and its audit signing key.

These never travel in a run config (Flower stores run configs in the SuperLink's state database
and forwards them to every SuperNode). The ServerApp reads them from the environment the
SuperLink was started with: `ATOLL_COORDINATOR_CONFIG` names a TOML file (mode 0600) with

    registry-url = "postgresql+psycopg://atoll:...@db/atoll"   # or sqlite:///...
    audit-key = "/etc/atoll/coordinator-audit/coordinator.pem"

`atoll superlink start --registry URL --audit-key PATH` writes that file beside the SuperLink's
state database and starts the SuperLink with the variable set; `LocalFederation` does the same.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.files import toml_value, write_private

ENV = "ATOLL_COORDINATOR_CONFIG"


class CoordinatorSettingsError(RuntimeError):
    """The coordinator's own settings are missing or invalid; the message says how to fix it."""


class CoordinatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    registry_url: str = Field(alias="registry-url", min_length=1)
    audit_key: Path = Field(alias="audit-key")

    @classmethod
    def load(cls) -> CoordinatorSettings:
        """From the file named by $ATOLL_COORDINATOR_CONFIG, validated, or a clear error."""
        name = os.environ.get(ENV, "")
        if not name:
            raise CoordinatorSettingsError(
                f"${ENV} is not set in the SuperLink's environment: start the SuperLink with "
                "`atoll superlink start --registry URL --audit-key PATH`, or set it to a TOML "
                "file holding registry-url and audit-key"
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

    def write(self, path: Path) -> Path:
        """Save as TOML, mode 0600 (it may hold a database password)."""
        fields = self.model_dump(by_alias=True, mode="json").items()
        return write_private(path, "".join(f"{k} = {toml_value(v)}\n" for k, v in fields))
