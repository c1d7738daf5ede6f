"""The key that names a sample's prefix: the join between stage 1 and the RecBole dataset."""
from __future__ import annotations

import hashlib
from typing import Sequence


def prefix_key(tokens: Sequence[str]) -> str:
    """16 hex chars of sha1 over the prefix's item tokens; identical prefixes share a key."""
    return hashlib.sha1(" ".join(map(str, tokens)).encode("utf-8")).hexdigest()[:16]
