"""The node runtime's decisions (client/runtime/service.py), called in process.

The order of checks is proven with a FIFO as the data source: opening it would block, so a
request that returns proves the data was never read. Hostile settings and weights are refused
with a code naming the limit, before data; what passes is charged before it is computed; after
the charge any failure is one constant refusal; replies carry no exact count or loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.node import caller, node_config, settings, weights, without_blocking
from sqlalchemy import delete, func, select

from client.node import NodeError
from client.runtime import service as service_module
from client.runtime import steps as steps_module
from client.runtime.config import NodeConfig
from client.runtime.moments import MomentStore
from client.runtime.service import FAILED, NodeService
from common.protos.atoll.node.v1 import runtime_pb2 as pb
from common.synth import generate
from privacy.audit import Checkpoint, Problem, load_public_keys, query, verify
from privacy.audit_models import AuditEntryRow
from privacy.ledger import Ledger, Policy
from privacy.limits import RequestLimits

CANARY = "CANARYruntime5d1c"


_call = without_blocking


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "data.csv"
    os.mkfifo(path)
    return path


@pytest.fixture
def data_csv(tmp_path: Path) -> Path:
    frame = generate(1500, seed=3)
    frame.loc[0, "customer_id"] = CANARY
    frame.loc[1, "plan"] = CANARY
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


def _service(tmp_path: Path, data: Path, **kw: object) -> NodeService:
    return NodeService(node_config(tmp_path, data, **kw), seed=5)  # type: ignore[arg-type]


def test_over_budget_is_refused_before_data_with_the_numbers(tmp_path: Path, fifo: Path) -> None:
    svc = _service(tmp_path, fifo, policy=Policy(cap_epsilon=0.5, delta=1e-5))
    replies = [
        _call(lambda: svc.rollcall(pb.RollCallRequest(caller=caller(), settings=settings()))),
        _call(
            lambda: svc.train(
                pb.TrainRequest(caller=caller(), settings=settings(), weights=weights())
            )
        ),
    ]
    for reply in replies:
        assert reply.WhichOneof("outcome") == "refusal"
        assert reply.refusal.code == "budget-cap"
        assert "remains" in reply.refusal.message and "difference" in reply.refusal.message
    assert Ledger(tmp_path / "state").status().events == 0


BAD_SETTINGS = [
    ({"contract_hash": ""}, "contract-hash-missing"),
    ({"contract_hash": "0" * 64}, "contract-mismatch"),
    ({"model": "transformer"}, "model-not-allowed"),
    ({"local_epochs": 0}, "limit-local-epochs"),
    ({"local_epochs": 11}, "limit-local-epochs"),
    ({"total_rounds": 101}, "limit-total-rounds"),
    ({"total_rounds": 0}, "limit-total-rounds"),
    ({"server_round": 3}, "setting-server-round"),
    ({"sample_rate": 1e-9}, "limit-steps"),
    ({"sample_rate": 0.002}, "limit-expected-batch"),
    ({"sample_rate": 0.0}, "setting-sample-rate"),
    ({"sample_rate": float("nan")}, "setting-sample-rate"),
    ({"eval_bins": 10**7}, "limit-eval-bins"),
    ({"noise_multiplier": 0.1}, "limit-noise"),
    ({"noise_multiplier": float("inf")}, "limit-noise"),
    ({"eval_noise": 0.01}, "limit-noise"),
    ({"final_eval_noise": 0.01}, "limit-noise"),
    ({"optimizer": "lbfgs"}, "setting-optimizer"),
    ({"optimizer": ""}, "setting-optimizer"),
    ({"learning_rate": float("nan")}, "setting-learning-rate"),
    ({"learning_rate_final": 0.0}, "setting-learning-rate-final"),  # not sent
    ({"learning_rate_final": 1.5}, "setting-learning-rate-final"),
    ({"learning_rate_final": float("nan")}, "setting-learning-rate-final"),
    ({"max_grad_norm": -1.0}, "setting-max-grad-norm"),
]


@pytest.mark.parametrize(("bad", "code"), BAD_SETTINGS, ids=[c for _, c in BAD_SETTINGS])
def test_out_of_bounds_settings_are_refused_naming_the_limit(
    tmp_path: Path, data_csv: Path, bad: dict[str, object], code: str
) -> None:
    svc = _service(tmp_path, data_csv, size_bucket="1000-2000")
    reply = svc.train(pb.TrainRequest(caller=caller(), settings=settings(**bad), weights=weights()))
    assert reply.WhichOneof("outcome") == "refusal", bad
    assert reply.refusal.code == code
    assert Ledger(tmp_path / "state").status().events == 0  # nothing charged


def test_settings_refusals_happen_before_data_except_the_public_batch_check(
    tmp_path: Path, fifo: Path
) -> None:
    svc = _service(tmp_path, fifo, size_bucket="1000-2000")
    for bad, code in BAD_SETTINGS:
        if code == "limit-expected-batch":
            continue  # checked against the size bucket once the data is known to load
        reply = _call(
            lambda b=bad: svc.rollcall(  # type: ignore[misc]
                pb.RollCallRequest(caller=caller(), settings=settings(**b))
            )
        )
        assert reply.refusal.code == code


def _tensor_edit(w: pb.Weights, edit: Callable[[np.ndarray], np.ndarray]) -> pb.Weights:
    out = pb.Weights()
    out.CopyFrom(w)
    t = out.tensors[0]
    values = edit(np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape)).copy())
    t.data = np.ascontiguousarray(values, dtype="<f4").tobytes()
    t.shape[:] = list(values.shape)
    return out


HOSTILE_WEIGHTS = {
    "nan": (
        lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a),
        "weights-nonfinite",
    ),
    "-inf": (lambda a: np.full_like(a, -np.inf), "weights-nonfinite"),
    "huge": (lambda a: np.full_like(a, 1e6), "limit-weight-norm"),
    "shape": (lambda a: np.zeros((a.shape[0], a.shape[1] + 1)), "weights-shape"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_WEIGHTS))
def test_hostile_weights_are_refused_before_data(tmp_path: Path, fifo: Path, kind: str) -> None:
    svc = _service(tmp_path, fifo)
    edit, code = HOSTILE_WEIGHTS[kind]
    bad = _tensor_edit(weights(), edit)
    for reply in (
        _call(
            lambda: svc.train(pb.TrainRequest(caller=caller(), settings=settings(), weights=bad))
        ),
        _call(
            lambda: svc.evaluate(
                pb.EvaluateRequest(caller=caller(), settings=settings(), weights=bad)
            )
        ),
    ):
        assert reply.refusal.code == code
    missing = pb.Weights(tensors=list(weights().tensors)[1:])
    reply = _call(
        lambda: svc.train(pb.TrainRequest(caller=caller(), settings=settings(), weights=missing))
    )
    assert reply.refusal.code == "weights-shape"
    assert Ledger(tmp_path / "state").status().events == 0


def test_full_protocol_charges_first_and_releases_no_exact_numbers(
    tmp_path: Path, data_csv: Path
) -> None:
    svc = _service(tmp_path, data_csv)
    s = settings(total_rounds=2)
    joined = svc.rollcall(pb.RollCallRequest(caller=caller(), settings=s))
    assert joined.WhichOneof("outcome") == "joined", joined
    assert joined.joined.size_bucket == "1000-2000"  # 1,200 train rows: a public range only
    replies: list[object] = [joined]
    for rnd in (1, 2):
        rs = settings(total_rounds=2, server_round=rnd)
        trained = svc.train(pb.TrainRequest(caller=caller(), settings=rs, weights=weights()))
        assert trained.WhichOneof("outcome") == "trained", trained
        evaluated = svc.evaluate(
            pb.EvaluateRequest(caller=caller(), settings=rs, weights=weights())
        )
        assert evaluated.WhichOneof("outcome") == "evaluated", evaluated
        assert len(evaluated.evaluated.hist_pos) == 20
        replies += [trained, evaluated]
    finished = svc.finish(pb.FinishRequest(caller=caller()))
    replies.append(finished)
    ledger = Ledger(tmp_path / "state")
    status = ledger.status()
    assert status.events == 4 and status.runs[0].status == "closed"
    assert finished.finished.budget.epsilon_run == pytest.approx(ledger.run_epsilon("101"))
    assert finished.finished.budget.epsilon_run == pytest.approx(status.runs[0].planned_epsilon)
    t = replies[1].trained  # type: ignore[attr-defined]
    # the release is what was charged: σ=1, q=1/20, 20 Poisson steps (one epoch at q=0.05)
    assert (t.noise_multiplier, t.sample_rate, t.steps) == pytest.approx((1.0, 0.05, 20))
    # Nothing exact leaves: no field of any reply is a count, loss or quality number.
    fields = {f.name for r in replies for _, msg in r.ListFields() for f, _ in msg.ListFields()}  # type: ignore[attr-defined]
    assert not {"num_examples", "train_loss", "positives", "rows"} & fields
    assert CANARY not in "".join(str(r) for r in replies)
    entries = query(ledger.engine, "node:dept-a")
    assert CANARY not in "".join(repr(e.details) for e in entries)
    replay = svc.train(
        pb.TrainRequest(caller=caller(), settings=settings(total_rounds=2), weights=weights())
    )
    assert replay.refusal.code == "budget-closed"  # a finished run cannot be replayed


def test_a_failure_after_the_charge_is_one_constant_refusal_and_the_charge_stays(
    tmp_path: Path, data_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = _service(tmp_path, data_csv)

    def explode(*_a: object, **_k: object) -> None:
        raise FloatingPointError(f"value {CANARY} overflowed")

    monkeypatch.setattr(service_module, "train_dp", explode)
    monkeypatch.setattr(steps_module, "evaluate", explode)
    t = svc.train(pb.TrainRequest(caller=caller(), settings=settings(), weights=weights()))
    e = svc.evaluate(pb.EvaluateRequest(caller=caller(), settings=settings(), weights=weights()))
    assert t.refusal == FAILED and e.refusal == FAILED
    assert t.refusal.SerializeToString() == e.refusal.SerializeToString()
    assert Ledger(tmp_path / "state").status().events == 2  # both charged
    actions = [x.action for x in query(Ledger(tmp_path / "state").engine, "node:dept-a")]
    assert actions.count("request.failed") == 2
    assert CANARY not in str(t) + str(e)


def test_target_epsilon_is_calibrated_by_the_node_and_floored(
    tmp_path: Path, data_csv: Path
) -> None:
    limits = RequestLimits(min_noise_multiplier=0.8)
    svc = _service(tmp_path, data_csv, policy=Policy(cap_epsilon=50, delta=1e-5, limits=limits))
    reply = svc.rollcall(
        pb.RollCallRequest(
            caller=caller(), settings=settings(target_epsilon=40.0, noise_multiplier=0.0)
        )
    )
    assert reply.joined.noise_multiplier == pytest.approx(0.8)  # a generous target: the floor


def test_runs_cannot_change_settings_midway(tmp_path: Path, data_csv: Path) -> None:
    svc = _service(tmp_path, data_csv)
    assert svc.rollcall(pb.RollCallRequest(caller=caller(), settings=settings())).joined.node_name
    reply = svc.train(
        pb.TrainRequest(caller=caller(), settings=settings(learning_rate=5.0), weights=weights())
    )
    assert reply.refusal.code == "run-changed"


def test_data_errors_carry_no_values_or_paths(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"customer_id,{CANARY}\n1,2,3\n")
    svc = _service(tmp_path, bad)
    reply = svc.rollcall(pb.RollCallRequest(caller=caller(), settings=settings()))
    assert reply.refusal.code == "data"
    assert CANARY not in reply.refusal.message and str(tmp_path) not in reply.refusal.message
    status = Ledger(tmp_path / "state").status()  # a node that cannot join holds nothing
    assert [r.status for r in status.runs] == ["closed"] and status.reserved_epsilon == 0


def test_data_is_cached_and_reloaded_when_the_file_changes(tmp_path: Path, data_csv: Path) -> None:
    svc = _service(tmp_path, data_csv)
    for rnd in (1, 2):
        svc.train(
            pb.TrainRequest(caller=caller(), settings=settings(server_round=rnd), weights=weights())
        )
    assert svc.data.loads == 1
    generate(900, seed=4).to_csv(data_csv, index=False)
    svc.rollcall(pb.RollCallRequest(caller=caller("202"), settings=settings()))
    assert svc.data.loads == 2


def test_one_message_per_round_charges_the_same_releases(tmp_path: Path, data_csv: Path) -> None:
    """Evaluations ride on the next round's train request and on finish: same plan, same ε."""
    svc = _service(tmp_path, data_csv)
    fused = {"total_rounds": 3, "evaluate_incoming": True}
    assert svc.rollcall(pb.RollCallRequest(caller=caller(), settings=settings(**fused))).joined
    for rnd in (1, 2, 3):
        s = settings(server_round=rnd, **fused)
        t = svc.train(pb.TrainRequest(caller=caller(), settings=s, weights=weights()))
        assert t.WhichOneof("outcome") == "trained", t
        assert len(t.trained.incoming.hist_pos) == (0 if rnd == 1 else 20)  # round 1: random init
    done = svc.finish(
        pb.FinishRequest(
            caller=caller(), settings=settings(server_round=3, **fused), weights=weights()
        )
    )
    assert len(done.finished.final.hist_pos) == 20
    ledger = Ledger(tmp_path / "state")
    status = ledger.status()
    assert status.events == 6 and status.runs[0].status == "closed"  # 3 trainings + 3 evaluations
    assert ledger.run_epsilon("101") == pytest.approx(status.runs[0].planned_epsilon)
    # a finish for a run never served evaluates nothing (no reservation to charge)
    other = svc.finish(
        pb.FinishRequest(caller=caller("303"), settings=settings(**fused), weights=weights())
    )
    assert not other.finished.final.hist_pos
    assert Ledger(tmp_path / "state").status().events == 6


