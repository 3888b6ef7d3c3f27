"""Hostile or broken nodes (issue 13, item 2): the coordinator checks every reply before it
aggregates, drops a node whose reply is unusable (with the reason, in the model card's failures
and the coordinator's audit log), bounds the weight a claimed example count buys, and offers a
norm-bounded FedAvg. Unit tests on real Flower Message/ArrayRecord objects (no processes),
then one end-to-end test on the real deployment engine (marker `e2e` too): Telco split by
`Contract` into 3 nodes, one of which runs tests/adversary/hostile_runtime.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from helpers.hostile_node import held_out_auc, make_hostile
from helpers.replies import honest_metrics, model, train_reply

from atoll.federation import LocalFederation
from atoll.partition import partition_csv
from common import wire
from common.run_config import STRATEGY_NAMES, RunConfig
from privacy.audit import query
from privacy.ledger import Policy
from server.coordinator_audit import CoordinatorAudit
from server.fleet import RunFailed
from server.registry import Registry
from server.replies import capped_weights, check_train, signature
from server.strategies import STRATEGIES, make_strategy

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contracts" / "telco_churn.yaml"

NAN = float("nan")
REFERENCE = signature(ArrayRecord({k: Array(v) for k, v in model(0.0).items()}))


def _global(value: float = 0.0) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in model(value).items()})


class _Grid:
    """Just enough of a Grid for `configure_train`: the node ids."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def _start_round(strategy, nodes: list[int], value: float = 0.0) -> None:  # type: ignore[no-untyped-def]
    list(strategy.configure_train(1, _global(value), ConfigRecord(), _Grid(nodes)))


# ---- the validator ------------------------------------------------------------------------
def test_an_honest_reply_passes() -> None:
    assert check_train(train_reply(1, model(0.3)), REFERENCE) is None


@pytest.mark.parametrize(
    ("arrays", "metrics", "code"),
    [
        (model(NAN), None, "reply-nonfinite"),
        (model(float("inf")), None, "reply-nonfinite"),
        (model(0.1, shape=(1, 4)), None, "reply-shape"),
        ({"linear.weight": np.zeros((1, 3), np.float32)}, None, "reply-shape"),  # a tensor short
        ({**model(0.1), "extra": np.zeros(2, np.float32)}, None, "reply-shape"),
        (None, None, "reply-malformed"),  # no arrays at all
        (model(0.1), {"epsilon": 0.5}, "reply-metric-missing"),  # no num-examples
        (model(0.1), {wire.NUM_EXAMPLES: 1.0}, "reply-metric-missing"),  # no ε
        (model(0.1), honest_metrics(epsilon=NAN), "reply-metric-nonfinite"),
        (model(0.1), honest_metrics(**{wire.HIST_POS: [1.0, NAN]}), "reply-metric-nonfinite"),
        (model(0.1), honest_metrics(**{wire.NUM_EXAMPLES: 0.0}), "reply-examples"),
        (model(0.1), honest_metrics(**{wire.NUM_EXAMPLES: -5.0}), "reply-examples"),
        (model(0.1), honest_metrics(**{wire.NUM_EXAMPLES: 1e12}), "reply-examples"),
        (model(0.1), honest_metrics(**{wire.NUM_EXAMPLES: [1.0, 2.0]}), "reply-examples"),
    ],
)
def test_unusable_replies_are_named(arrays, metrics, code: str) -> None:  # type: ignore[no-untyped-def]
    problem = check_train(train_reply(1, arrays, metrics), REFERENCE)
    assert problem is not None and problem.code == code, problem


def test_a_second_array_record_is_malformed() -> None:
    extra = RecordDict({"more": ArrayRecord([np.zeros(2, np.float32)])})
    problem = check_train(train_reply(1, model(0.1), extra=extra), REFERENCE)
    assert problem is not None and problem.code == "reply-malformed"


def test_claimed_weights_are_clamped_around_the_lower_median() -> None:
    assert capped_weights({1: 1, 2: 1, 3: 1, 4: 1e6}, 1.0) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert capped_weights({1: 1, 2: 1, 3: 1, 4: 1e6, 5: 1e-6}, 10.0) == {
        1: 1, 2: 1, 3: 1, 4: 10, 5: 0.1,
    }  # fmt: skip
    assert capped_weights({1: 1, 2: 1e6}, 4.0) == {1: 1, 2: 4}  # two nodes: the smaller claim


