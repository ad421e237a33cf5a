"""The observation layout the policies read: channels of the (6, N, N) uint8 maze observation, and the
actions' order (the same values as `maze_env`, which the service's environment uses; a test keeps them
equal)."""

from __future__ import annotations

import numpy as np

ACTIONS: tuple[str, ...] = ("up", "right", "down", "left")
# (row, column) change of each action, in ACTIONS order.
ACTION_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
# Channels 0–3: an open passage in direction ACTIONS[c]; 4: the agent's cell; 5: the goal's cell.
N_OBS_CHANNELS: int = 6
AGENT_CHANNEL: int = 4
GOAL_CHANNEL: int = 5


def neighbour_cells(size: int) -> np.ndarray:
    """Flat index of each cell's neighbour in each direction (``ACTION_DELTAS`` order), the cell itself
    where the move would leave the board: shape ``(4, size * size)``, int64.

    :param size: cells per side.
    """
    cells = np.arange(size * size, dtype=np.int64).reshape(size, size)
    padded = np.pad(cells, 1, constant_values=-1)
    neighbours = np.stack(
        [padded[1 + dr : 1 + dr + size, 1 + dc : 1 + dc + size] for dr, dc in ACTION_DELTAS]
    )
    return np.where(neighbours < 0, cells, neighbours).reshape(4, size * size)