def test_every_finished_run_leaves_a_checkpoint_that_exposes_a_cut_tail(
    tmp_path: Path, data_csv: Path
) -> None:
    """The node log is checkpointed off the state directory at each run's end; deleting the
    newest entries afterwards still verifies as a chain, but not against the checkpoint."""
    share = tmp_path / "share"
    svc = NodeService(node_config(tmp_path, data_csv, checkpoint_dir=share), seed=5)
    s = settings(total_rounds=1)
    assert svc.rollcall(pb.RollCallRequest(caller=caller(), settings=s)).WhichOneof("outcome")
    trained = svc.train(pb.TrainRequest(caller=caller(), settings=s, weights=weights()))
    assert trained.WhichOneof("outcome") == "trained", trained
    assert svc.finish(pb.FinishRequest(caller=caller())).WhichOneof("outcome") == "finished"
    [first] = sorted(share.glob("*.json"))
    ledger = Ledger(tmp_path / "state")
    log_id = "node:dept-a"
    keys = load_public_keys([tmp_path / "state" / "audit-key" / "audit.pub"])
    report = verify(ledger.engine, log_id, keys, Checkpoint.load(first))
    assert report.ok and report.checkpoint_seq == report.last_seq  # the whole run is covered
    with ledger.engine.begin() as conn:  # an intruder cuts the newest two entries
        newest = conn.scalar(
            select(func.max(AuditEntryRow.seq)).where(AuditEntryRow.log_id == log_id)
        )
        conn.execute(
            delete(AuditEntryRow).where(
                AuditEntryRow.log_id == log_id, AuditEntryRow.seq >= newest - 1
            )
        )
    assert verify(ledger.engine, log_id, keys).ok  # the chain alone cannot tell
    cut = verify(ledger.engine, log_id, keys, Checkpoint.load(first))
    assert (cut.ok, cut.problem) == (False, Problem.TRUNCATED)


