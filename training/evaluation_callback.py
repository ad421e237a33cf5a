"""Periodic held-out evaluation while a run trains: when to evaluate, the best model, when to end.

When the run is good enough, or no longer improves, it ends (in the style of SB3's `EvalCallback` with
its stop callbacks).

Evaluations happen at training-iteration boundaries (every `timesteps_per_episode` steps): every
`eval_every_episodes` iterations, or, by default, adaptively: after an evaluation that took `d` seconds,
the next one waits until the run has trained for at least `TRAIN_TO_EVAL_RATIO × d` seconds since, so
evaluation takes at most 1 / (1 + ratio) = 10% of the run's wall time (the first evaluation comes at the
first boundary).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

import maze_env
from agents.evaluation import EvalResult, ShouldStop, evaluate
from core.settings import Settings
from records.files import BEST_MODEL_FILE
from records.store import EvaluationState
from records.tables import StopReason, TrainingRun
from training.run_metadata import fixed_maze_seed

TRAIN_TO_EVAL_RATIO = 9.0

# Another reason to end a run after an evaluation (a sweep's pruner), or None to go on.
ExtraRule = Callable[[EvaluationState], StopReason | None]


@dataclasses.dataclass(frozen=True)
class EvaluationPlan:
    """When a run evaluates and when it ends early (the request's fields).

    :param timesteps_per_episode: steps in one training iteration.
    :param total_timesteps: the run's budget (its last model is evaluated once trained, by
        `evaluate_final`, rather than at its last iteration boundary).
    :param every_episodes: evaluate every this many iterations; None: adaptive (see the module).
    :param target_success_rate: end the run once evaluations reach it; None: train the whole budget.
    :param patience: consecutive evaluations at the target that end the run.
    :param max_evals_without_improvement: end the run after this many evaluations in a row without a
        new best; None: never.
    """

    timesteps_per_episode: int
    total_timesteps: int
    every_episodes: int | None = None
    target_success_rate: float | None = None
    patience: int = 1
    max_evals_without_improvement: int | None = None

    @classmethod
    def of(cls, run: TrainingRun) -> EvaluationPlan:
        """The plan a run was started with."""
        return cls(
            timesteps_per_episode=run.timesteps_per_episode,
            total_timesteps=run.total_timesteps,
            every_episodes=run.eval_every_episodes,
            target_success_rate=run.target_success_rate,
            patience=run.patience or 1,
            max_evals_without_improvement=run.max_evals_without_improvement,
        )


def held_out_seeds(run: TrainingRun, settings: Settings, env: VecEnv) -> list[int]:
    """The mazes a run is evaluated on: its own maze in fixed mode (a deterministic policy plays it
    alike every time), else `eval_episodes` mazes disjoint from training's (none: no evaluation).

    :param run: the run.
    :param settings: EVAL_EPISODES, for runs recorded without their own `eval_episodes`.
    :param env: the run's training env (its maze, in fixed mode).
    """
    if run.maze_mode == "fixed":
        return [fixed_maze_seed(env)]
    return maze_env.eval_maze_seeds(
        run.eval_episodes if run.eval_episodes is not None else settings.eval_episodes
    )


def evaluation_state(run: TrainingRun) -> EvaluationState | None:
    """A run's evaluation state so far, from its record (None before its first evaluation)."""
    if run.eval_timesteps is None or run.best_eval_timesteps is None:
        return None
    return EvaluationState(
        eval_success_rate=run.eval_success_rate or 0.0,
        eval_path_efficiency=run.eval_path_efficiency or 0.0,
        eval_timesteps=run.eval_timesteps,
        evals_at_target=run.evals_at_target or 0,
        evals_without_improvement=run.evals_without_improvement or 0,
        best_eval_success_rate=run.best_eval_success_rate or 0.0,
        best_eval_path_efficiency=run.best_eval_path_efficiency or 0.0,
        best_eval_timesteps=run.best_eval_timesteps,
    )


