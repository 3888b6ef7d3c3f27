"""No orphans (issue 13, item 5): when the process that started a local federation dies — even by
SIGKILL, mid-run — nothing it started keeps running: SuperLink, SuperNodes, node runtimes, app
store, and the processes Flower starts below them (flower-superexec, flwr-serverapp,
flwr-clientapp), some of which Flower detaches into sessions of their own.

The federation is the real `atoll federate` on a small synthetic data set. Every process it
starts inherits a unique environment variable, so the test finds each one by /proc — also those
started after its snapshot and those re-parented to init — and checks them by (pid, start time).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from helpers.procs import Proc, still_running, tagged, wait_until

from atoll.processes import flower_env
from common.synth import write_csv

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[1]
TAG = "ATOLL_ORPHAN_PROBE"


def _names(procs: list[Proc]) -> str:
    return "\n".join(f"{p.pid} {p.state} {p.cmdline[:160]}" for p in procs)


def test_a_sigkilled_federate_leaves_no_process_behind(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "synthetic.csv", 1200, seed=0, departments=2)
    tag = uuid.uuid4().hex
    log = tmp_path / "federate.log"
    argv = [
        sys.executable, "-m", "atoll", "federate",
        "--data", str(data),
        "--contract", str(ROOT / "contracts" / "synthetic.yaml"),
        "--partition-by", "department",
        "--nodes", "2",
        "--rounds", "40",  # far more than the test waits for: it is killed mid-run
        "--workdir", str(tmp_path / "federation"),
    ]  # fmt: skip
    with open(log, "wb") as out:
        owner = subprocess.Popen(
            argv,
            env={**flower_env(), TAG: tag},
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:

        def mid_run() -> bool:
            lines = [p.cmdline for p in tagged(TAG, tag)]
            return owner.poll() is None and any("flwr-serverapp" in c for c in lines)

        assert wait_until(mid_run, timeout=300), (
            f"no run in progress (exit {owner.poll()}):\n{log.read_text()[-3000:]}"
        )
        before = tagged(TAG, tag)
        cmdlines = " ".join(p.cmdline for p in before)
        for name in ("flower-superlink", "flower-supernode", "node runtime", "app-store"):
            assert name in cmdlines, f"{name} not among the federation's processes"
        supervised = [p for p in before if "supervise.py" not in p.cmdline]
        assert sum("flower-supernode" in p.cmdline for p in supervised) == 2
        assert owner.poll() is None, "atoll federate ended before it could be killed"
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait(timeout=10)

        def all_gone() -> bool:
            return not still_running(before) and not tagged(TAG, tag)

        assert wait_until(all_gone, timeout=60), (
            "left running after the owner was SIGKILLed:\n"
            + _names(still_running(before) + tagged(TAG, tag))
        )
    finally:  # whatever the outcome, nothing of this test may survive it
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for proc in tagged(TAG, tag):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