# ---- the strategies drop, record and audit -------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fedavg", 0.2),
        ("fedmedian", 0.2),
        ("fedtrimmedavg", 0.2),
        ("fedavg-clipped", 0.5 / 3),  # 0.3 is clipped to the median step 0.2
    ],
)
def test_a_nan_node_is_dropped_recorded_and_the_round_goes_on(name: str, expected: float) -> None:
    strategy = make_strategy(name, min_nodes=3)
    _start_round(strategy, [1, 2, 3, 4])
    replies = [train_reply(n, model(v)) for n, v in ((1, 0.1), (2, 0.2), (3, 0.3))]
    replies.append(train_reply(4, model(NAN)))
    arrays, _ = strategy.aggregate_train(1, replies)
    got = arrays.to_numpy_ndarrays()
    assert all(np.all(np.isfinite(a)) for a in got)
    assert np.allclose(got[0], expected, atol=1e-6)  # of 0.1, 0.2, 0.3 only
    assert sorted(strategy.train_by_node[1]) == [1, 2, 3]
    assert strategy.failures[1][4].startswith("[reply-nonfinite]")


def test_the_run_fails_clearly_when_drops_leave_fewer_than_min_nodes() -> None:
    strategy = make_strategy("fedavg", min_nodes=3)
    _start_round(strategy, [1, 2, 3])
    replies = [train_reply(1, model(0.1)), train_reply(2, model(0.2)), train_reply(3, model(NAN))]
    with pytest.raises(RunFailed, match=r"round 1: 2 usable train .*min-nodes=3.*reply-nonfinite"):
        strategy.aggregate_train(1, replies)
    assert strategy.failures[1][3].startswith("[reply-nonfinite]")


def test_a_drop_is_in_the_coordinators_audit_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    audit = CoordinatorAudit(url, tmp_path / "audit" / "coordinator.pem", "7")
    strategy = make_strategy("fedavg", min_nodes=2)
    strategy.on_reply = audit.reply
    _start_round(strategy, [1, 2, 3])
    replies = [
        train_reply(1, model(0.1)),
        train_reply(2, model(0.2)),
        train_reply(3, model(0.1, shape=(1, 7))),
    ]
    strategy.aggregate_train(1, replies)
    received = query(url, "coordinator", action="round.reply")
    assert sorted(e.details["node_id"] for e in received) == [1, 2, 3]  # as received, digested
    dropped = query(url, "coordinator", action="round.refused")
    assert [(e.details["node_id"], e.details["code"]) for e in dropped] == [(3, "reply-shape")]
    assert "global model" in dropped[0].details["reason"]


def test_an_inflated_example_count_buys_no_weight_by_default() -> None:
    strategy = make_strategy("fedavg")
    _start_round(strategy, [1, 2, 3])
    replies = [train_reply(1, model(0.0)), train_reply(2, model(0.0))]
    replies.append(train_reply(3, model(3.0), honest_metrics(**{wire.NUM_EXAMPLES: 1e9})))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 1.0)  # equal weights, not ~3.0
    assert RunConfig.default("max-weight-ratio") == 1.0


def test_replies_with_different_metric_keys_still_aggregate() -> None:
    """Flower refuses a round whose MetricRecords differ in keys; one node's extra or missing
    optional metric must not fail everyone's round."""
    strategy = make_strategy("fedavg")
    _start_round(strategy, [1, 2])
    odd = honest_metrics(**{"surprise": 1.0})
    del odd[wire.STEPS]
    arrays, metrics = strategy.aggregate_train(
        1, [train_reply(1, model(0.0)), train_reply(2, model(1.0), odd)]
    )
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 0.5)
    assert isinstance(metrics, MetricRecord) and "surprise" not in metrics


# ---- norm-bounded FedAvg ------------------------------------------------------------------
def test_fedavg_clipped_is_registered_beside_the_robust_strategies() -> None:
    assert "fedavg-clipped" in STRATEGY_NAMES and tuple(STRATEGIES) == STRATEGY_NAMES
    assert type(make_strategy("fedavg-clipped")).__name__ == "RecordingFedAvgClipped"


