"""Value-iteration sweeps over flat maze maps: one sweep, K of them, K stopping at the fixed point, and
K as one TorchScript loop for the ONNX export; and the number K for a maze size.

The maps are flat ``(B, N*N)``; ``move_index`` ``(B, 4*N*N)`` says per sample which cell each move of
each cell reads (the neighbour through an open passage, else the cell itself: see
``rl_maze.planner.MazePlannerExtractor``).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable

import torch

# Every 4 sweeps, not 8: a plan of 16 10x10 mazes took 3.7 ms instead of 5.2 (the check costs less than the
# sweeps it saves after convergence; 2 was no faster). Stopping at convergence never changes the values.
_CONVERGENCE_CHECK_EVERY: int = 4


def sweep(
    values: torch.Tensor, reward: torch.Tensor, move_index: torch.Tensor, step_cost: torch.Tensor, cells: int
) -> torch.Tensor:
    """One value-iteration sweep over flat ``(B, N*N)`` maps: one gather of the four moves' values, their
    max, the step cost, the reward floor (``move_index``: see ``MazePlannerExtractor._move_index``).

    A constant target shape: `unflatten(1, (4, -1))` traced into shape arithmetic (Shape, Slice, Concat)
    in every sweep of the ONNX graph, which made export and inference 2-3x slower.
    """
    moves = torch.gather(values, 1, move_index).reshape(-1, 4, cells)
    return torch.maximum(reward, moves.amax(dim=1) - step_cost)


def run_sweeps(
    values: torch.Tensor,
    reward: torch.Tensor,
    move_index: torch.Tensor,
    step_cost: torch.Tensor,
    count: int,
    cells: int,
) -> torch.Tensor:
    """Exactly ``count`` sweeps from ``values`` (a fixed trip count, as an export needs).

    Four sweeps per iteration: scripted for the ONNX export each iteration of a ``Loop`` costs onnxruntime
    ~1-2 us besides its nodes, which with one sweep per iteration made a call ~20% slower than the
    unrolled graph (0.58 against 0.48 ms at maze 10).
    """
    for _ in range(count // 4):
        values = sweep(values, reward, move_index, step_cost, cells)
        values = sweep(values, reward, move_index, step_cost, cells)
        values = sweep(values, reward, move_index, step_cost, cells)
        values = sweep(values, reward, move_index, step_cost, cells)
    for _ in range(count % 4):
        values = sweep(values, reward, move_index, step_cost, cells)
    return values


_SCRIPT_LOCK = threading.Lock()


@functools.cache
def scripted_sweeps() -> Callable[..., torch.Tensor]:
    """``run_sweeps`` compiled by TorchScript (once, on the first export): traced for ONNX it becomes a
    ``Loop`` of exactly ``count // 4`` iterations (and one of ``count % 4``), where the Python loop was
    recorded as ``count`` unrolled copies. At 30x30 (K = 271) the graph went from 1,701 nodes to ~90 and
    export + verification from 7-13 s to 0.7 s (tracing 1.7 s -> 0.14 s, creating an onnxruntime session
    1.2 s -> 0.02 s); an onnxruntime call costs about the same (bench/RESULTS.md "ONNX").
    """
    with _SCRIPT_LOCK:
        return torch.jit.script(run_sweeps)


def planning_sweeps(maze_size: int) -> int:
    """Number of value-iteration sweeps ``K`` for a maze size.

    Value reaches a cell after as many sweeps as its distance to the goal. Over Kruskal mazes the largest
    goal distance grows like ``N**1.5`` (measured maxima: 48 cells at N=10, 77 at 15, 99 at 20, 164 at 30);
    ``K = 1.6 * N**1.5 + 8`` leaves a margin, and never exceeds ``N*N`` (the exact worst case).

    :param maze_size: cells per side.
    """
    return min(maze_size * maze_size, math.ceil(1.6 * maze_size**1.5) + 8)


def settle(
    reward: torch.Tensor, move_index: torch.Tensor, step_cost: torch.Tensor, count: int, cells: int
) -> torch.Tensor:
    """Up to ``count`` sweeps from ``reward``, stopping early once the values reach their fixed point.

    Stopping early gives bit-identical values (further sweeps change nothing); the export path runs
    all sweeps instead, since ONNX needs a fixed trip count.
    """
    values = reward
    snapshot = reward
    for done in range(1, count + 1):
        values = sweep(values, reward, move_index, step_cost, cells)
        if done % _CONVERGENCE_CHECK_EVERY == 0:
            if torch.equal(values, snapshot):
                break
            snapshot = values
    return values


def differentiable_values(
    reward: torch.Tensor, move_index: torch.Tensor, step_cost: torch.Tensor, count: int, cells: int
) -> torch.Tensor:
    """``count`` sweeps' values from ``reward`` with their exact gradient, without differentiating sweeps.

    The forward values are ``settle``'s (equal to ``run_sweeps``'). Once they have converged, each cell's
    value is ``r(source) - c * moves`` (``value_sources``), and that expression carries the gradient: to
    every cell's reward however far its source, and to the step cost. Backpropagating through the sweeps
    themselves gave the same gradient at several times the cost, so only the last few sweeps used to be
    differentiated, and the reward of a source farther away than that got none. The maps whose values have
    not converged within ``count`` sweeps (too few sweeps for the maze) are differentiated through all
    their sweeps.
    """
    with torch.no_grad():
        values = settle(reward.detach(), move_index, step_cost.detach(), count, cells)
        again = sweep(values, reward.detach(), move_index, step_cost.detach(), cells)
        unsettled = (again != values).any(dim=1).nonzero().squeeze(1)
        source, moves = value_sources(values, reward.detach(), move_index, cells)
    planned = reward.gather(1, source) - step_cost * moves
    exact = values + (planned - planned.detach())
    if len(unsettled) == 0:
        return exact
    # Only the maps that have not converged are differentiated through their sweeps.
    unrolled = run_sweeps(
        reward[unsettled], reward[unsettled], move_index[unsettled], step_cost, count, cells
    )
    return exact.index_put((unsettled,), unrolled)


def value_sources(
    values: torch.Tensor, reward: torch.Tensor, move_index: torch.Tensor, cells: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cell of a settled value map, the cell its value comes from and the moves to it.

    At the fixed point ``v(s) = max(r(s), max_n v(n) - c)`` every cell either is its own source
    (``v(s) == r(s)``) or takes its value from its best neighbour, whose value is higher by ``c``; following
    best neighbours therefore climbs strictly and ends at a source. Pointer jumping follows the chains in
    ``ceil(log2(N*N))`` rounds of gathers. So ``v(s) = r(source(s)) - c * moves(s)``: differentiable in
    every cell's reward and in ``c`` however far the source is (the envelope theorem of the max).

    :param values: settled values ``(B, N*N)`` (no gradient needed).
    :param reward: the reward map they were planned from ``(B, N*N)``.
    :param move_index: as for ``sweep``.
    :return: ``source`` (int64) and ``moves`` (float) per cell, both ``(B, N*N)``.
    """
    moves_values = torch.gather(values, 1, move_index).reshape(-1, 4, cells)
    best = moves_values.argmax(dim=1, keepdim=True)
    neighbour = move_index.reshape(-1, 4, cells).gather(1, best).squeeze(1)
    itself = torch.arange(cells, device=values.device).expand_as(neighbour)
    own = reward >= values
    parent = torch.where(own, itself, neighbour)
    moves = (~own).to(values.dtype)
    for _ in range(max(1, math.ceil(math.log2(cells)))):
        moves = moves + moves.gather(1, parent)
        parent = parent.gather(1, parent)
    return parent, moves
