"""Shared benchmark plumbing: machine/version/commit metadata, result files, small statistics.

Every result file carries `meta` from `run_metadata`: machine (cores, memory, CPU), versions
(python, torch, flwr, opacus, ...), git commit (and whether the tree was dirty), seeds, the exact
command and the load average when the benchmark started (other people share this machine).
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
WORK = REPO / "runs" / "bench"  # git-ignored scratch space (federation work dirs, logs)
CONTRACTS = REPO / "contracts"
TELCO = DATA_DIR / "Telco-Customer-Churn.csv"
BANK = DATA_DIR / "bank-full.csv"

_PACKAGES = (
    "torch",
    "flwr",
    "opacus",
    "numpy",
    "pandas",
    "scikit-learn",
    "fastapi",
    "uvicorn",
    "httpx",
    "ray",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the benchmarks depend on (None if absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """Cores (logical and usable by this process), memory, CPU model, OS."""
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gib": _meminfo_gib(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def git_commit() -> dict[str, Any]:
    """HEAD commit and whether tracked files differ from it (others edit this tree concurrently)."""

    def git(*args: str) -> str:
        res = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=30
        )
        return res.stdout

    status = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return {
        "commit": git("rev-parse", "HEAD").strip() or None,
        "dirty": bool(status),
        # which tracked files differed from the commit when the benchmark started
        "changed_files": [line[3:] for line in status if line.strip()],
    }


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root."""
    module = sys.modules["__main__"].__spec__
    exe = (
        os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else "python"
    )
    head = [exe, "-m", module.name] if module is not None else [exe, sys.argv[0]]
    return shlex.join([*head, *sys.argv[1:]])


def wait_for_quiet(max_load: float = 1.5, timeout: float = 90.0) -> list[float]:
    """Wait (bounded) until the 1-minute load average is below `max_load`; return the load."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)
    return load_average()


def run_metadata(seeds: Sequence[int] = (), **extra: Any) -> dict[str, Any]:
    """Everything a result file must say about how and where it was produced."""
    return {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "machine": machine_info(),
        "versions": package_versions(),
        "git": git_commit(),
        "seeds": list(seeds),
        "load_average_at_start": load_average(),
        **extra,
    }


def finish_metadata(meta: dict[str, Any], t0: float) -> None:
    """Add the wall time and the load average at the end."""
    meta["wall_seconds"] = round(time.monotonic() - t0, 1)
    meta["load_average_at_end"] = load_average()


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _finite(value: Any) -> Any:
    """NaN/inf → None so the JSON is standard (and readable by any tool)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write bench/results/NAME.json and NAME.md; return both paths."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path, md_path = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    json_path.write_text(json.dumps(_finite(payload), indent=2, default=_json_default) + "\n")
    md_path.write_text(markdown.rstrip() + "\n")
    return json_path, md_path


def meta_markdown(meta: dict[str, Any]) -> str:
    """A short 'how this was produced' block for the Markdown summaries."""
    m, v, g = meta["machine"], meta["versions"], meta["git"]
    versions = ", ".join(f"{k} {v[k]}" for k in ("python", "torch", "flwr", "opacus") if v.get(k))
    dirty = " (tree had uncommitted changes)" if g.get("dirty") else ""
    lines = [
        f"- command: `{meta['command']}`",
        f"- machine: {m['usable_cores']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM",
        f"- versions: {versions}",
        f"- commit: `{(g.get('commit') or 'unknown')[:12]}`{dirty}",
        f"- started: {meta['started_at']}; load average at start "
        f"{meta['load_average_at_start']}, at end {meta.get('load_average_at_end')}",
    ]
    if meta.get("seeds"):
        lines.append(f"- seeds: {meta['seeds']}")
    if "wall_seconds" in meta:
        lines.append(f"- wall time: {meta['wall_seconds']} s")
    return "\n".join(lines)


def mean_std(values: Iterable[float]) -> dict[str, float | int]:
    """Mean and sample standard deviation of the finite values (std 0 for a single value)."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def fmt_ms(stat: dict[str, float | int], digits: int = 3) -> str:
    """'0.842 ± 0.004' (or '—' if undefined)."""
    mean, std = stat["mean"], stat["std"]
    if not math.isfinite(mean):
        return "—"
    if stat.get("n", 0) <= 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else math.nan


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def bench_env() -> dict[str, str]:
    """Environment for child processes: Flower quiet, unbuffered, our venv first on PATH."""
    env = dict(os.environ)
    env.update(
        {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1"}
    )
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env
