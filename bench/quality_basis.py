"""Does a fixed, public piecewise-linear basis per numeric feature make a linear model expressive?

    # centralized (non-private) fits, the product's federated DP run at ε = 1 and 1000, and
    # logreg vs additive under untuned contracts, 3 seeds (~10 min on 2 cores)
    .venv/bin/python -m bench.quality_basis --seeds 0 1 2 --federated --epsilons 1 1000 \
        --additive ramp:3 ramp:4 ramp:6 ramp:8 hat:6 hinge:6 --alternatives --robustness

Every numeric feature's encoded column is expanded into a piecewise-linear basis whose knots are
spaced uniformly over the feature's *encoded bounds* from the contract (never from data), and a
linear model is fitted on the result (a GAM-like additive model). The expansion is the model's
own fixed first stage (`common.model.PiecewiseLinearBasis`), in three spellings of the same span
(continuous functions linear between K + 2 uniform knots, K interior): `hat` (linear B-splines),
`ramp` (one clamped ramp per segment) and `hinge` (x plus K hinges).

Centralized, non-private fits on the pooled training rows, scored on the same global test rows as
`bench.quality` (`bench.datasets.load_silos`: the node's own pipeline and split): scikit-learn
LogisticRegression (as `bench.quality`'s reference) on the plain encoding and on each basis;
HistGradientBoosting with and without interactions (`interaction_cst="no_interactions"`: the best
additive model of the numeric *and* categorical features boosting finds, i.e. roughly the ceiling
of any additive model) and a small MLP (one hidden layer of 32, as `build_model("mlp")`) as
references; and our own torch models trained non-privately with the run's update rule for the
run's steps (`bench.plain`, as `bench.quality`'s `central-torch`) and for 10× the steps.

`--federated` adds the product's federated DP run in process (`bench.quality_run.product_run`, the
code behind `bench.quality`'s DP rows: the nodes' `train_dp`, the run's strategy, the final noised
evaluation and Platt calibration) for `--models` and every `--additive` BASIS:K layout at each
`--epsilons` ε per node, with the run defaults (`common.run_config.RunConfig`) unless `--set
KEY=VALUE` changes them. `--alternatives` adds the additive model with one run setting changed
(learning rate, rounds, sampling rate, clipping, server momentum). `--robustness` adds logreg vs
the additive model under contracts nobody tuned (drafted, data min/max) and on synthetic skewed
data (`bench.quality_sweep.load`). Writes bench/results/NAME.{json,md} (`--name`, default
quality_basis).
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier

from bench.common import (
    finish_metadata,
    fmt_ms,
    md_table,
    mean_std,
    meta_markdown,
    run_metadata,
    write_results,
)
from bench.datasets import DATASETS, SiloData, load_silos
from bench.plain import predict_proba, train_plain
from bench.quality_run import Setting, product_run
from common.encoding import Encoder
from common.metrics import binary_metrics
from common.model import (
    ADDITIVE,
    ADDITIVE_BASIS,
    ADDITIVE_KNOTS,
    BASIS_KINDS,
    BasisKind,
    BasisLayout,
    PiecewiseLinearBasis,
    basis_layout,
    build_model,
)

KNOTS = (4, 6, 8)
KEYS = ("roc_auc", "log_loss", "pr_auc", "brier")
log = logging.getLogger("quality_basis")


def layout(data: SiloData, spec: str = "") -> BasisLayout:
    """The contract's basis; `spec` "BASIS:K" (e.g. "ramp:6"), empty: common.model's default."""
    basis, _, k = spec.partition(":")
    kind: BasisKind = ADDITIVE_BASIS
    for b in BASIS_KINDS:  # typed: a BasisKind, not any string
        if b == basis:
            kind = b  # type: ignore[assignment]
    if basis and basis not in BASIS_KINDS:
        raise ValueError(f"basis '{basis}' is not one of {', '.join(BASIS_KINDS)}")
    return basis_layout(Encoder(data.contract), int(k) if k else ADDITIVE_KNOTS, kind)


@torch.no_grad()
def expand(x: np.ndarray, lay: BasisLayout) -> np.ndarray:
    """x through the additive model's fixed first stage."""
    return PiecewiseLinearBasis(lay)(torch.from_numpy(x.astype(np.float32))).numpy()


def spec_name(lay: BasisLayout) -> str:
    return f"{lay.basis} K={lay.knots}"


# ---- fits --------------------------------------------------------------------------------------


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    m = binary_metrics(y, p)
    return {k: m[k] for k in KEYS}


