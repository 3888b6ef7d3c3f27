"""Records → tensors, determined by the contract alone.

Numeric features are clipped to the agreed range (counted), optionally transformed (`log1p`) and
scaled: standardised with the contract's `center`/`scale` (transformed space) when it gives them,
else mapped to [0, 1] over the transformed bounds. Categorical features are one-hot over the agreed
vocabulary plus an "other" bucket; binary features map to 0/1. Nothing is estimated from a node's
data, so every node and the scoring API produce identical encodings. Every problem is *counted* per
feature and reason; no value is ever put into a message.
"""

from __future__ import annotations

from common.encoding.base import (
    OTHER,
    REJECT_MISSING,
    REJECT_NOT_A_NUMBER,
    REJECT_NOT_BINARY,
    REJECT_NOT_FINITE,
    REJECT_UNKNOWN_CATEGORY,
    Encoded,
    EncodingStats,
    is_missing,
    numeric_neutral,
    scale_numeric,
)
from common.encoding.encoder import (
    Encoder,
)
from common.encoding.rows import (
    SMALL_BATCH,
    cell_number,
    cell_text,
)

__all__ = [
    "Encoded",
    "Encoder",
    "EncodingStats",
    "OTHER",
    "REJECT_MISSING",
    "REJECT_NOT_A_NUMBER",
    "REJECT_NOT_BINARY",
    "REJECT_NOT_FINITE",
    "REJECT_UNKNOWN_CATEGORY",
    "SMALL_BATCH",
    "cell_number",
    "cell_text",
    "is_missing",
    "numeric_neutral",
    "scale_numeric",
]
