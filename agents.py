"""SB3 agents for ``RLMaze-v0``: planner feature extractor, defaults, model building, evaluation.

Why a planner: a policy that only reacts to the full maze picture (an MLP over the grid) cannot find a path
in a maze it has never seen; measured on this project, naive PPO reaches 0% on even one fixed 10x10 maze.
``MazePlannerExtractor`` is a value-iteration-network style extractor (Tamar et al. 2016): a small conv net
turns the observation into a reward map, then a fixed number ``K`` of max-plus value-iteration sweeps
propagate value through open passages (the passage bits of the observation gate each move), and the
values around the agent are read out for small policy / value (or Q) heads. Only the observation (walls,
agent, goal) is used; the sweeps are ordinary tensor ops with a fixed trip count, so the policy exports to
ONNX. The reward map is initialised to mark the goal cell as the value source and the step cost to one,
a prior that PPO fine-tunes (DQN keeps it frozen, see ``default_hyperparameters``); the heads that turn
the value read-out into actions start from scratch, and an untrained model solves ~0% of mazes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn

import maze_env
from maze_env import AGENT_CHANNEL, GOAL_CHANNEL, MazeEnv

ALGORITHMS: tuple[str, ...] = ("PPO", "DQN")

# Read-out features: 4 neighbour value differences, 4 passage bits, 1 own value.
PLANNER_FEATURES: int = 9
# Gradients flow through only the last sweeps; earlier sweeps run without autograd, which keeps PPO/DQN
# updates cheap. The fixed point does not depend on where the gradient window starts.
GRAD_SWEEPS: int = 8
_GOAL_PRIOR_WEIGHT: float = 8.0
_DIFF_CLIP: float = 3.0
_CONVERGENCE_CHECK_EVERY: int = 8


def _exporting() -> bool:
    """Whether the model is being traced or compiled (ONNX export), where control flow must be fixed."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


def planning_sweeps(maze_size: int) -> int:
    """Number of value-iteration sweeps ``K`` for a maze size.

    Value reaches a cell after as many sweeps as its distance to the goal. Over Kruskal mazes the largest
    goal distance grows like ``N**1.5`` (measured maxima: 48 cells at N=10, 77 at 15, 99 at 20, 164 at 30);
    ``K = 1.6 * N**1.5 + 8`` leaves a margin, and never exceeds ``N*N`` (the exact worst case).

    :param maze_size: cells per side.
    """
    return min(maze_size * maze_size, math.ceil(1.6 * maze_size**1.5) + 8)


