"""Atoll operator tooling: the `atoll` CLI, PKI and local deployment orchestration."""
