"""Play deterministic policies on mazes and score them: success rate and path efficiency.

The one stepping loop (``play``) serves every place a policy plays mazes: the periodic held-out
evaluation during training, ``POST /experiments/{id}/evaluate``, rollouts and ``agents.replay``. Only
numpy and the maze are imported, so that it runs where torch is not installed (with an ``OnnxPolicy``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from maze_env import MazeEnv
from mazes.grid import Maze, shortest_path_moves

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

# Asked between steps of the lockstep loop: True ends the play with `EvaluationStopped`.
ShouldStop = Callable[[], bool]


class EvaluationStopped(Exception):
    """Play was abandoned because `should_stop` said so (a stop request during an evaluation)."""


# Maps a float32 batch (B, 6, N, N) of observations to B action indices (a deterministic greedy policy).
Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Episode:
    """One maze played to its end.

    :param maze: the maze played.
    :param steps: actions taken.
    :param success: the agent reached the goal within the time limit.
    :param positions: the agent's square at the start and after each action (bumps into a wall repeat
        it); empty unless recorded.
    """

    maze: Maze
    steps: int
    success: bool
    positions: list[tuple[int, int]]


@dataclass(frozen=True)
class EvalResult:
    """Deterministic evaluation over a set of mazes.

    :param success_rate: fraction of mazes solved within the time limit.
    :param path_efficiency: mean over episodes of ``shortest_path_moves / moves_taken``, 0 for a failure
        (so it is at most ``success_rate``; 1.0 means every maze solved along a shortest path).
    :param episodes: number of mazes.
    :param mean_steps: mean actions taken per episode (failures count the full time limit).
    """

    success_rate: float
    path_efficiency: float
    episodes: int
    mean_steps: float


def play(
    predict: Predict,
    envs: Sequence[MazeEnv],
    maze_seeds: Sequence[int],
    record_positions: bool = False,
    should_stop: ShouldStop | None = None,
) -> list[Episode]:
    """Play one episode per env, all in lockstep with one batched ``predict`` call per step.

    :param predict: the policy (see ``Predict``).
    :param envs: the environments, one per episode; their time limits end episodes that never finish.
    :param maze_seeds: the maze each env plays (``reset(options={"maze_seed": s})``).
    :param record_positions: keep every square each agent occupies (``Episode.positions``); episodes
        then play to their end even when they loop.
    :param should_stop: asked before every step; True raises ``EvaluationStopped``.

    Observations are Markov (walls, agent, goal) and ``predict`` is deterministic, so an agent back on a
    square it occupied earlier in the episode repeats the same moves forever: that episode is a failure
    now, and (unless positions are recorded) it ends at once, scored as if it ran to its time limit. An
    untrained policy loops on most mazes within a few steps, so this makes the early evaluations of a
    run, which otherwise play every maze to ``2 * N * N`` steps, several times cheaper.
    """
    first_obs = []
    for env, seed in zip(envs, maze_seeds, strict=True):
        # As building the envs, generating thousands of large mazes takes seconds.
        _check_stop(should_stop, len(envs))
        first_obs.append(env.reset(options={"maze_seed": int(seed)})[0])
    obs = np.stack(first_obs)
    positions: list[list[tuple[int, int]]] = [[env.agent_pos] if record_positions else [] for env in envs]
    visited: list[set[tuple[int, int]]] = [{env.agent_pos} for env in envs]
    steps = np.zeros(len(envs), dtype=np.int64)
    solved = np.zeros(len(envs), dtype=bool)
    active = np.arange(len(envs))
    while active.size:
        _check_stop(should_stop, active.size)
        actions = np.asarray(predict(obs[active].astype(np.float32))).reshape(-1)
        still_active = []
        for idx, action in zip(active.tolist(), actions, strict=True):
            env = envs[idx]
            ob, _, terminated, truncated, _ = env.step(int(action))
            obs[idx] = ob
            steps[idx] += 1
            solved[idx] = terminated
            if record_positions:
                positions[idx].append(env.agent_pos)
            elif not terminated and env.agent_pos in visited[idx]:
                steps[idx], truncated = env.max_episode_steps, True  # looping: it never arrives
            visited[idx].add(env.agent_pos)
            if not (terminated or truncated):
                still_active.append(idx)
        active = np.array(still_active, dtype=np.int64)
    return [
        Episode(maze=env.maze, steps=int(steps[k]), success=bool(solved[k]), positions=positions[k])
        for k, env in enumerate(envs)
    ]


def _check_stop(should_stop: ShouldStop | None, unfinished: int) -> None:
    if should_stop is not None and should_stop():
        raise EvaluationStopped(f"evaluation stopped with {unfinished} episodes unfinished")


def evaluate_with(
    predict: Predict,
    maze_size: int,
    maze_seeds: Sequence[int],
    max_steps: int | None = None,
    should_stop: ShouldStop | None = None,
) -> EvalResult:
    """Run one episode per maze seed (see ``play``) and score them.

    :param predict: the policy (see ``Predict``), e.g. ``OnnxPolicy.predict``.
    :param maze_size: cells per side.
    :param maze_seeds: one episode per seed.
    :param max_steps: time limit per episode (default: the env's, ``2 * N * N``).
    :param should_stop: asked between steps; True raises ``EvaluationStopped``.
    """
    if not maze_seeds:
        return EvalResult(success_rate=0.0, path_efficiency=0.0, episodes=0, mean_steps=0.0)
    envs = []
    for _ in maze_seeds:
        # Thousands of large-maze envs take seconds to build: a stop is honoured here too.
        _check_stop(should_stop, len(maze_seeds))
        envs.append(MazeEnv(maze_size=maze_size, maze_mode="fixed", max_episode_steps=max_steps))
    episodes = play(predict, envs, maze_seeds, should_stop=should_stop)
    optimal = np.array([shortest_path_moves(e.maze) for e in episodes], dtype=np.float64)
    steps = np.array([e.steps for e in episodes], dtype=np.int64)
    solved = np.array([e.success for e in episodes], dtype=bool)
    efficiency = np.where(solved, optimal / np.maximum(steps, 1), 0.0)
    return EvalResult(
        success_rate=float(solved.mean()),
        path_efficiency=float(efficiency.mean()),
        episodes=len(episodes),
        mean_steps=float(steps.mean()),
    )


def evaluate(
    model: BaseAlgorithm,
    maze_size: int,
    maze_seeds: Sequence[int],
    max_steps: int | None = None,
    should_stop: ShouldStop | None = None,
) -> EvalResult:
    """Deterministic, vectorised evaluation of an SB3 model (see ``evaluate_with``).

    :param model: trained PPO or DQN model.
    :param maze_size: cells per side (must match the model's observation space).
    :param maze_seeds: one episode per seed; use ``maze_env.eval_maze_seeds`` for unseen mazes.
    :param max_steps: time limit per episode (default: the env's).
    :param should_stop: asked between steps; True raises ``EvaluationStopped``.
    """

    def predict(batch: np.ndarray) -> np.ndarray:
        actions, _ = model.predict(batch, deterministic=True)
        return np.asarray(actions)

    return evaluate_with(predict, maze_size, maze_seeds, max_steps, should_stop)
