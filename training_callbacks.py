"""Stable-Baselines3 callbacks: measure progress, and stop training when asked."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from run_store import ProgressSnapshot

ROLLING_WINDOW = 100
LOSS_KEYS = ("train/loss",)


class ProgressCallback(BaseCallback):
    """Counts maze episodes and successes, and publishes a snapshot per iteration and per interval.

    :param timesteps_per_episode: steps in one training iteration (our "episode").
    :param interval_s: publish at least this often, even inside a long iteration.
    :param publish: receives each snapshot, on the training thread; must be quick.
    :param clock: monotonic seconds (injected for tests of the timing logic).
    """

    def __init__(
        self,
        timesteps_per_episode: int,
        interval_s: float,
        publish: Callable[[ProgressSnapshot], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._timesteps_per_episode = timesteps_per_episode
        self._interval_s = interval_s
        self._publish = publish
        self._clock = clock
        self._successes: collections.deque[bool] = collections.deque(maxlen=ROLLING_WINDOW)
        self._rewards: collections.deque[float] = collections.deque(maxlen=ROLLING_WINDOW)
        self._episode_returns: np.ndarray = np.zeros(0)
        self.maze_episodes = 0
        self.maze_successes = 0
        self._loss: float | None = None
        self._started_at = 0.0
        self._start_timesteps = 0
        self._last_publish_at = 0.0
        self._last_episode = -1

    def _on_training_start(self) -> None:
        self._started_at = self._clock()
        self._last_publish_at = self._started_at
        self._start_timesteps = self.num_timesteps
        self._episode_returns = np.zeros(self.training_env.num_envs if self.training_env else 1)
        self._last_episode = self.num_timesteps // self._timesteps_per_episode

    def _on_step(self) -> bool:
        self._count_episodes()
        self._remember_loss()
        episode = self.num_timesteps // self._timesteps_per_episode
        now = self._clock()
        if episode != self._last_episode or now - self._last_publish_at >= self._interval_s:
            self._last_episode = episode
            self._last_publish_at = now
            self._publish(self.snapshot())
        return True

    def _on_rollout_start(self) -> None:
        # PPO's losses are recorded by train(), which runs between rollouts.
        self._remember_loss()

    def _on_training_end(self) -> None:
        self._remember_loss()
        self._publish(self.snapshot())

    def _count_episodes(self) -> None:
        rewards = np.asarray(self.locals.get("rewards", ()), dtype=float)
        if rewards.shape == self._episode_returns.shape:
            self._episode_returns += rewards
        dones = self.locals.get("dones", ())
        infos = self.locals.get("infos", ())
        for index, (done, info) in enumerate(zip(dones, infos, strict=False)):
            if not done:
                continue
            success = bool(info.get("is_success", False))
            self.maze_episodes += 1
            self.maze_successes += int(success)
            self._successes.append(success)
            self._rewards.append(float(self._episode_returns[index]))
            self._episode_returns[index] = 0.0

    def _remember_loss(self) -> None:
        if self.model is None:
            return
        values = self.model.logger.name_to_value
        for key in LOSS_KEYS:
            if key in values:
                self._loss = float(values[key])

    def snapshot(self) -> ProgressSnapshot:
        elapsed = self._clock() - self._started_at
        steps = self.num_timesteps - self._start_timesteps
        return ProgressSnapshot(
            episode=self.num_timesteps // self._timesteps_per_episode,
            timesteps=self.num_timesteps,
            maze_episodes=self.maze_episodes,
            maze_successes=self.maze_successes,
            reward=float(np.mean(self._rewards)) if self._rewards else None,
            success_rate=float(np.mean(self._successes)) if self._successes else None,
            loss=self._loss,
            fps=steps / elapsed if elapsed > 0 else None,
        )


class StopOnRequestCallback(BaseCallback):
    """Ends training when a stop was requested, locally (event) or by another worker (polled).

    :param local_stop: set by this process to stop at the next step.
    :param poll_remote: asks the shared store whether a stop was requested; called at most every
        `poll_interval_s` so a busy run does not hammer the database.
    :param poll_interval_s: seconds between remote polls.
    """

    def __init__(
        self,
        local_stop: threading.Event,
        poll_remote: Callable[[], bool],
        poll_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._local_stop = local_stop
        self._poll_remote = poll_remote
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._last_poll = 0.0

    def _on_step(self) -> bool:
        if self._local_stop.is_set():
            return False
        now = self._clock()
        if now - self._last_poll >= self._poll_interval_s:
            self._last_poll = now
            if self._poll_remote():
                self._local_stop.set()
                return False
        return True
