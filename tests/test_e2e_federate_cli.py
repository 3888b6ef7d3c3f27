"""The main job's command on any CSV + contract, non-interactively: `atoll federate --json-out`.

Synthetic multi-department data split by `department` into 2 SuperNodes, one DP round on the real
deployment engine (TLS, node auth, signed app), publish, API up and down, a JSON summary that
says what was published, what each node spent, and which signed build the nodes ran.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from atoll.processes import flower_env
from common.synth import write_csv

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def test_federate_writes_a_machine_readable_summary(tmp_path: Path) -> None:
    data = write_csv(tmp_path / "customers.csv", 1600, seed=11, departments=4)
    workdir, out = tmp_path / "fed", tmp_path / "summary.json"
    argv = [
        sys.executable, "-m", "atoll", "federate",
        "--data", str(data),
        "--contract", str(ROOT / "contracts" / "synthetic.yaml"),
        "--partition-by", "department",
        "--nodes", "2",
        "--rounds", "1",
        "--sample-rate", "0.05",
        "--workdir", str(workdir),
        "--json-out", str(out),
        "--no-serve",
    ]  # fmt: skip
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, env=flower_env(), cwd=tmp_path
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]

    summary = json.loads(out.read_text())
    assert summary["model"]["name"] == "synthetic-churn" and summary["model"]["version"] == 1
    nodes = summary["nodes"]
    assert [n["name"] for n in nodes] == ["node-1", "node-2"]
    assert sum(len(n["partition"]["department"]) for n in nodes) == 4  # 4 values, 2 silos
    assert sum(n["rows"] for n in nodes) == 1600
    assert all(n["participated"] and 0 < n["epsilon"] < 10 for n in nodes)
    # 331 held-out rows after 1 round: the DP estimate is honest, not precise (it may even be
    # unestimable, "NaN"); what must hold is that it is reported, and is an AUC when it is one
    auc = summary["global"]["roc_auc"]
    assert math.isnan(float(auc)) or 0.0 <= float(auc) <= 1.0
    assert summary["api"]["url"].startswith("https://127.0.0.1:")

    app = summary["app"]
    fab = workdir / "coordinator" / "app-store" / "fabs" / f"{app['fab_sha256']}.fab"
    assert app["signed"] and app["spec"] == "@atoll/atoll==0.1.0"
    assert hashlib.sha256(fab.read_bytes()).hexdigest() == app["fab_sha256"]
    supernode_logs = [
        log
        for log in (workdir / "logs").glob("node-*.log")
        if not log.name.endswith(".launcher.log")  # the warm clientapp launcher's own log
    ]
    assert supernode_logs
    for log in supernode_logs:
        assert "Receiving: train" in log.read_text()
    assert "nodes ran @atoll/atoll==0.1.0" in " ".join(res.stderr.split())
