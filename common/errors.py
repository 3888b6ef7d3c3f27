"""The base of every expected error: bad input, a refused request, an unreachable party.

An `AtollError`'s message says what was wrong, where, and what to do, and never holds a feature
value. Domain errors derive from it (beside the builtin they always were, e.g. `ValueError`), so
a command line prints such an error as its message and a non-zero exit — never a traceback
(`atoll --debug …` shows one) — while a bug still surfaces as one.
"""

from __future__ import annotations


class AtollError(Exception):
    """An expected error whose message is for the person who can fix its cause."""
