"""Atoll coordinator: Flower ServerApp, model registry and scoring API."""
