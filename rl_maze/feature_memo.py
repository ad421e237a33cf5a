"""A memo of a frozen planner's features by observation: what was planned once is not planned again.

With the ``planner`` policy the planner's weights never change (only the heads learn), so its features
are a fixed function of the observation. Yet SB3 asks for them again and again: PPO plans every rollout
observation once while collecting and once more in each of its ``n_epochs`` passes; DQN plans each
replayed batch twice per gradient step (online and target network), drawn from observations it planned
when it acted. Value iteration is most of a step's time (issue 19: ~70-80% of ``learn()``), so looking the
features up instead is the single largest saving on CPU.

Exact by construction: an entry is keyed by the observation's bits and is only valid for the weights it
was computed with (any change of the weights empties the memo), and observations that are not 0/1 grids
bypass it. Bounded: a ring of ``capacity`` rows; the oldest are forgotten first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import cast

import numpy as np
import torch

DEFAULT_CAPACITY: int = 1 << 16


class FeatureMemo:
    """Feature rows by observation, for one set of planner weights (see module docstring)."""

    def __init__(self, width: int, capacity: int = DEFAULT_CAPACITY) -> None:
        """Make an empty memo.

        :param width: features per observation.
        :param capacity: rows kept; the oldest are replaced first.
        """
        self.width = width
        self.capacity = capacity
        self._lock = threading.Lock()
        self._clear(b"")

    def _clear(self, weights: bytes) -> None:
        self._weights = weights
        self._rows = np.zeros((self.capacity, self.width), dtype=np.float32)
        self._slot_of: dict[bytes, int] = {}
        self._key_in: list[bytes | None] = [None] * self.capacity
        self._next = 0

    def __len__(self) -> int:
        return len(self._slot_of)

    def __getstate__(self) -> dict[str, int]:
        # A copy (deepcopy, pickle) starts empty: the rows are a cache, not state.
        return {"width": self.width, "capacity": self.capacity}

    def __setstate__(self, state: dict[str, int]) -> None:
        self.__init__(state["width"], state["capacity"])  # type: ignore[misc]

    def features(
        self, weights: bytes, observations: torch.Tensor, plan: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Features of ``observations``: memo rows where present, ``plan`` for the rest (then kept).

        :param weights: the planner's weights as bytes; a change empties the memo.
        :param observations: a CPU batch ``(B, ...)`` of 0/1 observations (others are planned directly).
        :param plan: computes features ``(B', width)`` of a sub-batch.
        """
        flat = observations.detach().reshape(len(observations), -1).numpy()
        # (numpy: the same check in torch took ~20x as long on these small CPU batches)
        if len(flat) > self.capacity or not bool(((flat == 0) | (flat == 1)).all()):
            return plan(observations)
        packed = np.packbits(flat > 0.5, axis=1)
        # One bytes object per row: a void scalar per row converts to bytes.
        keys = cast(list[bytes], packed.view(np.dtype((np.void, packed.shape[1]))).ravel().tolist())
        with self._lock:
            if weights != self._weights:
                self._clear(weights)
            slots = np.fromiter((self._slot_of.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
            answer = self._rows[slots]  # a copy: rows replaced below do not change it
            missing = np.flatnonzero(slots < 0)
            if len(missing):
                planned = plan(observations[torch.from_numpy(missing)]).detach().numpy()
                answer[missing] = planned
                self._remember([keys[i] for i in missing], planned)
            return torch.from_numpy(answer)

    def _remember(self, keys: list[bytes], rows: np.ndarray) -> None:
        for key, row in zip(keys, rows, strict=True):
            slot = self._slot_of.get(key)
            if slot is None:
                slot = self._next
                self._next = (self._next + 1) % self.capacity
                old = self._key_in[slot]
                if old is not None and self._slot_of.get(old) == slot:
                    del self._slot_of[old]
                self._key_in[slot] = key
                self._slot_of[key] = slot
            self._rows[slot] = row
