"""Many mazes at once as arrays: the passage bits and goal distances a batched env loads at its resets.

``passages_and_distances(size, seeds)`` equals ``open_directions`` and ``cell_distances_to_goal`` applied
to ``generate_maze(size, seed)`` for each seed, without building the ``Maze`` objects. A few seeds go
through ``grid.spanning_tree_edges`` one by one; many (a batched env whose episodes all time out on the
same step) run every stage of ``generate_maze`` as numpy operations over all of them together: the same
``random.shuffle`` draws, the same Kruskal joins, then a breadth-first walk from the goal.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from mazes.grid import (
    check_maze_size,
    edge_layout,
    generator_words,
    shuffle_draws,
    shuffle_word_count,
    spanning_tree_edges,
)

# From this many mazes on, one numpy operation over all of them beats a Python loop per maze.
BATCH_THRESHOLD: int = 32


@functools.cache
def _passage_bit_indices(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per edge, the two flat indices into ``open_directions``' ``(4, N, N)`` bits that its passage sets:
    cell ``a`` open to the right (horizontal) or down (vertical), cell ``b`` open to the left or up."""
    a_of, b_of, _, _ = edge_layout(size)
    cells = size * size
    horizontal = [b == a + 1 for a, b in zip(a_of, b_of, strict=True)]
    from_a = [(1 if h else 2) * cells + a for a, h in zip(a_of, horizontal, strict=True)]
    from_b = [(3 if h else 0) * cells + b for b, h in zip(b_of, horizontal, strict=True)]
    return np.array(from_a, dtype=np.intp), np.array(from_b, dtype=np.intp)


def _shuffled_indices(n_items: int, seeds: Sequence[int]) -> np.ndarray:
    """``grid._shuffled_indices`` for every seed at once, shape ``(len(seeds), n_items)``.

    Raises ``IndexError`` when a seed needs more words than were drawn (practically never).
    """
    n_words = shuffle_word_count(n_items)
    raw = b"".join(generator_words(int(seed), n_words) for seed in seeds)
    words = np.frombuffer(raw, dtype="<u4").reshape(len(seeds), n_words)
    mazes = np.arange(len(seeds))
    items = np.tile(np.arange(n_items, dtype=np.intp), (len(seeds), 1))
    position = np.zeros(len(seeds), dtype=np.intp)
    for n, shift in shuffle_draws(n_items):
        r = words[mazes, position] >> shift
        position += 1
        rejected = np.flatnonzero(r >= n)
        while rejected.size:  # randbelow draws again until the value is below n
            again = words[rejected, position[rejected]] >> shift
            position[rejected] += 1
            r[rejected] = again
            rejected = rejected[again >= n]
        i = n - 1
        swapped = items[mazes, r]
        items[mazes, r] = items[:, i]
        items[:, i] = swapped
    return items


def _spanning_trees(size: int, seeds: Sequence[int]) -> np.ndarray:
    """Kruskal over all seeds at once: ``(len(seeds), cells - 1)`` edge indices of each spanning tree.

    Components are labels (a cell's label is its component's); joining relabels one component, which is
    one array operation over all mazes where a union-find would be a Python loop per maze.
    """
    a_of, b_of, _, _ = edge_layout(size)
    order = _shuffled_indices(len(a_of), seeds)
    cells_a, cells_b = np.asarray(a_of)[order], np.asarray(b_of)[order]
    mazes = np.arange(len(seeds))
    labels = np.tile(np.arange(size * size, dtype=np.int16), (len(seeds), 1))
    opened = np.zeros(order.shape, dtype=bool)
    for t in range(order.shape[1]):
        label_a, label_b = labels[mazes, cells_a[:, t]], labels[mazes, cells_b[:, t]]
        opened[:, t] = label_a != label_b
        # Where a and b already share a label this rewrites it with itself: no join, no change.
        np.copyto(labels, label_b[:, None], where=labels == label_a[:, None])
    return order[opened].reshape(len(seeds), size * size - 1)


def _goal_distances(size: int, bits: np.ndarray) -> np.ndarray:
    """Breadth-first distances in cells to the goal, ``(M, cells)`` int32, from ``(M, 4, cells)`` bits."""
    open_to = bits.astype(bool)
    goal = size * size - 1
    dist = np.full((bits.shape[0], size * size), -1, dtype=np.int32)
    dist[:, goal] = 0
    frontier = np.zeros(dist.shape, dtype=bool)
    frontier[:, goal] = True
    seen = frontier.copy()
    d = 0
    while frontier.any():
        d += 1
        reached = np.zeros_like(frontier)
        # A frontier cell open in a direction reaches its neighbour there; outer walls are closed, so the
        # flat shifts never wrap from one row's end to the next row's start.
        reached[:, :-size] |= (frontier & open_to[:, 0])[:, size:]
        reached[:, 1:] |= (frontier & open_to[:, 1])[:, :-1]
        reached[:, size:] |= (frontier & open_to[:, 2])[:, :-size]
        reached[:, :-1] |= (frontier & open_to[:, 3])[:, 1:]
        reached &= ~seen
        dist[reached] = d
        seen |= reached
        frontier = reached
    return dist


def _tree_distances(size: int, tree: list[int]) -> list[int]:
    """Distances in cells to the goal along one spanning tree (a breadth-first walk over lists)."""
    a_of, b_of, _, _ = edge_layout(size)
    neighbours: list[list[int]] = [[] for _ in range(size * size)]
    for edge in tree:
        a, b = a_of[edge], b_of[edge]
        neighbours[a].append(b)
        neighbours[b].append(a)
    goal = size * size - 1
    dist = [-1] * (size * size)
    dist[goal] = 0
    frontier, d = [goal], 0
    while frontier:
        d += 1
        reached = []
        for cell in frontier:
            for neighbour in neighbours[cell]:
                if dist[neighbour] < 0:
                    dist[neighbour] = d
                    reached.append(neighbour)
        frontier = reached
    return dist


def passages_and_distances(size: int, seeds: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``open_directions`` and ``cell_distances_to_goal`` of the mazes ``seeds``.

    :param size: cells per side.
    :param seeds: maze seeds.
    :returns: ``(len(seeds), 4, N, N)`` uint8 passage bits and ``(len(seeds), N, N)`` int32 distances.
    """
    check_maze_size(size)
    m, cells = len(seeds), size * size
    trees: np.ndarray | None = None
    if m >= BATCH_THRESHOLD:
        try:
            trees = _spanning_trees(size, seeds)
        except IndexError:  # some seed needed more generator words than were drawn: go one by one
            trees = None
    tree_lists = None if trees is not None else [spanning_tree_edges(size, int(s)) for s in seeds]
    edges = trees if trees is not None else np.array(tree_lists, dtype=np.intp).reshape(m, cells - 1)
    from_a, from_b = _passage_bit_indices(size)
    bits = np.zeros((m, 4 * cells), dtype=np.uint8)
    bits[np.arange(m)[:, None], from_a[edges]] = 1
    bits[np.arange(m)[:, None], from_b[edges]] = 1
    if tree_lists is None:
        dist = _goal_distances(size, bits.reshape(m, 4, cells))
    else:
        dist = np.array([_tree_distances(size, tree) for tree in tree_lists], dtype=np.int32)
    return bits.reshape(m, 4, size, size), dist.reshape(m, size, size)