class EvaluationCallback(BaseCallback):
    """Evaluates the model on schedule, saves each new best model, and ends training when it is good
    enough (`stop_reason` then says why).

    :param plan: the schedule and the early-stop rules.
    :param evaluate: plays the model's deterministic policy on the held-out mazes; may raise
        `EvaluationStopped` when a stop is requested meanwhile.
    :param best_model_path: where each new best model is saved (ties: the later one wins).
    :param record: receives the state after every evaluation (to store and track it); must not raise.
    :param state: the run's evaluation state so far (a resumed run), or None.
    :param clock: monotonic seconds (injected for tests of the schedule).
    :param extra_rule: one more early-stop rule, asked after every evaluation: the reason to end the
        run now, or None (a sweep's pruner). Its reason counts only before the budget's end, and after
        the run's own rules.
    """

    @classmethod
    def for_run(
        cls,
        run: TrainingRun,
        settings: Settings,
        env: VecEnv,
        should_stop: ShouldStop,
        record: Callable[[EvaluationState], None],
        extra_rule: ExtraRule | None = None,
    ) -> EvaluationCallback | None:
        """A run's evaluation, continuing its state so far; None when evaluation is off (EVAL_EPISODES=0).

        :param run: the run (its plan, and its evaluation state so far).
        :param settings: where the run's files go, and EVAL_EPISODES.
        :param env: the run's training env.
        :param should_stop: asked between steps of every evaluation.
        :param record: as for the constructor.
        :param extra_rule: as for the constructor.
        """
        seeds = held_out_seeds(run, settings, env)
        if not seeds:
            return None

        def evaluate_model(model: BaseAlgorithm) -> EvalResult:
            return evaluate(model, run.maze_size, seeds, should_stop=should_stop)

        best_path = settings.run_dir(run.id) / BEST_MODEL_FILE
        plan, state = EvaluationPlan.of(run), evaluation_state(run)
        return cls(plan, evaluate_model, best_path, record, state, extra_rule=extra_rule)

    def __init__(
        self,
        plan: EvaluationPlan,
        evaluate: Callable[[BaseAlgorithm], EvalResult],
        best_model_path: Path,
        record: Callable[[EvaluationState], None],
        state: EvaluationState | None = None,
        clock: Callable[[], float] = time.monotonic,
        extra_rule: ExtraRule | None = None,
    ) -> None:
        super().__init__()
        self._plan = plan
        self._evaluate = evaluate
        self._best_model_path = best_model_path
        self._record = record
        self.state = state
        self._clock = clock
        self._extra_rule = extra_rule
        self._last_boundary = 0
        self._next_due_at = 0.0
        self.stop_reason: StopReason | None = None
        self._changed_since_eval = True
        self._changed_since_best = True
        self._best_saved = False

    @property
    def last_is_best(self) -> bool:
        """The model at hand is the best one: never evaluated (so the only one), or unchanged since it
        was evaluated as the best in this process."""
        return self.state is None or (self._best_saved and not self._changed_since_best)

    def _init_callback(self) -> None:
        # A model changes only through its optimizer; its timestep alone does not tell, since PPO trains
        # after the last step of an iteration. A step hook tells whether the model at hand was evaluated.
        assert self.model is not None
        self.model.policy.optimizer.register_step_pre_hook(self._model_changes)

    def _model_changes(self, *_: Any) -> None:
        self._changed_since_eval = True
        self._changed_since_best = True

    def _on_training_start(self) -> None:
        self._last_boundary = self.num_timesteps // self._plan.timesteps_per_episode
        self._next_due_at = self._clock()

    def _on_step(self) -> bool:
        boundary = self.num_timesteps // self._plan.timesteps_per_episode
        if boundary == self._last_boundary or self.num_timesteps >= self._plan.total_timesteps:
            return True
        self._last_boundary = boundary
        return not self._due(boundary) or self.evaluate_now()

    def _due(self, boundary: int) -> bool:
        every = self._plan.every_episodes
        if every is None:
            return self._clock() >= self._next_due_at
        last = self.state.eval_timesteps // self._plan.timesteps_per_episode if self.state else 0
        return boundary - last >= every

    def evaluate_final(self) -> None:
        """Evaluate the last model, unless it was evaluated as it is: the run's budget is spent."""
        if self._changed_since_eval:
            self.evaluate_now()

    def evaluate_now(self) -> bool:
        """Evaluate the model now, keep it if it is the best so far; False when the run should end."""
        assert self.model is not None
        began = self._clock()
        result = self._evaluate(self.model)
        ended = self._clock()
        self._next_due_at = ended + TRAIN_TO_EVAL_RATIO * (ended - began)
        self.state, is_best = self._next_state(result)
        self._changed_since_eval = False
        if is_best:
            self.model.save(self._best_model_path)
            self._best_saved, self._changed_since_best = True, False
        self._record(self.state)
        plan = self._plan
        # Asked after every evaluation (a sweep's pruner records each one), obeyed only before the end.
        extra_reason = self._extra_rule(self.state) if self._extra_rule is not None else None
        if plan.target_success_rate is not None and self.state.evals_at_target >= plan.patience:
            self.stop_reason = StopReason.TARGET_REACHED
        elif (
            plan.max_evals_without_improvement is not None
            and self.state.evals_without_improvement >= plan.max_evals_without_improvement
        ):
            self.stop_reason = StopReason.NO_IMPROVEMENT
        elif extra_reason is not None and self.num_timesteps < plan.total_timesteps:
            self.stop_reason = extra_reason
        return self.stop_reason is None

    def _next_state(self, result: EvalResult) -> tuple[EvaluationState, bool]:
        """The state after this evaluation, and whether it is the best so far."""
        score = (result.success_rate, result.path_efficiency)
        target = self._plan.target_success_rate
        at_target = target is not None and result.success_rate >= target
        previous = self.state or EvaluationState(
            eval_success_rate=0.0,
            eval_path_efficiency=0.0,
            eval_timesteps=0,
            evals_at_target=0,
            evals_without_improvement=0,
            best_eval_success_rate=-1.0,  # below any score: the first evaluation is the best so far
            best_eval_path_efficiency=-1.0,
            best_eval_timesteps=0,
        )
        best = (previous.best_eval_success_rate, previous.best_eval_path_efficiency)
        is_best = score >= best  # ties: the later model wins
        state = EvaluationState(
            eval_success_rate=result.success_rate,
            eval_path_efficiency=result.path_efficiency,
            eval_timesteps=self.num_timesteps,
            evals_at_target=previous.evals_at_target + 1 if at_target else 0,
            evals_without_improvement=0 if score > best else previous.evals_without_improvement + 1,
            best_eval_success_rate=result.success_rate if is_best else previous.best_eval_success_rate,
            best_eval_path_efficiency=result.path_efficiency
            if is_best
            else previous.best_eval_path_efficiency,
            best_eval_timesteps=self.num_timesteps if is_best else previous.best_eval_timesteps,
        )
        return state, is_best
