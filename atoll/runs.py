"""Submitting a run and following it: `follow_run` stages the contract, writes the run config, runs
`flwr run --stream` against the SuperLink and reads the outcome (run id, published model) from its
output; `round_of` reads round progress from a log line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atoll.flower_cli import submit_run
from common.files import toml_value
from server.coordinator_settings import stage_contract

APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app (this repo's pyproject.toml)
CONNECTION = "atoll"
CONTRACT_PATH_KEY = "contract-path"  # the submitter's file; staged, then sent as contract-hash
_PUBLISHED = re.compile(r"ATOLL published model=(\S+) version=(\d+) run=(\d+)")
_ROUND = re.compile(r"\[ROUND (\d+)/(\d+)\]")


@dataclass
class RunOutcome:
    exit_code: int
    run_id: str | None
    model_name: str | None
    model_version: int | None
    seconds: float


def follow_run(
    *,
    flwr_home: Path,
    config: dict[str, Any],
    work: Path,
    log_path: Path,
    on_line: Callable[[str], None] | None = None,
    timeout: float = 3600,
    connection: str = CONNECTION,
    app: Path | str = APP_DIR,
    contracts_dir: Path | None = None,
) -> RunOutcome:
    """Submit `app` (this app's directory, or its signed build `@atoll/atoll==x.y.z` in the app
    store) with `config` (`flwr run --stream`) and follow it to its outcome.

    `config["contract-path"]` is the submitter's contract file: it is staged in the coordinator's
    `contracts_dir` (the SuperLink's --contracts; default `work/contracts`, a LocalFederation's)
    and replaced by `contract-hash` — the path itself is never submitted."""
    cfg = dict(config)
    if CONTRACT_PATH_KEY in cfg:
        staged = contracts_dir or work / "contracts"
        cfg["contract-hash"] = stage_contract(Path(cfg.pop(CONTRACT_PATH_KEY)), staged)
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / f"run-{int(time.time() * 1000)}.toml"
    cfg_file.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in cfg.items()))
    found: dict[str, str] = {}

    def watch(line: str) -> None:
        if m := _PUBLISHED.search(line):
            found.update(name=m[1], version=m[2], run=m[3])
        elif "run_id" not in found and (m := re.search(r"[Rr]un (?:ID )?(\d{3,})", line)):
            found["run_id"] = m[1]
        if on_line is not None:
            on_line(line)

    t0 = time.monotonic()
    code = submit_run(
        app=app,
        flwr_home=flwr_home,
        connection=connection,
        run_config_file=cfg_file,
        log_path=log_path,
        on_line=watch,
        timeout=timeout,
    )
    return RunOutcome(
        exit_code=code,
        run_id=found.get("run") or found.get("run_id"),
        model_name=found.get("name"),
        model_version=int(found["version"]) if "version" in found else None,
        seconds=time.monotonic() - t0,
    )


def round_of(line: str) -> tuple[int, int] | None:
    """`(current, total)` when a log line starts a round (drives progress bars)."""
    m = _ROUND.search(line)
    return (int(m[1]), int(m[2])) if m else None
