"""Shared test factories (imported as `helpers.*`; test modules never import each other)."""
