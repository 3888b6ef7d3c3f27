"""Differential privacy: noise calibration and accounting (ledger and audit chain come later)."""