def centralized(data: SiloData, knots: tuple[int, ...], seeds: list[int]) -> list[dict[str, Any]]:
    """sklearn LR on the plain encoding and every basis; HGB (with and without interactions)
    and sklearn MLP on the plain encoding."""
    x, y = data.pooled_train()
    xt, yt = data.global_test()
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    lr = LogisticRegression(max_iter=5000).fit(x, y)
    rows.append(_row("sklearn-logreg", "plain", 0, t0, scores(yt, lr.predict_proba(xt)[:, 1])))
    for basis in BASIS_KINDS:
        for k in knots:
            lay = layout(data, f"{basis}:{k}")
            t0 = time.monotonic()
            lr = LogisticRegression(max_iter=5000).fit(expand(x, lay), y)
            p = lr.predict_proba(expand(xt, lay))[:, 1]
            rows.append(_row("sklearn-logreg", spec_name(lay), 0, t0, scores(yt, p)))
            log.info("%s logreg %s AUC %.4f", data.spec.name, spec_name(lay), rows[-1]["roc_auc"])
    for seed in seeds:
        for variant, cst in (("plain", None), ("plain, no interactions", "no_interactions")):
            t0 = time.monotonic()
            hgb = HistGradientBoostingClassifier(random_state=seed, interaction_cst=cst).fit(x, y)
            p = hgb.predict_proba(xt)[:, 1]
            rows.append(_row("sklearn-hgb", variant, seed, t0, scores(yt, p)))
        t0 = time.monotonic()
        mlp = MLPClassifier((32,), alpha=1e-3, max_iter=300, early_stopping=True, random_state=seed)
        mlp.fit(x, y)
        rows.append(_row("sklearn-mlp", "plain", seed, t0, scores(yt, mlp.predict_proba(xt)[:, 1])))
    return rows


def torch_central(
    data: SiloData, kinds: list[str], s: Setting, seeds: list[int]
) -> list[dict[str, Any]]:
    """Our models (`build_model`) trained non-privately on the pooled rows with the run's update
    rule and batch size: the run's rounds × steps (as bench.quality's central-torch), and 10×."""
    from bench.quality import plain_config

    x, y = data.pooled_train()
    xt, yt = data.global_test()
    rows = []
    for kind in kinds:
        for factor in (1, 10):
            for seed in seeds:
                t0 = time.monotonic()
                torch.manual_seed(seed)
                model = build_model(kind, data.n_features, layout=layout(data))
                cfg = replace(plain_config(s), epochs=s.rounds * s.epochs * factor)
                train_plain(model, x, y, cfg, seed * 1000 + 1)
                p = predict_proba(model, xt)
                rows.append(_row(f"torch-{kind}", f"{factor}x run steps", seed, t0, scores(yt, p)))
    return rows


def federated(
    data: SiloData,
    models: list[tuple[str, str]],
    s: Setting,
    epsilons: list[float],
    seeds: list[int],
) -> list[dict[str, Any]]:
    """The product's federated DP run in process (bench.quality_run.product_run) for each
    (model kind, basis spec) at each ε."""
    xt, yt = data.global_test()
    rows = []
    for kind, spec in models:
        lay = layout(data, spec)
        name = f"federated-dp-{kind}" + (f" ({spec_name(lay)})" if kind == ADDITIVE else "")
        for eps in epsilons:
            for seed in seeds:
                t0 = time.monotonic()
                run = product_run(
                    data.silos, xt, yt, replace(s, model=kind, epsilon=eps), seed, lay
                )
                row = _row(name, f"ε={eps:g}", seed, t0, run["published"])
                rep = run["reported"].get("roc_auc", {})
                row.update(
                    raw_roc_auc=run["raw"]["roc_auc"],
                    raw_log_loss=run["raw"]["log_loss"],
                    sigma=run["sigma"],
                    epsilon_spent=run["epsilon"],
                    reported_roc_auc=rep.get("estimate"),
                    reported_roc_auc_covered=rep.get("covered"),
                )
                rows.append(row)
                log.info(
                    "%s %s ε=%g seed=%s AUC %.4f LL %.4f (%.1f s)",
                    data.spec.name, name, eps, seed, row["roc_auc"], row["log_loss"],
                    row["seconds"],
                )  # fmt: skip
    return rows


def _row(method: str, variant: str, seed: int, t0: float, m: dict[str, float]) -> dict[str, Any]:
    return {
        "method": method,
        "variant": variant,
        "seed": seed,
        "seconds": round(time.monotonic() - t0, 2),
        **{k: m[k] for k in KEYS},
    }


