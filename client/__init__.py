"""Atoll node: reads local data, validates it against the contract, trains with DP-SGD."""
