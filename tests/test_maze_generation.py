"""The fast maze generators give the mazes the original ``random.shuffle`` Kruskal gave, seed for seed.

Saved runs and held-out evaluation seeds name mazes by seed, so ``generate_maze`` and
``mazes.batch.passages_and_distances`` are compared with a frozen copy of the first implementation, and
the mazes of 300 seeds are pinned by a digest that no change of Python's ``random`` may move.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from mazes import batch, grid
from mazes.grid import cell_distances_to_goal, generate_maze, open_directions


def original_grid(size: int, seed: int) -> np.ndarray:
    """``generate_maze(size, seed).grid`` as the first implementation built it (before the fast one)."""
    rng = random.Random(int(seed))
    side = 2 * size + 1
    maze = np.ones((side, side), dtype=np.uint8)
    maze[1::2, 1::2] = 0
    edges = [(i, j, 0) for i in range(size) for j in range(size - 1)]
    edges += [(i, j, 1) for i in range(size - 1) for j in range(size)]
    rng.shuffle(edges)
    parent = list(range(size * size))

    def find_root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    joined = 0
    for i, j, vertical in edges:
        a = i * size + j
        b = a + size if vertical else a + 1
        root_a, root_b = find_root(a), find_root(b)
        if root_a == root_b:
            continue
        parent[root_a] = root_b
        maze[2 * i + 1 + vertical, 2 * j + 1 + (1 - vertical)] = 0
        joined += 1
        if joined == size * size - 1:
            break
    return maze


EDGE_SEEDS = [2**30, 2**30 + 7, 2**31 - 1, 2**32 + 5, 2**40 + 3, -5]


@pytest.mark.parametrize(("size", "n_seeds"), [(2, 200), (3, 200), (5, 300), (10, 500), (17, 100), (30, 40)])
def test_generate_maze_equals_the_original_implementation(size: int, n_seeds: int) -> None:
    for seed in [*range(n_seeds), *EDGE_SEEDS]:
        np.testing.assert_array_equal(generate_maze(size, seed).grid, original_grid(size, seed), str(seed))


def test_mazes_of_300_seeds_are_pinned() -> None:
    digest = hashlib.sha256()
    for size in (5, 10, 30):
        for seed in range(100):
            digest.update(generate_maze(size, seed).grid.tobytes())
    assert digest.hexdigest() == "d33544c6f2e88c4cbe6f3918740c4574a43f601acdad0ed4f9c087bf1a970394"


def force_path(monkeypatch: pytest.MonkeyPatch, batched: bool) -> None:
    """Make ``passages_and_distances`` take the numpy batch path for any batch, or never."""
    monkeypatch.setattr(batch, "BATCH_MIN_MAZES", 1 if batched else 10**9)
    monkeypatch.setattr(batch, "BATCH_MAX_SIZE", grid.MAX_MAZE_SIZE)


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("size", [2, 4, 10, 30])
@pytest.mark.parametrize("n_seeds", [1, 5, 60])
def test_batch_arrays_equal_those_of_each_generated_maze(
    monkeypatch: pytest.MonkeyPatch, size: int, n_seeds: int, batched: bool
) -> None:
    force_path(monkeypatch, batched)
    seeds = [(size * 7919 + k * 104729) % 2**30 for k in range(n_seeds - 1)] + [2**30 + 3]
    walls, distances = batch.passages_and_distances(size, seeds)
    assert walls.shape == (n_seeds, 4, size, size) and walls.dtype == np.uint8
    assert distances.shape == (n_seeds, size, size) and distances.dtype == np.int32
    for k, seed in enumerate(seeds):
        maze = generate_maze(size, seed)
        np.testing.assert_array_equal(walls[k], open_directions(maze))
        np.testing.assert_array_equal(distances[k], cell_distances_to_goal(maze))


def test_the_default_thresholds_batch_only_hundreds_of_small_mazes() -> None:
    assert batch.BATCH_MIN_MAZES >= 100 and batch.BATCH_MAX_SIZE <= 20
    seeds = list(range(batch.BATCH_MIN_MAZES))
    walls, distances = batch.passages_and_distances(10, seeds)
    for k in (0, 17, len(seeds) - 1):
        maze = generate_maze(10, seeds[k])
        np.testing.assert_array_equal(walls[k], open_directions(maze))
        np.testing.assert_array_equal(distances[k], cell_distances_to_goal(maze))


def test_running_out_of_predrawn_words_draws_more_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seeds = list(range(40))
    expected = [original_grid(6, seed) for seed in seeds]
    expected_walls, expected_distances = batch.passages_and_distances(6, seeds)
    force_path(monkeypatch, batched=True)
    # Far fewer words than a shuffle of 60 edges uses: the one-by-one path redraws, the batch falls back.
    monkeypatch.setattr(grid, "shuffle_word_count", lambda n_items: 8)
    monkeypatch.setattr(batch, "shuffle_word_count", lambda n_items: 8)
    for seed, grid_before in zip(seeds, expected, strict=True):
        np.testing.assert_array_equal(generate_maze(6, seed).grid, grid_before)
    walls, distances = batch.passages_and_distances(6, seeds)
    np.testing.assert_array_equal(walls, expected_walls)
    np.testing.assert_array_equal(distances, expected_distances)


def test_empty_batch() -> None:
    walls, distances = batch.passages_and_distances(10, [])
    assert walls.shape == (0, 4, 10, 10) and distances.shape == (0, 10, 10)
