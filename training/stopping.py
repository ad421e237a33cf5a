"""How a run notices a stop request wherever it is: between env steps, in a gradient phase, in evaluation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm


class TrainingStopped(Exception):
    """Raised inside `model.learn()` (before a gradient step) when a stop was requested."""


class StopSignal:
    """Whether the run must stop: asked locally (event) or by another worker (polled from the store).

    :param local_stop: set by this process to stop the run.
    :param poll_remote: asks the shared store whether a stop was requested; called at most every
        `poll_interval_s`, so that asking before every step or gradient step does not hammer the database.
    :param poll_interval_s: seconds between remote polls.
    :param clock: monotonic seconds (injected for tests of the timing logic).
    """

    def __init__(
        self,
        local_stop: threading.Event,
        poll_remote: Callable[[], bool],
        poll_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._local_stop = local_stop
        self._poll_remote = poll_remote
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._last_poll = 0.0

    def is_set(self) -> bool:
        if self._local_stop.is_set():
            return True
        now = self._clock()
        if now - self._last_poll >= self._poll_interval_s:
            self._last_poll = now
            if self._poll_remote():
                self._local_stop.set()
                return True
        return False


def stop_between_gradient_steps(model: BaseAlgorithm, signal: StopSignal) -> None:
    """Make `model.learn()` raise `TrainingStopped` before its next gradient step once `signal` is set.

    SB3 runs callbacks only while collecting experience, never inside `train()`: a DQN update with many
    gradient steps or a PPO update with many epochs and minibatches would not see a stop for minutes.
    Every update of both algorithms goes through the policy's optimizer, so a torch step pre-hook (a
    public torch API, no change to SB3's code or its update maths) reaches each gradient step. The model
    is left as it was after its last complete gradient step, which is a valid model to save and resume.
    Register again after loading a model: loading builds a new optimizer.

    :param model: the PPO or DQN model about to learn.
    :param signal: the run's stop signal.
    """

    def check(_optimizer: Any, _args: Any, _kwargs: Any) -> None:
        if signal.is_set():
            raise TrainingStopped("a stop was requested during a gradient phase")

    model.policy.optimizer.register_step_pre_hook(check)
