"""The evaluation callback on a real tiny SB3 model: the adaptive schedule, ties, patience and the
no-improvement rule. The held-out scores are scripted, so that each rule is decided by known numbers."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import CallbackList

from agents.evaluation import EvalResult
from records.store import EvaluationState
from records.tables import StopReason
from tests.test_callbacks import N_ENVS, ROLLOUT, AdvanceClock, ManualClock, tiny_ppo
from training.evaluation_callback import EvaluationCallback, EvaluationPlan

ITERATIONS = 12


def scripted(
    scores: list[float], clock: ManualClock, eval_s: float
) -> tuple[list[int], Callable[[BaseAlgorithm], EvalResult]]:
    """An evaluation that takes `eval_s` of the clock and scores `scores` in turn; notes its timesteps."""
    at: list[int] = []

    def evaluate(model: BaseAlgorithm) -> EvalResult:
        at.append(model.num_timesteps)
        clock.now += eval_s
        score = scores[min(len(at), len(scores)) - 1]
        return EvalResult(success_rate=score, path_efficiency=score / 2, episodes=10, mean_steps=5.0)

    return at, evaluate


def train(
    plan: EvaluationPlan, scores: list[float], tmp_path: Path, eval_s: float = 0.0, tick_s: float = 0.0
) -> tuple[EvaluationCallback, list[int], list[EvaluationState]]:
    clock = ManualClock()
    at, evaluate = scripted(scores, clock, eval_s)
    recorded: list[EvaluationState] = []
    callback = EvaluationCallback(plan, evaluate, tmp_path / "best.zip", recorded.append, clock=clock)
    model = tiny_ppo()
    model.learn(plan.total_timesteps, callback=CallbackList([AdvanceClock(clock, tick_s), callback]))
    if callback.stop_reason is None:
        callback.evaluate_final()
    return callback, at, recorded


def test_adaptive_evaluation_takes_at_most_a_tenth_of_the_time(tmp_path: Path) -> None:
    # An env step (N_ENVS timesteps) takes 0.25 s, an iteration 4 s; an evaluation takes 2 s, so the next
    # one waits 18 s of training: every 5 iterations.
    plan = EvaluationPlan(timesteps_per_episode=ROLLOUT, total_timesteps=ITERATIONS * ROLLOUT)
    callback, at, _ = train(plan, [0.5], tmp_path, eval_s=2.0, tick_s=0.25)

    assert at[0] == ROLLOUT, "the first evaluation comes after the first iteration"
    gaps = [later - earlier for earlier, later in itertools.pairwise(at)][:-1]
    assert gaps and all(gap / N_ENVS * 0.25 >= 9 * 2.0 for gap in gaps), at
    assert at[:3] == [ROLLOUT, 6 * ROLLOUT, 11 * ROLLOUT]
    assert at[-1] == ITERATIONS * ROLLOUT, "the last model is evaluated"
    assert callback.stop_reason is None


def test_the_target_reached_patience_times_in_a_row_ends_training(tmp_path: Path) -> None:
    plan = EvaluationPlan(
        timesteps_per_episode=ROLLOUT,
        total_timesteps=ITERATIONS * ROLLOUT,
        every_episodes=1,
        target_success_rate=0.9,
        patience=2,
    )
    callback, at, recorded = train(plan, [0.95, 0.5, 0.9, 0.9, 0.1], tmp_path)

    assert callback.stop_reason == StopReason.TARGET_REACHED
    assert at == [ROLLOUT, 2 * ROLLOUT, 3 * ROLLOUT, 4 * ROLLOUT]
    # A tie goes to the later model; the earlier, better one stays the best.
    assert recorded[-1].best_eval_success_rate == 0.95 and recorded[-1].best_eval_timesteps == ROLLOUT
    assert [state.evals_at_target for state in recorded] == [1, 0, 1, 2]
    assert not callback.last_is_best


def test_no_improvement_ends_training_and_ties_go_to_the_later_model(tmp_path: Path) -> None:
    plan = EvaluationPlan(
        timesteps_per_episode=ROLLOUT,
        total_timesteps=ITERATIONS * ROLLOUT,
        every_episodes=2,
        max_evals_without_improvement=2,
    )
    callback, at, recorded = train(plan, [0.4, 0.6, 0.6, 0.5], tmp_path)

    assert callback.stop_reason == StopReason.NO_IMPROVEMENT
    assert at == [2 * ROLLOUT, 4 * ROLLOUT, 6 * ROLLOUT, 8 * ROLLOUT]
    assert recorded[-1].best_eval_timesteps == 6 * ROLLOUT  # 0.6 twice: the later one
    assert [state.evals_without_improvement for state in recorded] == [0, 0, 1, 2]
    assert (tmp_path / "best.zip").is_file()


def test_after_a_resume_the_adaptive_timer_restarts_from_the_resumed_runs_own_evaluations(
    tmp_path: Path,
) -> None:
    # Before the stop: a 10 s evaluation after iteration 1, so the next one was due 90 s (22 iterations)
    # later. The resumed job is a new process on another machine: its monotonic clock starts near 0,
    # and its evaluations take 2 s. Neither the old duration nor the old clock may delay or hurry the
    # resumed run's evaluations: the first comes at its first iteration boundary, then every 5 iterations.
    plan = EvaluationPlan(timesteps_per_episode=ROLLOUT, total_timesteps=ITERATIONS * ROLLOUT)
    before_clock = ManualClock(start=5000.0)
    before_at, slow = scripted([0.25], before_clock, eval_s=10.0)
    recorded: list[EvaluationState] = []
    before = EvaluationCallback(plan, slow, tmp_path / "best.zip", recorded.append, clock=before_clock)
    model = tiny_ppo()
    model.learn(3 * ROLLOUT, callback=CallbackList([AdvanceClock(before_clock, 0.25), before]))
    assert before_at == [ROLLOUT], "one evaluation before the stop"

    after_clock = ManualClock(start=1.0)
    after_at, fast = scripted([0.5], after_clock, eval_s=2.0)
    after = EvaluationCallback(
        plan, fast, tmp_path / "best.zip", recorded.append, state=recorded[-1], clock=after_clock
    )
    model.learn(
        (ITERATIONS - 3) * ROLLOUT,
        callback=CallbackList([AdvanceClock(after_clock, 0.25), after]),
        reset_num_timesteps=False,
    )

    assert after_at == [4 * ROLLOUT, 9 * ROLLOUT]
    assert recorded[-1].best_eval_success_rate == 0.5 and recorded[-1].best_eval_timesteps == 9 * ROLLOUT