# one change each to the run defaults, for the additive model: the evidence for keeping them
ALTERNATIVES: dict[str, dict[str, Any]] = {
    "lr 0.02": {"learning_rate": 0.02},
    "lr 0.1": {"learning_rate": 0.1},
    "5 rounds": {"rounds": 5},
    "20 rounds": {"rounds": 20},
    "q 0.05 (20 steps/round)": {"sample_rate": 0.05},
    "q 0.2 (5 steps/round)": {"sample_rate": 0.2},
    "clip 0.3": {"max_grad_norm": 0.3},
    "clip 3": {"max_grad_norm": 3.0},
    "fedavgm 1.0, momentum 0.5": {
        "strategy": "fedavgm", "server_learning_rate": 1.0, "server_momentum": 0.5,
    },
}  # fmt: skip


def alternatives(
    data: SiloData, s: Setting, epsilon: float, seeds: list[int]
) -> list[dict[str, Any]]:
    """The additive model (common.model's default basis) with one run setting changed."""
    rows = []
    for label, change in ALTERNATIVES.items():
        for row in federated(data, [(ADDITIVE, "")], replace(s, **change), [epsilon], seeds):
            row["variant"] += f", {label}"
            rows.append(row)
    return rows


def robustness(
    names: list[str], variants: list[str], s: Setting, epsilon: float, seeds: list[int]
) -> list[dict[str, Any]]:
    """logreg vs the additive model (common.model's default basis) on contracts nobody tuned:
    `bench.quality_sweep.load` — the reference contract (""), one drafted from the file
    (`draft`: log1p + centre/scale for skewed amounts) and the reference with every numeric range
    set to the data's own min/max (`naive`); `corner` is synthetic skewed data under a min/max
    contract. The product's federated DP run (`bench.quality_sweep.one_run`)."""
    from bench.quality_sweep import load, one_run

    rows = []
    for name in names:
        for variant in variants if name != "corner" else ["", "draft"]:
            data = load(name, variant)
            for kind in ("logreg", ADDITIVE):
                for seed in seeds:
                    run = one_run(data, replace(s, model=kind, epsilon=epsilon), seed)
                    rows.append(
                        {
                            "dataset": data.name,
                            "method": f"federated-dp-{kind}",
                            "variant": f"ε={epsilon:g}",
                            "seed": seed,
                            "roc_auc": run["true_auc"],
                            "log_loss": run["true_log_loss"],
                            "base_log_loss": run["base_log_loss"],
                            "reported_roc_auc": run["rep_roc_auc"],
                            "reported_roc_auc_covered": run["covered_roc_auc"],
                        }
                    )
    return rows


def robustness_table(rows: list[dict[str, Any]]) -> str:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    table = []
    for (ds, method), rs in groups.items():
        auc, ll = mean_std(r["roc_auc"] for r in rs), mean_std(r["log_loss"] for r in rs)
        err = max(abs(r["reported_roc_auc"] - r["roc_auc"]) for r in rs)
        covered = sum(bool(r["reported_roc_auc_covered"]) for r in rs)
        table.append(
            [ds, method, len(rs), fmt_ms(auc), fmt_ms(ll), f"{rs[0]['base_log_loss']:.3f}",
             f"{err:.3f}", f"{covered}/{len(rs)}"]
        )  # fmt: skip
    head = ["data set (contract)", "method", "runs", "roc_auc", "log_loss", "base-rate log loss",
            "max abs error of reported AUC", "AUC covered"]  # fmt: skip
    return md_table(head, table)


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["variant"]), []).append(r)
    return [
        {"method": m, "variant": v, **{k: mean_std(r[k] for r in rs) for k in KEYS}}
        for (m, v), rs in groups.items()
    ]


