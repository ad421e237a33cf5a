"""A memo of a frozen planner's features by observation: what was planned once is not planned again.

With the ``planner`` policy the planner's weights never change (only the heads learn), so its features
are a fixed function of the observation. Yet SB3 asks for them again and again: PPO plans every rollout
observation once while collecting and once more in each of its ``n_epochs`` passes; DQN plans each
replayed batch twice per gradient step (online and target network), drawn from observations it planned
when it acted. Value iteration is most of a step's time (issue 19: ~70-80% of ``learn()``), so looking the
features up instead is the single largest saving on CPU. An agent-blind planner (the ``planner`` policy
since issue 19's value memo) keeps its value map per maze here instead, keyed by the observation with the
agent channel zeroed: every position in a maze after the first is a read-out, not a plan.

Exact by construction: an entry is keyed by the observation's bits and only answered for the very weights
it was computed with (the two most recently used weight sets are kept: DQN's online and target network),
and observations that are not float32 0/1 grids bypass it. Bounded: a ring of ``capacity`` rows per weight
set; the oldest are forgotten first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

DEFAULT_CAPACITY: int = 1 << 16
# Weight sets kept at once: DQN's online and target planners share one memo, and a soft target update
# (``tau`` < 1) leaves the target's frozen weights a few bits off the online ones.
WEIGHT_SETS: int = 2


class _Rows:
    """Feature rows by observation key for one set of weights: a ring of ``capacity`` rows."""

    def __init__(self, width: int, capacity: int) -> None:
        self.capacity = capacity
        self.rows = np.zeros((capacity, width), dtype=np.float32)
        self.slot_of: dict[bytes, int] = {}
        self.key_in: list[bytes | None] = [None] * capacity
        self.next = 0

    def remember(self, keys: list[bytes], rows: np.ndarray) -> None:
        for key, row in zip(keys, rows, strict=True):
            slot = self.slot_of.get(key)
            if slot is None:
                slot = self.next
                self.next = (self.next + 1) % self.capacity
                old = self.key_in[slot]
                if old is not None and self.slot_of.get(old) == slot:
                    del self.slot_of[old]
                self.key_in[slot] = key
                self.slot_of[key] = slot
            self.rows[slot] = row


class FeatureMemo:
    """Feature rows by observation, per set of planner weights (see module docstring)."""

    def __init__(self, width: int, capacity: int = DEFAULT_CAPACITY) -> None:
        """Make an empty memo.

        :param width: features per observation.
        :param capacity: rows kept per set of weights; the oldest are replaced first.
        """
        self.width = width
        self.capacity = capacity
        self._lock = threading.Lock()
        self._sets: OrderedDict[bytes, _Rows] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(rows.slot_of) for rows in self._sets.values())

    def __getstate__(self) -> dict[str, int]:
        # A copy (deepcopy, pickle) starts empty: the rows are a cache, not state.
        return {"width": self.width, "capacity": self.capacity}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["width"], state["capacity"])  # type: ignore[misc]

    def _rows_for(self, weights: bytes) -> _Rows:
        rows = self._sets.get(weights)
        if rows is None:
            if len(self._sets) >= WEIGHT_SETS:
                self._sets.popitem(last=False)  # the least recently used weights
            rows = self._sets[weights] = _Rows(self.width, self.capacity)
        self._sets.move_to_end(weights)
        return rows

    def features(
        self, weights: bytes, observations: torch.Tensor, plan: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Features of ``observations``: memo rows where present, ``plan`` for the rest (then kept).

        :param weights: the planner's weights as bytes: rows are only ever answered for the same bytes.
        :param observations: a float32 CPU batch ``(B, ...)`` of 0/1 observations (others are planned
            directly).
        :param plan: computes float32 features ``(B', width)`` of a sub-batch.
        """
        flat = observations.detach().reshape(len(observations), -1).numpy()
        # (numpy: the same check in torch took ~20x as long on these small CPU batches)
        if len(flat) > self.capacity or not bool(((flat == 0) | (flat == 1)).all()):
            return plan(observations)
        packed = np.packbits(flat > 0.5, axis=1)
        # One bytes object per row: a void scalar per row converts to bytes.
        keys = cast(list[bytes], packed.view(np.dtype((np.void, packed.shape[1]))).ravel().tolist())
        with self._lock:
            memo = self._rows_for(weights)
            slots = np.fromiter((memo.slot_of.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
            answer = memo.rows[slots]  # a copy: rows replaced below do not change it
            missing = np.flatnonzero(slots < 0)
            if len(missing):
                # Each new key planned once, however often the batch repeats it (an agent-blind planner's
                # keys are mazes: a batch holds many positions of one maze). `order`: the key's number.
                first_of: dict[bytes, int] = {}
                order = np.fromiter(
                    (first_of.setdefault(keys[i], len(first_of)) for i in missing),
                    dtype=np.int64,
                    count=len(missing),
                )
                unique = missing[np.unique(order, return_index=True)[1]]
                planned = plan(observations[torch.from_numpy(unique)]).detach().numpy()
                answer[missing] = planned[order]
                memo.remember([keys[i] for i in unique], planned)
            return torch.from_numpy(answer)