class MazePlannerExtractor(BaseFeaturesExtractor):
    """Value-iteration feature extractor for ``(6, N, N)`` maze observations (see module docstring)."""

    def __init__(
        self,
        observation_space: gymnasium.spaces.Box,
        sweeps: int | None = None,
        hidden: int = 16,
        learn_planner: bool = True,
    ) -> None:
        """Build the extractor.

        :param observation_space: the env's observation space, shape ``(6, N, N)``.
        :param sweeps: value-iteration sweeps ``K`` (default ``planning_sweeps(N)``).
        :param hidden: channels of the reward-map conv layer.
        :param learn_planner: also train the reward map and step cost (False: keep the prior, train heads).
        """
        super().__init__(observation_space, PLANNER_FEATURES)
        size = int(observation_space.shape[1])
        self.sweeps = sweeps if sweeps is not None else planning_sweeps(size)
        # Cells out of reach sit at -floor; reached cells stay above it (at most N*N-1 steps of cost ~1).
        self.floor = float(2 * size * size)
        self.reward_conv = nn.Sequential(
            nn.Conv2d(maze_env.N_OBS_CHANNELS, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 1, 1)
        )
        self.goal_weight = nn.Parameter(torch.tensor(_GOAL_PRIOR_WEIGHT))
        self.goal_bias = nn.Parameter(torch.tensor(-_GOAL_PRIOR_WEIGHT / 2))
        self.raw_step_cost = nn.Parameter(torch.tensor(math.log(math.e - 1.0)))  # softplus(x) == 1
        with torch.no_grad():
            last = self.reward_conv[2]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            last.weight.mul_(0.05)
            last.bias.zero_()
        self.requires_grad_(learn_planner)
        # One fixed 3x3 kernel per direction picks that neighbour's value: the same as four shifted slices
        # of a zero-padded map, but one ONNX node per sweep instead of a dozen (export was 5x slower).
        kernels = torch.zeros(4, 1, 3, 3)
        for channel, (row, col) in enumerate(((0, 1), (1, 2), (2, 1), (1, 0))):  # up, right, down, left
            kernels[channel, 0, row, col] = 1.0
        self.register_buffer("neighbour_kernels", kernels, persistent=False)

    def reward_map(self, obs: torch.Tensor) -> torch.Tensor:
        """Per-cell reward in ``[-floor, 0]``: about 0 at goal-like cells, about ``-floor`` elsewhere.

        :param obs: float observations ``(B, 6, N, N)``.
        """
        goal = obs[:, GOAL_CHANNEL : GOAL_CHANNEL + 1]
        logits = self.goal_weight * goal + self.goal_bias + self.reward_conv(obs)
        return -self.floor * (1.0 - torch.sigmoid(logits))

    def _neighbours(self, values: torch.Tensor) -> torch.Tensor:
        # Channel order follows maze_env.ACTIONS: up, right, down, left; zero outside the maze.
        kernels: torch.Tensor = self.neighbour_kernels  # type: ignore[assignment]
        return F.conv2d(values, kernels, padding=1)

    def _sweep(self, values: torch.Tensor, reward: torch.Tensor, move_bias: torch.Tensor) -> torch.Tensor:
        best = (self._neighbours(values) + move_bias).amax(dim=1, keepdim=True)
        return torch.maximum(reward, best)

    def _settle(self, reward: torch.Tensor, move_bias: torch.Tensor, sweeps: int) -> torch.Tensor:
        """Up to ``sweeps`` sweeps without autograd, stopping early once the values reach their fixed point.

        Stopping early gives bit-identical values (further sweeps change nothing); the export path runs
        all sweeps instead, since ONNX needs a fixed trip count.
        """
        values = reward
        snapshot = reward
        for sweep in range(1, sweeps + 1):
            values = self._sweep(values, reward, move_bias)
            if sweep % _CONVERGENCE_CHECK_EVERY == 0:
                if torch.equal(values, snapshot):
                    break
                snapshot = values
        return values

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        """Plan and read out features at the agent.

        :param observations: float observations ``(B, 6, N, N)`` with 0/1 entries.
        """
        passages = observations[:, :4]
        agent = observations[:, AGENT_CHANNEL : AGENT_CHANNEL + 1]
        step_cost = F.softplus(self.raw_step_cost) + 1e-3
        reward = self.reward_map(observations)
        # A closed passage costs far more than any path, so value never crosses a wall.
        move_bias = -4.0 * self.floor * (1.0 - passages) - step_cost
        settle_sweeps = max(0, self.sweeps - GRAD_SWEEPS)
        if _exporting():
            values = reward
            for _ in range(settle_sweeps):
                values = self._sweep(values, reward, move_bias)
        else:
            with torch.no_grad():
                values = self._settle(reward.detach(), move_bias.detach(), settle_sweeps)
        for _ in range(min(GRAD_SWEEPS, self.sweeps)):
            values = self._sweep(values, reward, move_bias)
        own = (values * agent).sum(dim=(2, 3))
        around = (self._neighbours(values) * agent).sum(dim=(2, 3))
        gated = around - 4.0 * self.floor * (1.0 - (passages * agent).sum(dim=(2, 3)))
        diffs = torch.clamp((gated - own) / step_cost, -_DIFF_CLIP, _DIFF_CLIP)
        open_here = (passages * agent).sum(dim=(2, 3))
        return torch.cat((diffs, open_here, own / self.floor), dim=1)


