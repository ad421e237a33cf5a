"""The training callbacks on a real tiny SB3 model: publish cadence, episode counts, stop, tracking."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from agents.building import in_memory_logger, make_vec_env
from records.store import ProgressSnapshot
from training.callbacks import ProgressCallback, StopOnRequestCallback, TrackingCallback
from training.stopping import StopSignal

N_ENVS = 2
N_STEPS = 16  # per env and rollout: one rollout is 32 timesteps
ROLLOUT = N_ENVS * N_STEPS
# Clock steps and intervals are binary fractions: no rounding decides a comparison.
TICK_S = 0.25


class ManualClock:
    """Monotonic seconds that move only when the test (or `AdvanceClock`) moves them."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class AdvanceClock(BaseCallback):
    """Placed first in the list: every environment step takes `tick_s` of the manual clock."""

    def __init__(self, clock: ManualClock, tick_s: float) -> None:
        super().__init__()
        self._clock = clock
        self._tick_s = tick_s

    def _on_step(self) -> bool:
        self._clock.now += self._tick_s
        return True


def tiny_ppo() -> PPO:
    env = make_vec_env(2, "fixed", 0, N_ENVS)
    model = PPO("MlpPolicy", env, n_steps=N_STEPS, batch_size=ROLLOUT, n_epochs=1, seed=0, device="cpu")
    model.set_logger(in_memory_logger())
    return model


def progress(
    timesteps_per_episode: int, interval_s: float, clock: ManualClock, **counts: int
) -> tuple[ProgressCallback, list[ProgressSnapshot]]:
    published: list[ProgressSnapshot] = []
    callback = ProgressCallback(timesteps_per_episode, interval_s, published.append, clock=clock, **counts)
    return callback, published


def test_progress_is_published_once_per_iteration_and_at_the_end_while_the_clock_stands_still() -> None:
    clock = ManualClock()
    callback, published = progress(timesteps_per_episode=ROLLOUT, interval_s=1.0, clock=clock)

    tiny_ppo().learn(3 * ROLLOUT, callback=callback)

    assert [s.episode for s in published] == [1, 2, 3, 3]
    assert [s.timesteps for s in published] == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT, 3 * ROLLOUT]
    assert all(s.fps is None for s in published), "no time passed: no rate to report"


def test_inside_a_long_iteration_progress_is_published_every_interval_of_the_clock() -> None:
    clock = ManualClock()
    callback, published = progress(timesteps_per_episode=10_000, interval_s=4 * TICK_S, clock=clock)

    tiny_ppo().learn(2 * ROLLOUT, callback=CallbackList([AdvanceClock(clock, TICK_S), callback]))

    steps = 2 * ROLLOUT // N_ENVS
    # Every 4th step reaches the interval, then one more at the end of training.
    assert [s.timesteps for s in published] == [*range(4 * N_ENVS, 2 * ROLLOUT + 1, 4 * N_ENVS), 2 * ROLLOUT]
    assert len(published) == steps // 4 + 1
    assert all(s.episode == 0 for s in published)
    assert {s.fps for s in published} == {N_ENVS / TICK_S}


def test_episodes_successes_and_returns_are_counted_from_the_step_locals() -> None:
    model = tiny_ppo()
    callback, published = progress(
        timesteps_per_episode=1_000, interval_s=1.0, clock=ManualClock(), maze_episodes=10, maze_successes=4
    )
    callback.init_callback(model)
    callback.on_training_start({}, {})
    no_info: dict[str, Any] = {}
    # As SB3 passes them: one entry per env; an env that is done has already been reset.
    steps = [
        ([-0.1, -0.1], [False, False], [no_info, no_info]),
        ([1.0, -0.1], [True, False], [{"is_success": True}, no_info]),
        ([-0.1, -0.1], [False, True], [no_info, {"is_success": False}]),
    ]
    for rewards, dones, infos in steps:
        model.num_timesteps += N_ENVS
        callback.update_locals({"rewards": np.array(rewards), "dones": np.array(dones), "infos": infos})
        assert callback.on_step()

    snapshot = callback.snapshot()
    # A resumed run continues its totals; the rolling rates cover what this process saw.
    assert (snapshot.maze_episodes, snapshot.maze_successes) == (12, 5)
    assert snapshot.success_rate == 0.5
    assert snapshot.reward == pytest.approx((0.9 + -0.3) / 2)
    assert published == [], "no iteration ended and the clock stood still"


