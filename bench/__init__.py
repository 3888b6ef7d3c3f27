"""Atoll benchmarks: quality, DP cost, round overhead, scale in simulation, serving.

Each module runs with one command (`.venv/bin/python -m bench.NAME`, see bench/README.md) and
writes JSON + Markdown (+ PNG) into bench/results/. Not part of the test suite.
"""