def markdown(results: dict[str, Any]) -> str:
    md = [
        "# Piecewise-linear basis on numeric features (additive model) vs plain encoding",
        "",
        "Knots uniform over each numeric feature's *encoded contract bounds* (never from data); "
        "K interior knots, K + 1 linear pieces; spellings of the same span: `hat` (K + 2 "
        "linear B-splines), `ramp` (K + 1 clamped segment ramps), `hinge` (x plus K hinges) — "
        "`common.model.PiecewiseLinearBasis`, the additive model's fixed first stage. "
        "Centralized fits are non-private, on the pooled training rows; every row is scored on "
        "the global test rows of `bench.quality` (mean ± std over seeds). `sklearn-hgb` *no "
        "interactions*: boosting restricted to additive models (≈ the ceiling of any additive "
        "model). `torch-*`: our `build_model` kinds trained with `bench.plain` (the run's "
        "update rule, learning rate and batch size) for the run's steps and 10×. "
        "`federated-dp-*`: the product's federated DP run in process "
        "(`bench.quality_run.product_run`, the code behind `bench.quality`'s DP rows), ε per "
        "node for the whole run (training and every evaluation), the published "
        "(Platt-calibrated) model's true metrics.",
        "",
        f"Run settings of the torch and federated rows (besides the model): {results['setting']}.",
        "",
        meta_markdown(results["meta"]),
        "",
    ]
    for name, ds in results["datasets"].items():
        md += [f"## {name}", ""]
        rows = [
            [e["method"], e["variant"], e["roc_auc"]["n"], fmt_ms(e["roc_auc"]),
             fmt_ms(e["log_loss"]), fmt_ms(e["pr_auc"]), fmt_ms(e["brier"])]
            for e in ds["summary"]
        ]  # fmt: skip
        head = ["method", "variant", "runs", "roc_auc", "log_loss", "pr_auc", "brier"]
        md += [md_table(head, rows), ""]
    if results.get("robustness"):
        md += [
            "## Contracts nobody tuned",
            "",
            "The product's federated DP run (ε per node as above, run defaults) of logreg and "
            "the additive model on each data set under its reference contract, a contract "
            "drafted from the file (`-draft`: `common.contract_draft`, log1p + centre/scale for "
            "skewed amounts) and the reference contract with every numeric range set to the "
            "data's own min/max (`-naive`); `corner`: `bench.quality_sweep`'s synthetic "
            "right-skewed amounts under a min/max contract (most rows in the bottom 5 % of each "
            "range). Reported AUC: what the model card says, from the final noised histograms.",
            "",
            robustness_table(results["robustness"]),
            "",
        ]
    return "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--knots", nargs="+", type=int, default=list(KNOTS))
    p.add_argument("--no-central", action="store_true", help="skip the centralized fits")
    p.add_argument("--torch-models", nargs="*", default=["logreg", ADDITIVE, "mlp"])
    p.add_argument("--federated", action="store_true", help="also the federated DP product run")
    p.add_argument("--models", nargs="*", default=["logreg", "mlp"], help="non-additive kinds")
    p.add_argument(
        "--additive",
        nargs="*",
        default=[f"{ADDITIVE_BASIS}:{ADDITIVE_KNOTS}"],
        help="additive layouts BASIS:K of the federated runs (e.g. ramp:6 hat:6 hinge:6)",
    )
    p.add_argument("--epsilons", nargs="+", type=float, default=[1.0])
    p.add_argument(
        "--alternatives",
        action="store_true",
        help="also the additive model with one run setting changed (at the first --epsilons)",
    )
    p.add_argument(
        "--robustness",
        nargs="*",
        default=None,
        help="also logreg vs additive under untuned contracts: contract variants of every data "
        "set ('' draft naive) and the synthetic 'corner' set, at the first --epsilons level",
    )
    p.add_argument("--set", nargs="*", default=[], help="override Setting KEY=VALUE")
    p.add_argument("--name", default="quality_basis")
    args = p.parse_args()
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("opacus", "flwr"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="opacus")
    s = replace(Setting(), **Setting().overrides(args.set))
    models = [(m, "") for m in args.models] + [(ADDITIVE, a) for a in args.additive]
    t_start = time.monotonic()
    meta = run_metadata(seeds=args.seeds)
    results: dict[str, Any] = {
        "meta": meta,
        "setting": s.describe().split("`, ", 1)[-1],
        "config": {**asdict(s), "epsilons": args.epsilons, "knots": args.knots},
        "datasets": {},
    }
    for name in args.datasets:
        data = load_silos(name)
        rows: list[dict[str, Any]] = []
        if not args.no_central:
            rows += centralized(data, tuple(args.knots), args.seeds)
            rows += torch_central(data, args.torch_models, s, args.seeds)
        if args.federated:
            rows += federated(data, models, s, args.epsilons, args.seeds)
        if args.alternatives:
            rows += alternatives(data, s, args.epsilons[0], args.seeds)
        results["datasets"][name] = {"summary": summarize(rows), "runs": rows}
    if args.robustness is not None:
        names = [*args.datasets, "corner"]
        results["robustness"] = robustness(
            names, args.robustness or ["", "draft", "naive"], s, args.epsilons[0], args.seeds
        )
    finish_metadata(meta, t_start)
    write_results(args.name, results, markdown(results))


if __name__ == "__main__":
    main()