def stop_callback(
    clock: ManualClock, answers: list[bool], local_stop: threading.Event | None = None
) -> tuple[StopOnRequestCallback, list[float]]:
    """A stop callback whose remote poll answers `answers` in turn (then False), noting when it was asked."""
    polled_at: list[float] = []

    def poll_remote() -> bool:
        polled_at.append(clock.now)
        return answers[len(polled_at) - 1] if len(polled_at) <= len(answers) else False

    callback = StopOnRequestCallback(
        StopSignal(local_stop or threading.Event(), poll_remote, poll_interval_s=4 * TICK_S, clock=clock)
    )
    return callback, polled_at


def test_a_remote_stop_is_polled_at_most_every_interval_and_ends_training() -> None:
    clock = ManualClock()
    local_stop = threading.Event()
    callback, polled_at = stop_callback(clock, [False, False, True], local_stop)
    model = tiny_ppo()

    model.learn(10 * ROLLOUT, callback=CallbackList([AdvanceClock(clock, TICK_S), callback]))

    # Asked at the first step, then every 4th step; the third answer stops training at that step.
    assert polled_at == [100.0 + TICK_S, 100.0 + 5 * TICK_S, 100.0 + 9 * TICK_S]
    assert model.num_timesteps == 9 * N_ENVS
    assert local_stop.is_set(), "the local flag records the stop for the rest of the job"


def test_a_local_stop_ends_training_at_the_next_step_without_asking_the_store() -> None:
    local_stop = threading.Event()
    local_stop.set()
    callback, polled_at = stop_callback(ManualClock(), [], local_stop)
    model = tiny_ppo()

    model.learn(10 * ROLLOUT, callback=callback)

    assert model.num_timesteps == N_ENVS
    assert polled_at == []


def tracked_learning(
    model: BaseAlgorithm, total_timesteps: int, timesteps_per_episode: int
) -> list[tuple[dict[str, float], int]]:
    clock = ManualClock()
    progress_callback, _ = progress(timesteps_per_episode, interval_s=1_000.0, clock=clock)
    logged: list[tuple[dict[str, float], int]] = []
    tracking = TrackingCallback(progress_callback, timesteps_per_episode, lambda m, s: logged.append((m, s)))
    callbacks = [AdvanceClock(clock, TICK_S), progress_callback, tracking]
    model.learn(total_timesteps, callback=CallbackList(callbacks))
    return logged


def test_tracking_sends_one_set_of_metrics_per_iteration_and_none_twice_at_a_boundary() -> None:
    logged = tracked_learning(tiny_ppo(), 3 * ROLLOUT, timesteps_per_episode=ROLLOUT)

    # Training ends right on the third boundary: that point is sent once.
    assert [step for _, step in logged] == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT]
    assert [metrics["episode"] for metrics, _ in logged] == [1.0, 2.0, 3.0]
    assert all(metrics["fps"] == N_ENVS / TICK_S for metrics, _ in logged)
    # PPO's losses come from train(), which runs between rollouts: none before the first update.
    first, second = logged[0][0], logged[1][0]
    assert "value_loss" not in first
    assert {"value_loss", "entropy_loss", "learning_rate"} <= second.keys()


def test_tracking_sends_the_end_of_a_partial_iteration_too() -> None:
    logged = tracked_learning(tiny_ppo(), 3 * ROLLOUT, timesteps_per_episode=40)

    assert [step for _, step in logged] == [40, 80, 3 * ROLLOUT]


def test_a_dqn_loss_is_also_sent_as_td_loss() -> None:
    env = make_vec_env(2, "fixed", 0, N_ENVS)
    model = DQN(
        "MlpPolicy",
        env,
        learning_starts=8,
        train_freq=4,
        batch_size=8,
        buffer_size=1_000,
        seed=0,
        device="cpu",
    )
    model.set_logger(in_memory_logger())

    logged = tracked_learning(model, 3 * ROLLOUT, timesteps_per_episode=ROLLOUT)

    last = logged[-1][0]
    assert last["td_loss"] == last["loss"]
