"""The observation layout the policies read: channels of the (6, N, N) uint8 maze observation, and the
actions' order (the same values as `maze_env`, which the service's environment uses; a test keeps them
equal)."""

from __future__ import annotations

ACTIONS: tuple[str, ...] = ("up", "right", "down", "left")
# (row, column) change of each action, in ACTIONS order.
ACTION_DELTAS: tuple[tuple[int, int], ...] = ((-1, 0), (0, 1), (1, 0), (0, -1))
# Channels 0–3: an open passage in direction ACTIONS[c]; 4: the agent's cell; 5: the goal's cell.
N_OBS_CHANNELS: int = 6
AGENT_CHANNEL: int = 4
GOAL_CHANNEL: int = 5
