"""The semantic cache's index: the embeddings of requests whose answers are stored, searched
by cosine similarity (numpy: one matrix product over every entry, no loop in Python).

    VectorIndex.add      remember `vector` for the answer stored under `key`, in `group`
                         (the route, its plan, the client's format and the scope: only a
                         request of the same group may be given that answer)
    VectorIndex.nearest  the most similar entry of a group, and its similarity

Bounded by `max_entries`: when full, the oldest entry's row is reused. The answers themselves
stay in the response store; an entry whose answer has left it is simply not a hit.
"""

from __future__ import annotations

from typing import Hashable

import numpy as np


class VectorIndex:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._vectors: np.ndarray | None = None  # rows of unit vectors, allocated at the first add
        self._groups = np.zeros(max_entries, dtype=np.int64)  # each row's group number; 0: empty
        self._keys: list[Hashable | None] = [None] * max_entries
        self._group_numbers: dict[Hashable, int] = {}
        self._next = 0  # the row the next entry takes (the oldest once full)
        self.size = 0

    def add(self, group: Hashable, key: Hashable, vector: list[float]) -> bool:
        """False when the vector cannot be compared with the index's (another dimension, no length)."""
        unit = self._unit(vector)
        if unit is None:
            return False
        if self._vectors is None:
            self._vectors = np.zeros((self.max_entries, unit.shape[0]), dtype=np.float32)
        elif unit.shape[0] != self._vectors.shape[1]:
            return False
        number = self._group_numbers.setdefault(group, len(self._group_numbers) + 1)
        row = self._next
        self._vectors[row] = unit
        self._groups[row] = number
        self._keys[row] = key
        self._next = (row + 1) % self.max_entries
        self.size = min(self.size + 1, self.max_entries)
        return True

    def nearest(self, group: Hashable, vector: list[float]) -> tuple[Hashable, float] | None:
        """The key of the group's entry most similar to `vector`, and the cosine similarity."""
        number = self._group_numbers.get(group)
        unit = self._unit(vector)
        if number is None or unit is None or self._vectors is None or unit.shape[0] != self._vectors.shape[1]:
            return None
        similarities = self._vectors @ unit
        similarities[self._groups != number] = -2.0  # below any cosine
        row = int(np.argmax(similarities))
        best = float(similarities[row])
        if best < -1.0:
            return None
        return self._keys[row], best

    def retain(self, keep) -> None:
        """Forget the entries whose key `keep` refuses (their route's plan changed)."""
        for row, key in enumerate(self._keys):
            if key is not None and not keep(key):
                self._keys[row] = None
                self._groups[row] = 0

    @staticmethod
    def _unit(vector: list[float]) -> np.ndarray | None:
        try:
            array = np.asarray(vector, dtype=np.float32)
        except (TypeError, ValueError):
            return None
        if array.ndim != 1 or array.shape[0] == 0 or not np.all(np.isfinite(array)):
            return None
        norm = float(np.linalg.norm(array))
        return array / norm if norm > 0 else None
