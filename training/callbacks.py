"""Stable-Baselines3 callbacks of a run: progress, tracking, checkpoints, stop requests, and their list.

Each callback does one of these; `run_callbacks` builds the list a run trains with.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable

import numpy as np
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from core.settings import Settings
from records.files import CHECKPOINT_DIR
from records.store import ProgressSnapshot
from records.tables import TrainingRun
from rl_maze.algorithms import REWARD_MODEL_LOSS_KEY
from training.checkpoints import SaveCheckpoints
from training.stopping import StopSignal

ROLLING_WINDOW = 100
LOSS_KEYS = ("train/loss",)


class ProgressCallback(BaseCallback):
    """Counts maze episodes and successes, and publishes a snapshot per iteration and per interval.

    :param timesteps_per_episode: steps in one training iteration (our "episode").
    :param interval_s: publish at least this often, even inside a long iteration.
    :param publish: receives each snapshot, on the training thread; must be quick.
    :param clock: monotonic seconds (injected for tests of the timing logic).
    :param maze_episodes: episodes already counted (a resumed run continues its counts).
    :param maze_successes: successes already counted.
    """

    def __init__(
        self,
        timesteps_per_episode: int,
        interval_s: float,
        publish: Callable[[ProgressSnapshot], None],
        clock: Callable[[], float] = time.monotonic,
        maze_episodes: int = 0,
        maze_successes: int = 0,
    ) -> None:
        super().__init__()
        self._timesteps_per_episode = timesteps_per_episode
        self._interval_s = interval_s
        self._publish = publish
        self._clock = clock
        self._successes: collections.deque[bool] = collections.deque(maxlen=ROLLING_WINDOW)
        self._rewards: collections.deque[float] = collections.deque(maxlen=ROLLING_WINDOW)
        self._episode_returns: np.ndarray = np.zeros(0)
        self.maze_episodes = maze_episodes
        self.maze_successes = maze_successes
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
    """Ends training at the next env step once the run's stop signal is set.

    :param signal: the run's stop signal (a local event, and remote requests polled from the store).
    """

    def __init__(self, signal: StopSignal) -> None:
        super().__init__()
        self._signal = signal

    def _on_step(self) -> bool:
        return not self._signal.is_set()


# SB3 logger keys → our MLflow metric names.
SB3_METRICS = {
    "train/loss": "loss",
    "train/policy_gradient_loss": "policy_loss",
    "train/value_loss": "value_loss",
    "train/entropy_loss": "entropy_loss",
    "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction",
    "train/explained_variance": "explained_variance",
    "train/learning_rate": "learning_rate",
    "rollout/exploration_rate": "exploration_rate",
    REWARD_MODEL_LOSS_KEY: "reward_model_loss",  # planner_learned: what rl_maze.algorithms logs
}


class TrackingCallback(BaseCallback):
    """Sends one set of metrics per training iteration to the experiment tracker (step = timesteps).

    :param progress: the run's ProgressCallback, whose counts it reports (place it first in the list).
    :param timesteps_per_episode: steps in one training iteration.
    :param log_metrics: receives (metrics, step); must not block (the tracker buffers).
    """

    def __init__(
        self,
        progress: ProgressCallback,
        timesteps_per_episode: int,
        log_metrics: Callable[[dict[str, float], int], None],
    ) -> None:
        super().__init__()
        self._progress = progress
        self._timesteps_per_episode = timesteps_per_episode
        self._log_metrics = log_metrics
        self._last_episode = 0
        self._last_sent_step = -1
        self._sb3_values: dict[str, float] = {}

    def _on_training_start(self) -> None:
        self._last_episode = self.num_timesteps // self._timesteps_per_episode

    def _on_step(self) -> bool:
        self._remember_sb3_values()
        episode = self.num_timesteps // self._timesteps_per_episode
        if episode != self._last_episode:
            self._last_episode = episode
            self._send()
        return True

    def _on_rollout_start(self) -> None:
        self._remember_sb3_values()

    def _on_training_end(self) -> None:
        self._remember_sb3_values()
        self._send()

    def _remember_sb3_values(self) -> None:
        # SB3 clears its logger on every dump, so keep the latest value of each key ourselves.
        if self.model is None:
            return
        for key, value in self.model.logger.name_to_value.items():
            if key in SB3_METRICS:
                self._sb3_values[SB3_METRICS[key]] = float(value)

    def _send(self) -> None:
        if self.num_timesteps == self._last_sent_step:
            return  # training ended right on an iteration boundary: that point is logged already
        self._last_sent_step = self.num_timesteps
        snapshot = self._progress.snapshot()
        metrics: dict[str, float] = {
            "episode": float(snapshot.episode),
            "maze_episodes": float(snapshot.maze_episodes),
            **self._sb3_values,
        }
        for name in ("reward", "success_rate", "fps"):
            value = getattr(snapshot, name)
            if value is not None:
                metrics[name] = float(value)
        lengths = [info["l"] for info in (self.model.ep_info_buffer or [])] if self.model else []
        if lengths:
            metrics["episode_length"] = float(np.mean(lengths))
        if "loss" in metrics and self.model is not None and isinstance(self.model, DQN):
            metrics["td_loss"] = metrics["loss"]
        self._log_metrics(metrics, self.num_timesteps)


def run_callbacks(
    run: TrainingRun,
    settings: Settings,
    publish: Callable[[ProgressSnapshot], None],
    log_metrics: Callable[[dict[str, float], int], None] | None,
    evaluation: BaseCallback | None,
    signal: StopSignal,
) -> CallbackList:
    """The callbacks a run trains with, in order: progress, checkpoints, tracking, evaluation, stop.

    :param run: the run (its iteration size, counts so far and id).
    :param settings: progress interval, checkpoint interval, data directory.
    :param publish: receives progress snapshots (see `ProgressCallback`).
    :param log_metrics: sends metrics to the tracker; None: no tracking.
    :param evaluation: the run's periodic evaluation, if any.
    :param signal: the run's stop signal.
    """
    progress = ProgressCallback(
        run.timesteps_per_episode,
        settings.progress_interval_s,
        publish,
        maze_episodes=run.maze_episodes,
        maze_successes=run.maze_successes,
    )
    callbacks: list[BaseCallback] = [progress]
    every = settings.checkpoint_every_episodes
    if every > 0:
        callbacks.append(
            SaveCheckpoints(
                save_freq=max(1, every * run.timesteps_per_episode // run.n_envs),
                directory=settings.run_dir(run.id) / CHECKPOINT_DIR,
                run_id=run.id,
            )
        )
    if log_metrics is not None:
        callbacks.append(TrackingCallback(progress, run.timesteps_per_episode, log_metrics))
    if evaluation is not None:
        callbacks.append(evaluation)
    callbacks.append(StopOnRequestCallback(signal))
    return CallbackList(callbacks)


def final_progress(callbacks: CallbackList) -> ProgressSnapshot:
    """The run's final progress as its ProgressCallback measured it, to be written with the final state."""
    progress = next(callback for callback in callbacks.callbacks if isinstance(callback, ProgressCallback))
    return progress.snapshot()
