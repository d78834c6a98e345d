"""Exact and near-duplicate detection over the whole prompt pool.

Exact: the normalised text (case, punctuation and whitespace folded). Near: MinHash estimate of the Jaccard
similarity of character 5-gram shingles. Hashes come from blake2b, not Python's salted hash(), so signatures
are the same in every process and a resumed run makes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np

SHINGLE = 5
N_PERM = 128
_PRIME = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(20260324)
_A = _rng.integers(1, (1 << 61) - 1, N_PERM, dtype=np.uint64)
_B = _rng.integers(0, (1 << 61) - 1, N_PERM, dtype=np.uint64)


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def signature(norm: str) -> np.ndarray:
    grams = {norm[i : i + SHINGLE] for i in range(max(1, len(norm) - SHINGLE + 1))}
    h = np.array(
        [int.from_bytes(hashlib.blake2b(g.encode(), digest_size=8).digest(), "little") >> 3 for g in grams],
        dtype=np.uint64,
    )
    # (a*h + b) mod p per permutation; products are taken mod 2^64 first, which keeps the family universal enough
    # for similarity estimation while staying in numpy's unsigned arithmetic.
    return ((np.outer(_A, h) + _B[:, None]) % _PRIME).min(axis=1)


class Pool:
    """The prompts seen so far, answering 'is this new text a duplicate, and of which prompt?'."""

    def __init__(self, near_threshold: float) -> None:
        self.near_threshold = near_threshold
        self.exact: dict[str, int] = {}
        self.ids: list[int] = []
        self._sigs = np.empty((64, N_PERM), dtype=np.uint64)  # grown by doubling: adds stay amortised O(1)

    def add(self, prompt_id: int, norm: str) -> None:
        self.exact.setdefault(norm, prompt_id)
        if len(self.ids) == len(self._sigs):
            self._sigs = np.concatenate([self._sigs, np.empty_like(self._sigs)])
        self._sigs[len(self.ids)] = signature(norm)
        self.ids.append(prompt_id)

    def duplicate_of(self, norm: str) -> int | None:
        if norm in self.exact:
            return self.exact[norm]
        if self.near_threshold >= 1.0 or not self.ids:
            return None
        similarity = (self._sigs[: len(self.ids)] == signature(norm)).mean(axis=1)
        best = int(similarity.argmax())
        return self.ids[best] if similarity[best] >= self.near_threshold else None