@pytest.mark.parametrize(
    ("hostile", "factor", "expected"),
    [
        (100.0, 1.0, 1.0),  # ×100: clipped to the median step
        (-100.0, 1.0, 0.5),  # sign-flipped ×100: one median step backwards
        (100.0, 2.0, 1.25),  # factor 2: at most twice the median step
        (1.0, 1.0, 1.0),  # all honest: nothing clipped
    ],
)
def test_fedavg_clipped_bounds_each_update_by_the_median_norm(
    hostile: float, factor: float, expected: float
) -> None:
    strategy = make_strategy("fedavg-clipped", clip_factor=factor)
    _start_round(strategy, [1, 2, 3, 4], value=5.0)
    replies = [train_reply(n, model(6.0)) for n in (1, 2, 3)]  # honest: +1 everywhere
    replies.append(train_reply(4, model(5.0 + hostile)))
    arrays, _ = strategy.aggregate_train(1, replies)
    for got in arrays.to_numpy_ndarrays():
        assert np.allclose(got, 5.0 + expected, atol=1e-5)
    assert (4 in strategy.clipped[1]) == (abs(hostile) > factor)
    plain = make_strategy("fedavg")
    _start_round(plain, [1, 2, 3, 4], value=5.0)
    arrays, _ = plain.aggregate_train(
        1, [train_reply(n, model(6.0)) for n in (1, 2, 3)] + [train_reply(4, model(5 + hostile))]
    )
    assert np.allclose(arrays.to_numpy_ndarrays()[0], 5.0 + (3 + hostile) / 4)  # unbounded


# ---- end to end: a hostile node among real SuperNodes ---------------------------------------
@pytest.mark.e2e
def test_hostile_node_on_the_deployment_engine(tmp_path: Path, telco_csv: Path) -> None:
    """Three 2-round runs of one federation (3 nodes, node-3 hostile from the second run on):

    clean (fedavg-clipped, all honest) → ×100 scaled node-3 (fedavg-clipped): within 0.02 held-out
    AUC of the clean run → NaN node-3 (plain fedavg): dropped every round, audited, the run still
    publishes a finite model of the other two.
    """
    mode = tmp_path / "hostile-mode.txt"
    outputs: list[str] = []
    with LocalFederation(tmp_path / "fed") as fed:
        parts = partition_csv(telco_csv, "Contract", 3, tmp_path / "silos")
        fed.start_coordinator()
        for part in parts:
            fed.add_node(part.name, part.path, CONTRACT, policy=Policy(cap_epsilon=60, delta=1e-5))
        make_hostile(fed, parts[2].name, mode)

        def run(name: str, strategy: str, attack: str) -> float:
            mode.write_text(attack)
            outcome = fed.run(
                {
                    "num-server-rounds": 2,
                    "min-nodes": 2,
                    "strategy": strategy,
                    "sample-rate": 0.05,  # 20 steps of ~50-150 rows: less DP noise per step
                    "noise-multiplier": 1.0,  # pinned: the comparison must not move with defaults
                    "model-name": name,
                    "contract-path": str(CONTRACT),
                    "round-timeout": 120,
                },
                on_line=outputs.append,
                timeout=600,
            )
            assert outcome.exit_code == 0 and outcome.model_name == name, "\n".join(outputs[-40:])
            return held_out_auc(fed.registry_url, name, telco_csv, CONTRACT)

        clean = run("faults-clean", "fedavg-clipped", "honest")
        scaled = run("faults-scaled", "fedavg-clipped", "scale")
        assert clean > 0.75, clean  # the clean run learned something to compare with
        print(f"held-out AUC: clean {clean:.4f}, node-3 x100 under fedavg-clipped {scaled:.4f}")
        assert abs(scaled - clean) <= 0.02, (clean, scaled)
        nan_auc = run("faults-nan", "fedavg", "nan")
        registry = Registry(fed.registry_url)
        try:
            card = registry.card("faults-nan")
        finally:
            registry.close()
        hostile = parts[2].name
        assert sorted(p.name for p in card.participants) == sorted(p.name for p in parts[:2])
        failures = card.run["failures_by_round"]
        assert sorted(failures) == ["1", "2"]
        assert all(f[hostile].startswith("[reply-nonfinite]") for f in failures.values())
        assert nan_auc > 0.75, nan_auc
        run_id = card.run["run_id"]
        dropped = [
            e.details
            for e in query(fed.registry_url, "coordinator", action="round.refused", limit=None)
            if e.details["run"] == run_id
        ]
        assert sorted((d["round"], d["node"], d["code"]) for d in dropped) == [
            (r, hostile, "reply-nonfinite") for r in (1, 2)
        ]
