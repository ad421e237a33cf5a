"""SB3's PPO and DQN, with the reward-model steps of a learned planner (``planner_learned``) at each update.

With any other policy they are SB3's algorithms unchanged. The reward model (``rl_maze.reward_model``)
learns from the transitions the algorithm trains on: PPO's rollout (whether each move ended its episode at
the goal is read from the env's ``is_success`` when the step is collected) and DQN's replay samples
(their ``dones``, from which SB3 removes time-limit truncations, so a done is a move into the goal).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from stable_baselines3 import DQN, PPO

from rl_maze.planner import MazePlannerExtractor
from rl_maze.reward_model import BATCH_SIZE, STEPS_PER_UPDATE, RewardModelTrainer

_NOT_SAVED = ["_reward_model", "_reached_goal"]
# SB3 logger key of the reward model's mean loss over an update's steps (the service's metric
# `reward_model_loss`). Its optimiser's moments are not saved: a resumed run starts them afresh.
REWARD_MODEL_LOSS_KEY = "train/reward_model_loss"


class MazePPO(PPO):
    """PPO; with a learned planner's reward model, up to ``STEPS_PER_UPDATE`` minibatches of ``BATCH_SIZE``
    transitions of it at each update (fewer when the rollout is smaller than that)."""

    _reward_model: RewardModelTrainer | None
    _reached_goal: np.ndarray

    def _setup_model(self) -> None:
        super()._setup_model()
        extractor = self.policy.features_extractor
        if isinstance(extractor, MazePlannerExtractor) and not extractor.prior and self.policy.ortho_init:
            # SB3 gave the extractor's layers orthogonal weights: a learned planner starts nearly flat again.
            extractor.shrink_reward_output()
        self._reward_model = RewardModelTrainer.for_extractor(extractor)
        self._reached_goal = np.zeros((self.n_steps, self.n_envs), dtype=bool)

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        # Called once per collected step, before the step is added at ``rollout_buffer.pos``.
        super()._update_info_buffer(infos, dones)
        if self._reward_model is not None and dones is not None:
            position = self.rollout_buffer.pos
            if position < len(self._reached_goal):
                reached = [
                    bool(done and info.get("is_success")) for done, info in zip(dones, infos, strict=True)
                ]
                self._reached_goal[position] = reached

    def train(self) -> None:
        """The reward model's steps on random minibatches of the rollout just collected, then PPO's update.

        In this order PPO's update starts from the planner the reward model has just changed, and its
        probability ratios (against the policy that collected the rollout) and ``approx_kl`` include that
        change (measured: a KL of ~1e-4 per update at 5x5).
        """
        if self._reward_model is not None:
            self._fit_reward_model(self._reward_model)
        super().train()

    def _fit_reward_model(self, reward_model: RewardModelTrainer) -> None:
        buffer = self.rollout_buffer
        observations = buffer.observations.reshape(-1, *buffer.obs_shape)
        actions, reached = buffer.actions.reshape(-1), self._reached_goal.reshape(-1)
        size = min(BATCH_SIZE, len(observations))
        # Random minibatches (numpy's generator, which SB3 seeds), copied to the device one at a time.
        chosen = np.random.permutation(len(observations))[: STEPS_PER_UPDATE * size]

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            for start in range(0, len(chosen), size):
                rows = chosen[start : start + size]
                yield (
                    torch.as_tensor(observations[rows], device=self.device),
                    torch.as_tensor(actions[rows], device=self.device),
                    torch.as_tensor(reached[rows], device=self.device),
                )

        _record_loss(self, reward_model.fit(batches()))

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), *_NOT_SAVED]


class MazeDQN(DQN):
    """DQN; with a learned planner's reward model, one step of it on a replay sample per gradient step."""

    _reward_model: RewardModelTrainer | None

    def _setup_model(self) -> None:
        super()._setup_model()
        self._reward_model = RewardModelTrainer.for_extractor(self.q_net.features_extractor)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """DQN's gradient steps, then as many reward-model steps on fresh replay samples."""
        super().train(gradient_steps, batch_size)
        if self._reward_model is None:
            return
        samples = (
            self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            for _ in range(gradient_steps)
        )
        batches = ((sample.observations, sample.actions, sample.dones) for sample in samples)
        _record_loss(self, self._reward_model.fit(batches))

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_reward_model"]


def _record_loss(model: PPO | DQN, loss: float | None) -> None:
    """The reward model's mean loss of this update into the model's SB3 logger (when it learned)."""
    if loss is not None:
        model.logger.record(REWARD_MODEL_LOSS_KEY, loss)
