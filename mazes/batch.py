"""Many mazes at once as arrays: the passage bits and goal distances a batched env loads at its resets.

``passages_and_distances(size, seeds)`` equals ``open_directions`` and ``cell_distances_to_goal`` applied
to ``generate_maze(size, seed)`` for each seed, without building the ``Maze`` objects. Seeds usually go
through ``grid.spanning_tree_edges`` one by one; hundreds of small mazes at once (a batched env whose
episodes all time out on the same step) run every stage of ``generate_maze`` as numpy operations over
all of them together: the same ``random.shuffle`` draws, the same Kruskal joins, then a breadth-first
walk from the goal.
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

# When one numpy operation over all mazes beats a Python loop per maze (measured on one core: 1,024
# mazes of 10x10 in 0.55x the time, 512 of 15x15 in 0.87x; 128 mazes, or 20x20 and larger, are faster
# one by one, since the batch's Kruskal and BFS touch every cell of every maze at each step).
BATCH_MIN_MAZES: int = 256
BATCH_MAX_SIZE: int = 15


@functools.cache
def _passage_bit_indices(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per edge, the two flat indices into ``open_directions``' ``(4, N, N)`` bits that its passage sets:
    cell ``a`` open to the right (horizontal) or down (vertical), cell ``b`` open to the left or up."""
    a_of, b_of, _, _ = edge_layout(size)
    cells = size * size
    horizontal = [b == a + 1 for a, b in zip(a_of, b_of, strict=True)]
    from_a = [(1 if h else 2) * cells + a for a, h in zip(a_of, horizontal, strict=True)]
    from_b = [(3 if h else 0) * cells + b for b, h in zip(b_of, horizontal, strict=True)]
    bits_a, bits_b = np.array(from_a, dtype=np.intp), np.array(from_b, dtype=np.intp)
    bits_a.flags.writeable = bits_b.flags.writeable = False  # cached: shared by every caller
    return bits_a, bits_b


def _shuffled_indices(n_items: int, seeds: Sequence[int]) -> np.ndarray:
    """``grid._shuffled_indices`` for every seed at once, transposed: shape ``(n_items, len(seeds))``.

    Rows are positions and columns mazes, so each draw reads and writes contiguous rows; the per-maze
    gathers are flat ``take``s. Raises ``IndexError`` when a seed needs more words than were drawn
    (practically never).
    """
    m, n_words = len(seeds), shuffle_word_count(n_items)
    raw = b"".join(generator_words(int(seed), n_words) for seed in seeds)
    words = np.frombuffer(raw, dtype="<u4")
    mazes = np.arange(m)
    position = mazes * n_words  # flat index of each maze's next word
    items = np.repeat(np.arange(n_items, dtype=np.intp), m).reshape(n_items, m)
    flat_items = items.reshape(-1)
    for n, shift in shuffle_draws(n_items):
        r = words[position] >> shift
        position += 1
        rejected = np.flatnonzero(r >= n)
        while rejected.size:  # randbelow draws again until the value is below n
            again = words[position[rejected]] >> shift
            position[rejected] += 1
            r[rejected] = again
            rejected = rejected[again >= n]
        i = n - 1
        at_r = r * m + mazes
        swapped = flat_items[at_r]
        flat_items[at_r] = items[i]
        items[i] = swapped
    if (position > mazes * n_words + n_words).any():  # a maze read past its own words
        raise IndexError("a seed needed more generator words than were drawn")
    return items


def _spanning_trees(size: int, seeds: Sequence[int]) -> np.ndarray:
    """Kruskal over all seeds at once: ``(len(seeds), cells - 1)`` edge indices of each spanning tree.

    Components are labels (a cell's label is its component's); joining relabels one component, which is
    one array operation over all mazes where a union-find would be a Python loop per maze.
    """
    a_of, b_of, _, _ = edge_layout(size)
    m, cells = len(seeds), size * size
    order = _shuffled_indices(len(a_of), seeds)  # (edges, mazes)
    first_cell = np.arange(m) * cells
    flat_a, flat_b = np.asarray(a_of)[order] + first_cell, np.asarray(b_of)[order] + first_cell
    labels = np.tile(np.arange(cells, dtype=np.int16), (m, 1))
    flat_labels = labels.reshape(-1)
    opened = np.zeros(order.shape, dtype=bool)
    joined = np.zeros(m, dtype=np.intp)
    for t in range(order.shape[0]):
        label_a, label_b = flat_labels[flat_a[t]], flat_labels[flat_b[t]]
        np.not_equal(label_a, label_b, out=opened[t])
        joining = np.flatnonzero(opened[t])
        if joining.size < m // 2:  # late edges mostly close loops: relabel only the mazes they join
            rows = labels[joining]
            np.copyto(rows, label_b[joining, None], where=rows == label_a[joining, None])
            labels[joining] = rows
        else:  # where a and b already share a label this rewrites it with itself: no change
            np.copyto(labels, label_b[:, None], where=labels == label_a[:, None])
        joined += opened[t]
        if t % 8 == 0 and joined.min() == cells - 1:
            break  # every tree is complete: each later edge would close a loop
    return order.T[opened.T].reshape(m, cells - 1)


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
    """Distances in cells to the goal along one spanning tree (a breadth-first walk over lists).

    ``grid.cell_distances_to_goal`` is the same walk over a ``Maze``'s passage bits; from the tree's own
    edge list this one skips the four-direction test per cell (10-30% faster per maze, measured).
    """
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
    if m >= BATCH_MIN_MAZES and size <= BATCH_MAX_SIZE:
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