class ActionSharedQHead(nn.Module):
    """Q-value head that scores every action with one shared MLP over that action's planner features.

    An ordinary head has to learn the same rule ("prefer the direction whose value is higher") once per
    action and per neighbourhood pattern; DQN with such a head got stuck at junctions it had seen rarely
    (measured). Sharing the rule across the four directions makes it one small function to learn.
    """

    def __init__(self, hidden: int = 32) -> None:
        """Build the head.

        :param hidden: width of the shared MLP.
        """
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Q-values ``(B, 4)`` from planner features ``(B, 9)``.

        :param features: output of ``MazePlannerExtractor``.
        """
        own = features[:, 8:9].expand(-1, 4)
        per_action = torch.stack((features[:, :4], features[:, 4:8], own), dim=2)
        return self.mlp(per_action).squeeze(-1)


class MazeDQNPolicy(DQNPolicy):
    """DQN policy: ``MazePlannerExtractor`` followed by ``ActionSharedQHead`` (``net_arch`` is then unused).

    With any other feature extractor (a user override) it is SB3's ordinary Q-network.
    """

    def make_q_net(self) -> QNetwork:
        """Build a Q-network (online or target) with the shared-action head."""
        q_net = super().make_q_net()
        if isinstance(q_net.features_extractor, MazePlannerExtractor):
            q_net.q_net = nn.Sequential(ActionSharedQHead()).to(self.device)
        return q_net


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}")


def default_n_envs(algorithm: str) -> int:
    """Number of parallel (DummyVecEnv) environments we train with.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    """
    _check_algorithm(algorithm)
    return 16


def default_hyperparameters(algorithm: str, maze_size: int) -> dict[str, Any]:
    """SB3 constructor kwargs we use by default (user overrides are merged on top by ``build_model``).

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    :param maze_size: cells per side.
    """
    _check_algorithm(algorithm)
    maze_env.check_maze_size(maze_size)
    extractor = {"features_extractor_class": MazePlannerExtractor, "features_extractor_kwargs": {}}
    if algorithm == "PPO":
        return {
            "learning_rate": 1e-3,
            "n_steps": 128,
            "batch_size": 256,
            "n_epochs": 4,
            "gamma": 0.99,
            "gae_lambda": 0.95,
            "clip_range": 0.2,
            "ent_coef": 0.01,
            "vf_coef": 0.5,
            "max_grad_norm": 0.5,
            "policy_kwargs": {**extractor, "net_arch": {"pi": [32], "vf": [64]}},
        }
    return {
        "learning_rate": 1e-3,
        "buffer_size": 50_000,
        "learning_starts": 1_000,
        "batch_size": 128,
        "gamma": 0.99,
        "train_freq": 1,
        "gradient_steps": 1,
        "target_update_interval": 1_000,
        "exploration_fraction": 0.2,
        "exploration_final_eps": 0.02,
        "max_grad_norm": 10.0,
        # The TD loss, unlike PPO's, pulled the planner's reward map off the goal now and then: greedy
        # success on a fixed 5x5 maze fell from 100% to 0% and back between checkpoints (measured twice).
        # With the planner prior frozen DQN trains only the Q-head, and stayed at 100% at every checkpoint.
        "policy_kwargs": {
            "features_extractor_class": MazePlannerExtractor,
            "features_extractor_kwargs": {"learn_planner": False},
            "net_arch": [],
        },
    }


def make_vec_env(maze_size: int, maze_mode: str, seed: int, n_envs: int) -> VecEnv:
    """Build a ``DummyVecEnv`` of ``MazeEnv``.

    Sub-env ``k`` gets env seed ``seed + k`` (its own maze-seed stream in random mode); in fixed mode they
    all play the run's one maze, chosen by ``seed``.

    :param maze_size: cells per side.
    :param maze_mode: ``"fixed"`` or ``"random"``.
    :param seed: run seed.
    :param n_envs: number of sub-environments (>= 1).
    """
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")

    def factory(rank: int) -> Callable[[], gymnasium.Env]:
        env_seed = seed if maze_mode == "fixed" else seed + rank
        return lambda: MazeEnv(maze_size=maze_size, maze_mode=maze_mode, seed=env_seed)

    vec_env = DummyVecEnv([factory(k) for k in range(n_envs)])
    vec_env.seed(seed)
    return vec_env


def merged_hyperparameters(
    algorithm: str, maze_size: int, n_envs: int, overrides: dict[str, Any], timesteps_per_episode: int
) -> dict[str, Any]:
    """Defaults with ``overrides`` on top; for PPO ``n_steps`` follows ``timesteps_per_episode`` unless given.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    :param maze_size: cells per side.
    :param n_envs: number of parallel envs.
    :param overrides: user hyperparameters (win over defaults; ``policy_kwargs`` merged key by key).
    :param timesteps_per_episode: env steps per training iteration, over all envs.
    """
    params = default_hyperparameters(algorithm, maze_size)
    user = dict(overrides)
    user_policy_kwargs = user.pop("policy_kwargs", None) or {}
    params.update(user)
    params["policy_kwargs"] = {**params["policy_kwargs"], **user_policy_kwargs}
    if algorithm == "PPO":
        if "n_steps" not in user:
            params["n_steps"] = max(1, timesteps_per_episode // n_envs)
        rollout = params["n_steps"] * n_envs
        if "batch_size" not in user and params["batch_size"] > rollout:
            params["batch_size"] = rollout  # SB3 needs batch_size <= rollout size
    return params


def build_model(
    algorithm: str,
    env: VecEnv,
    hyperparameters: dict[str, Any],
    seed: int,
    device: str,
    timesteps_per_episode: int,
) -> BaseAlgorithm:
    """Create an SB3 model with our defaults merged with user ``hyperparameters`` (user values win).

    For PPO one training iteration is ``timesteps_per_episode`` env steps in total: ``n_steps =
    timesteps_per_episode // env.num_envs`` unless the user sets ``n_steps``.

    :param algorithm: ``"PPO"`` or ``"DQN"``.
    :param env: vectorised maze env (from ``make_vec_env``).
    :param hyperparameters: user overrides of SB3 constructor kwargs.
    :param seed: SB3 seed.
    :param device: torch device, e.g. ``"cpu"``.
    :param timesteps_per_episode: env steps per training iteration.
    """
    _check_algorithm(algorithm)
    shape = env.observation_space.shape
    assert shape is not None
    params = merged_hyperparameters(
        algorithm, int(shape[1]), env.num_envs, hyperparameters, timesteps_per_episode
    )
    model: BaseAlgorithm
    if algorithm == "PPO":
        model = PPO("MlpPolicy", env, seed=seed, device=device, verbose=0, **params)
    else:
        model = DQN(MazeDQNPolicy, env, seed=seed, device=device, verbose=0, **params)
    model.set_logger(in_memory_logger())
    return model


def in_memory_logger() -> Logger:
    """An SB3 logger that writes nowhere (our callbacks read its values): SB3's default one creates an
    empty /tmp/SB3-<time> directory on every `learn()`, which a long-running service would pile up.
    A model loaded from a file gets the default one back, so it needs this again."""
    return Logger(folder=None, output_formats=[])


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


def evaluate_with(
    predict: Callable[[np.ndarray], np.ndarray],
    maze_size: int,
    maze_seeds: Sequence[int],
    max_steps: int | None = None,
) -> EvalResult:
    """Run one episode per maze seed, all in lockstep with one batched ``predict`` call per step.

    :param predict: maps a float32 batch ``(B, 6, N, N)`` of observations to ``B`` action indices
        (deterministic greedy policy).
    :param maze_size: cells per side.
    :param maze_seeds: one episode per seed (``reset(options={"maze_seed": s})``).
    :param max_steps: time limit per episode (default: the env's, ``2 * N * N``).
    """
    if not maze_seeds:
        return EvalResult(success_rate=0.0, path_efficiency=0.0, episodes=0, mean_steps=0.0)
    envs = [MazeEnv(maze_size=maze_size, maze_mode="fixed", max_episode_steps=max_steps) for _ in maze_seeds]
    obs = np.stack(
        [env.reset(options={"maze_seed": int(s)})[0] for env, s in zip(envs, maze_seeds, strict=True)]
    )
    optimal = np.array([maze_env.shortest_path_moves(env.maze) for env in envs], dtype=np.float64)
    steps = np.zeros(len(envs), dtype=np.int64)
    solved = np.zeros(len(envs), dtype=bool)
    active = np.arange(len(envs))
    while active.size:
        actions = np.asarray(predict(obs[active].astype(np.float32))).reshape(-1)
        still_active = []
        for idx, action in zip(active, actions, strict=True):
            ob, _, terminated, truncated, _ = envs[idx].step(int(action))
            obs[idx] = ob
            steps[idx] += 1
            solved[idx] = terminated
            if not (terminated or truncated):
                still_active.append(idx)
        active = np.array(still_active, dtype=np.int64)
    efficiency = np.where(solved, optimal / np.maximum(steps, 1), 0.0)
    return EvalResult(
        success_rate=float(solved.mean()),
        path_efficiency=float(efficiency.mean()),
        episodes=len(envs),
        mean_steps=float(steps.mean()),
    )


def evaluate(
    model: BaseAlgorithm, maze_size: int, maze_seeds: Sequence[int], max_steps: int | None = None
) -> EvalResult:
    """Deterministic, vectorised evaluation of an SB3 model (see ``evaluate_with``).

    :param model: trained PPO or DQN model.
    :param maze_size: cells per side (must match the model's observation space).
    :param maze_seeds: one episode per seed; use ``maze_env.eval_maze_seeds`` for unseen mazes.
    :param max_steps: time limit per episode (default: the env's).
    """

    def predict(batch: np.ndarray) -> np.ndarray:
        actions, _ = model.predict(batch, deterministic=True)
        return np.asarray(actions)

    return evaluate_with(predict, maze_size, maze_seeds, max_steps)