def test_a_checkpoint_directory_beside_the_key_is_refused(tmp_path: Path, data_csv: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text(
        node_config(tmp_path, data_csv)
        .to_toml()
        .replace(
            'name = "dept-a"', f'name = "dept-a"\ncheckpoint-dir = "{tmp_path / "state" / "cp"}"'
        )
    )
    with pytest.raises(NodeError, match="checkpoint-dir .* is inside state-dir"):
        NodeConfig.load(toml)


def _charged_purposes(ledger: Ledger) -> list[str]:
    entries = query(ledger.engine, "node:dept-a")
    return [str(e.details["purpose"]) for e in entries if e.action == "release.charged"]


def _run_to_finish(svc: NodeService, **overrides: object) -> pb.FinishReply:
    """Roll call, one round, finish with the final weights (one message per round)."""
    s = {"total_rounds": 1, "evaluate_incoming": True, **overrides}
    joined = svc.rollcall(pb.RollCallRequest(caller=caller(), settings=settings(**s)))
    assert joined.WhichOneof("outcome") == "joined", joined
    t = svc.train(pb.TrainRequest(caller=caller(), settings=settings(**s), weights=weights()))
    assert t.WhichOneof("outcome") == "trained", t
    return svc.finish(pb.FinishRequest(caller=caller(), settings=settings(**s), weights=weights()))


def test_the_drift_reference_rides_on_finish_only_where_the_owner_allows_analytics(
    tmp_path: Path, data_csv: Path
) -> None:
    """Planned into the reservation, charged as analytics/drift before it is computed, every
    feature's noised histogram in the layout the contract fixes; a node whose owner does not
    allow analytics plans, charges and releases none."""
    from helpers.node import SYNTHETIC_CONTRACT

    from common.contract import load_contract
    from common.drift_reference import reference_layouts, reference_queries, reference_size

    drift = {"drift_reference_noise": 3.0, "drift_bins": 8}
    analytics = Policy(
        cap_epsilon=10.0, delta=1e-5, allowed_purposes=["training", "evaluation", "analytics"]
    )
    svc = _service(tmp_path / "a", data_csv, policy=analytics)
    done = _run_to_finish(svc, **drift).finished
    contract = load_contract(SYNTHETIC_CONTRACT)
    layouts = reference_layouts(contract, reference_queries(contract, noise_multiplier=3.0, bins=8))
    assert len(done.drift_reference) == reference_size(layouts)
    assert done.drift_reference_noise == pytest.approx(3.0 * len(contract.features) ** 0.5)
    ledger = Ledger(tmp_path / "a" / "state")
    assert _charged_purposes(ledger).count("analytics/drift") == 1
    assert ledger.run_epsilon("101") == pytest.approx(ledger.status().runs[0].planned_epsilon)
    assert CANARY not in str(done)
    # the default policy allows training and evaluation only: no reference, nothing charged
    plain = _service(tmp_path / "b", data_csv)
    other = _run_to_finish(plain, **drift).finished
    assert not other.drift_reference and other.final.hist_pos
    plain_ledger = Ledger(tmp_path / "b" / "state")
    assert "analytics/drift" not in _charged_purposes(plain_ledger)
    assert "evaluation" in _charged_purposes(plain_ledger)
    assert other.budget.epsilon_run < done.budget.epsilon_run


def test_max_grad_norm_zero_is_admitted_as_the_auto_norm(tmp_path: Path, data_csv: Path) -> None:
    svc = _service(tmp_path, data_csv, size_bucket="1000-2000")
    reply = svc.train(
        pb.TrainRequest(caller=caller(), settings=settings(max_grad_norm=0.0), weights=weights())
    )
    assert reply.WhichOneof("outcome") == "trained", reply
    assert reply.trained.steps > 0


def test_adam_state_stays_on_the_node_for_the_run_and_goes_with_it(
    tmp_path: Path, data_csv: Path
) -> None:
    svc = _service(tmp_path, data_csv)
    assert (
        svc.rollcall(
            pb.RollCallRequest(caller=caller(), settings=settings(total_rounds=2))
        ).WhichOneof("outcome")
        == "joined"
    )
    steps = []
    for rnd in (1, 2):
        rs = settings(total_rounds=2, server_round=rnd)
        reply = svc.train(pb.TrainRequest(caller=caller(), settings=rs, weights=weights()))
        assert reply.WhichOneof("outcome") == "trained", reply
        kept = svc.moments.get("101")
        assert kept, "the run's Adam state is kept between its rounds"
        steps.append({float(m["step"]) for m in kept.values()})
    assert steps[1] == {2 * s for s in steps[0]}  # round 2 continued round 1's moments
    # what goes on the wire is the release and its mechanism, never the update rule's state
    assert {f.name for f in pb.Trained.DESCRIPTOR.fields} == {
        "weights", "noise_multiplier", "sample_rate", "steps", "budget", "incoming",
    }  # fmt: skip
    assert svc.finish(pb.FinishRequest(caller=caller())).WhichOneof("outcome") == "finished"
    assert "101" not in svc.moments


def test_the_moment_store_holds_a_bounded_number_of_runs() -> None:
    store = MomentStore(max_runs=2)
    for run in ("a", "b", "c"):
        store.put(run, {0: {"step": torch.tensor(1.0)}})
    assert "a" not in store and "b" in store and "c" in store
    store.drop("b")
    assert store.get("b") is None
