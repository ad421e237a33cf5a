"""Every cell's distance to the goal in a perfect maze from an Euler tour of its tree: O(log N) tensor steps.

The frozen planner's value map (the ``planner`` policy) is ``r_goal - step_cost * distance`` on the
service's mazes, which are perfect (spanning trees of the cell grid, ``mazes.grid``). Value iteration
finds those distances in as many sweeps as the farthest cell is from the goal (K = 271 at 30x30); in an
exported ONNX graph each sweep costs onnxruntime a few nodes, ~6.5 ms a call at 30x30. A tree needs no
sweeps: its Euler tour (each passage walked down and back up once, turning to the next open side at each
cell) is a linked list whose every link is known locally, and list ranking by pointer jumping (Wyllie's
algorithm) finds every link's place in it in ``ceil(log2(2 N^2))`` rounds of gathers, 11 at 30x30.

Two rankings: first each passage's place in the tour, which tells its walk away from the goal (down)
from its walk back (up); then the sum of +1 (down) / -1 (up) from each link to the tour's end, which is
minus the depth of the cell an up-link leaves. Only tensor ops with a fixed trip count, so the tracer
records it for ONNX as a few dozen nodes. Exact on perfect mazes only (a maze with loops has no such
tour): the export uses it only for the frozen planner and verifies the graph against the sweeps.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from rl_maze.observation import neighbour_cells


@functools.cache
def tour_tables(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Static index tables of the tour's links over flat link slots ``e = a * N*N + cell`` (``a``: the
    direction of the passage out of ``cell``, in ``ACTION_DELTAS`` order).

    :param size: cells per side ``N``.
    :return: ``next_candidates`` ``(4, 4*N*N)``: for link ``e`` into cell ``y`` arriving from direction
        ``back`` (the way back), the slots of ``y`` in turning order ``back+1, back+2, back+3, back``;
        ``reverse`` ``(4*N*N,)``: the slot of the same passage walked the other way. Slots off the board
        point at their own cell (they are never open). Cached per size: do not modify them.
    """
    # Built in numpy: tensor writes made while the exporter traces would each become a graph node.
    cells = size * size
    target = neighbour_cells(size)  # (4, cells): where each slot's passage leads
    back = (np.arange(4) + 2) % 4  # per direction, the way back from its target
    reverse = (back[:, None] * cells + target).reshape(-1)
    turns = (back[None, :, None] + 1 + np.arange(4)[:, None, None]) % 4  # (turn, direction, 1)
    next_candidates = (turns * cells + target[None]).reshape(4, 4 * cells)
    return torch.from_numpy(next_candidates), torch.from_numpy(reverse)


def jump_rounds(size: int) -> int:
    """Pointer-jumping rounds that rank a tour of ``2 (N*N - 1)`` links: ``ceil(log2(2 N^2))``."""
    return math.ceil(math.log2(2 * size * size))


def goal_distances(
    passages: torch.Tensor,
    goal: torch.Tensor,
    next_candidates: torch.Tensor,
    reverse: torch.Tensor,
    rounds: int,
) -> torch.Tensor:
    """Each cell's distance (in moves) to the goal of each perfect maze in the batch, as floats.

    :param passages: ``(B, 4, N, N)`` passage bits (1: open), as the observation's first four channels.
    :param goal: ``(B,)`` flat index of each maze's goal cell.
    :param next_candidates: from ``tour_tables``.
    :param reverse: from ``tour_tables``.
    :param rounds: ``jump_rounds(N)``.
    :return: ``(B, N*N)`` distances (0 at the goal).
    """
    batch = passages.shape[0]
    links = reverse.shape[0]
    cells = links // 4
    open_ = passages.reshape(batch, links) > 0.5
    # The next link after each one: the first open slot of its target cell in turning order.
    candidates = next_candidates.unsqueeze(0).expand(batch, 4, links)
    candidate_open = torch.gather(open_.to(torch.int64), 1, candidates.reshape(batch, 4 * links))
    turn = candidate_open.reshape(batch, 4, links).argmax(dim=1, keepdim=True)
    successor = torch.gather(candidates, 1, turn).squeeze(1)
    # The tour starts at the goal's first open slot; the link that would return to it ends the list
    # instead (at the terminal slot ``links``, which points at itself and carries 0).
    goal_slots = goal.unsqueeze(1) + cells * torch.arange(4, dtype=goal.dtype, device=goal.device)
    goal_open = torch.gather(open_.to(torch.int64), 1, goal_slots)
    start = torch.gather(goal_slots, 1, goal_open.argmax(dim=1, keepdim=True))
    terminal = torch.full_like(successor, links)
    successor = torch.where(open_ & (successor != start), successor, terminal)
    successor = torch.cat((successor, terminal[:, :1]), dim=1)
    zero = torch.zeros(batch, 1, dtype=torch.float32, device=passages.device)
    # Ranking 1: links from each one to the tour's end, itself included.
    pointers = []
    count = torch.cat((open_.to(torch.float32), zero), dim=1)
    pointer = successor
    for _ in range(rounds):
        pointers.append(pointer)
        count = count + torch.gather(count, 1, pointer)
        pointer = torch.gather(pointer, 1, pointer)
    # A link is walked down (away from the goal) before its reverse, so more of the tour follows it.
    later = count[:, :links]
    down = later > torch.gather(later, 1, reverse.unsqueeze(0).expand(batch, links))
    step = torch.where(open_, torch.where(down, 1.0, -1.0), 0.0)
    # Ranking 2: the sum of +1 / -1 from each link to the end. The tour sums to 0, so for the up-link
    # out of cell y (toward the goal) it is minus y's depth.
    suffix = torch.cat((step, zero), dim=1)
    for pointer in pointers:
        suffix = suffix + torch.gather(suffix, 1, pointer)
    up = open_ & ~down
    depth = -(suffix[:, :links] * up.to(torch.float32)).reshape(batch, 4, cells).sum(dim=1)
    return depth
