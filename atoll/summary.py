"""The main job's report: what was trained, by whom, at what privacy cost, where it is served."""

from __future__ import annotations

import platform
from typing import Any

from rich.console import Console
from rich.table import Table

from atoll.federation import LocalFederation
from atoll.partition import Partition
from atoll.runs import RunOutcome
from server.registry import Registry
from server.registry_signing import RowVerifier


def build_summary(
    fed: LocalFederation,
    outcome: RunOutcome,
    parts: list[Partition],
    api_url: str,
    partition_by: str,
) -> dict[str, Any]:
    """A JSON-ready summary read back from the registry (what was really published)."""
    assert outcome.model_name is not None
    verifier = RowVerifier.from_files([fed.publishing_key.with_suffix(".pub")])  # pinned copy
    with Registry(fed.registry_url, verifier=verifier) as reg:
        card = reg.card(outcome.model_name, outcome.model_version)
    last_round = card.metrics["rounds"][-1]
    node_metrics = last_round.get("nodes", {})
    nodes = []
    for part in parts:
        participant = next((p for p in card.participants if p.name == part.name), None)
        m = node_metrics.get(part.name, {})
        nodes.append(
            {
                "name": part.name,
                "partition": {partition_by: part.values},
                "rows": part.rows,
                "train_examples": participant.train_examples if participant else None,
                "test_examples": participant.test_examples if participant else None,
                "roc_auc": m.get("roc_auc"),
                "roc_auc_ci95": m.get("ci95", {}).get("roc_auc"),
                "epsilon": card.privacy.epsilon_per_node.get(part.name),
                "participated": participant is not None,
            }
        )
    return {
        "model": {
            "name": card.name,
            "version": card.version,
            "task": card.task,
            "kind": card.model_kind,
            "contract_hash": card.contract_hash,
        },
        "run": {
            "id": outcome.run_id,
            "seconds": round(outcome.seconds, 1),
            **{k: card.run.get(k) for k in ("strategy", "rounds")},
        },
        "global": card.metrics.get("final", {}),
        "rounds": [{"round": r["round"], **r.get("global", {})} for r in card.metrics["rounds"]],
        "privacy": {"delta": card.privacy.delta, "epsilon_per_node": card.privacy.epsilon_per_node},
        "nodes": nodes,
        "api": {
            "url": api_url,
            "docs": f"{api_url}/docs",
            "predict": f"{api_url}/models/{card.name}/predict",
        },
        "app": _app(fed),
        "registry": fed.registry_url,
        "workdir": str(fed.workdir),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def _with_interval(value: Any, ci95: Any) -> str:
    """'0.812 [0.771, 0.850]', '0.812' without an interval, '—' without a value."""
    if not isinstance(value, int | float) or value != value:  # None or NaN
        return "—"
    if isinstance(ci95, list | tuple) and len(ci95) == 2 and all(
        isinstance(v, int | float) and v == v for v in ci95
    ):
        return f"{value:.3f} [{ci95[0]:.3f}, {ci95[1]:.3f}]"
    return f"{value:.3f}"


def _app(fed: LocalFederation) -> dict[str, Any]:
    """Which code the nodes ran: the signed build (its hash is what node owners can pin)."""
    if fed.last_app is None:
        return {"signed": False}
    return {
        "signed": True,
        "spec": fed.last_app.spec,
        "fab_sha256": fed.last_app.fab_hash,
        "signed_by": [v.public_key_id for v in fed.last_app.verifications],
    }


def print_summary(summary: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"model {summary['model']['name']} v{summary['model']['version']} "
        f"({summary['model']['task']}, {summary['run']['strategy']}, "
        f"{summary['run']['rounds']} rounds)"
    )
    # AUCs come from Gaussian-noised score histograms (DP evaluation): estimates with 95 % intervals
    for col in ("node", "silo", "rows", "ROC AUC, own test (DP estimate, 95% CI)", "ε this run"):
        table.add_column(col)
    for n in summary["nodes"]:
        silo = "; ".join(f"{k}={'/'.join(v)}" for k, v in n["partition"].items())
        auc = _with_interval(n["roc_auc"], n.get("roc_auc_ci95"))
        eps = f"{n['epsilon']:.2f}" if n["epsilon"] is not None else "did not train"
        table.add_row(n["name"], silo, str(n["rows"]), auc, eps)
    g = summary["global"]
    estimates = g.get("estimates", {})
    table.add_row(
        "[bold]global[/]",
        "all test rows (noised count)",
        str(g.get("examples", "")),
        f"[bold]{_with_interval(g.get('roc_auc'), estimates.get('roc_auc', {}).get('ci95'))}[/]",
        f"δ={summary['privacy']['delta']}",
    )
    console.print(table)
    if estimates:
        parts = [
            f"{label} {_with_interval(g.get(key), estimates.get(key, {}).get('ci95'))}"
            for key, label in (("log_loss", "log loss"), ("brier", "Brier"))
        ]
        cal = g.get("calibration", {})
        if cal.get("applied"):
            parts.append(
                f"Platt-calibrated (logit × {cal['slope']:.3f} + {cal['intercept']:.3f}, "
                "fitted on the final DP releases, no extra ε)"
            )
        console.print("published model: " + "; ".join(parts))
        if g.get("interval_covers"):
            console.print(f"[dim]{g['interval_covers']}[/]")
    app = summary["app"]
    if app["signed"]:
        console.print(
            f"nodes ran {app['spec']} signed by {', '.join(app['signed_by'])} "
            f"(FAB sha256 {app['fab_sha256'][:16]}…)"
        )
    console.print(f"API: {summary['api']['url']}  (docs {summary['api']['docs']})")
