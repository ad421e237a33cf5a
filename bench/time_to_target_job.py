"""One time-to-target job: the real `TrainingJob` on a real SQLite store in this process, stopped past its
caps, with its evaluations timed."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import torch

from agents.hyperparameters import default_n_envs
from core.settings import Settings
from records.admission import NewRun
from records.database import create_db_engine, make_session_factory, upgrade_schema
from records.store import EvaluationState, RunStore
from training import evaluation_callback
from training.job import JobControl, TrainingJob

TARGET = 0.95
MAZE_SIZE = 10
TOTAL_EPISODES = 1000
TIMESTEPS_PER_EPISODE = 2048
BUDGET = TOTAL_EPISODES * TIMESTEPS_PER_EPISODE


class TimedStore(RunStore):
    """The real store, noting when each evaluation was recorded (for the held-out curve of a run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.started = time.perf_counter()
        self.evaluations: list[tuple[float, EvaluationState]] = []

    def record_evaluation(self, run_id: str, state: EvaluationState) -> None:
        self.evaluations.append((time.perf_counter() - self.started, state))
        super().record_evaluation(run_id, state)


@dataclasses.dataclass(frozen=True)
class JobResult:
    """One job's outcome as measured here."""

    algorithm: str
    seed: int
    evaluation: bool
    status: str
    stop_reason: str | None
    timesteps: int
    wall_s: float
    cpu_s: float
    onnx_s: float
    best_eval_success_rate: float | None
    evaluations: list[tuple[float, int, float]]  # (wall s since start, timestep, held-out success)
    capped: bool
    eval_wall_s: float | None = None  # time inside held-out evaluations (None: not timed)
    eval_cpu_s: float | None = None
    fps: float | None = None  # the run's own steps/s as status reports it (learn() only, evaluations in)
    maze_size: int = MAZE_SIZE

    @property
    def training_steps_per_s(self) -> float:
        return self.timesteps / max(self.wall_s - self.onnx_s, 1e-9)

    @property
    def projection_steps_per_s(self) -> float:
        """Steps/s to project a full budget from: the run's training rate, evaluations included, without
        the fixed costs (building the model, exporting ONNX) that a short run is mostly made of."""
        return self.fps or self.training_steps_per_s


def run_job(
    data_dir: Path,
    algorithm: str,
    seed: int,
    total_episodes: int,
    target: float | None,
    eval_episodes: int,
    cap_steps: int,
    cap_s: float,
    maze_size: int = MAZE_SIZE,
    hyperparameters: dict[str, Any] | None = None,
) -> JobResult:
    """Run one job to its end, stopping it (as a user's stop would) past the caps.

    ``hyperparameters`` are the request's overrides (none: the service's defaults).
    """
    settings = Settings(
        data_dir=data_dir,
        mlflow_enabled=False,
        eval_episodes=eval_episodes,
        progress_interval_s=1.0,
        log_level="WARNING",
    )
    torch.set_num_threads(settings.torch_threads)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(settings.database_url)
    upgrade_schema(engine)
    store = TimedStore(make_session_factory(engine))
    new_run = NewRun(
        algorithm=algorithm,
        total_episodes=total_episodes,
        timesteps_per_episode=TIMESTEPS_PER_EPISODE,
        maze_size=maze_size,
        maze_mode="random",
        seed=seed,
        n_envs=default_n_envs(algorithm),
        device_requested="cpu",
        hyperparameters=dict(hyperparameters or {}),
        target_success_rate=target,
        eval_episodes=eval_episodes,  # as the service resolves a request without one: EVAL_EPISODES
    )
    store.create(new_run)
    run = store.claim_next_queued("bench:1:job", max_running=1)
    assert run is not None
    control = JobControl()
    capped = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(1.0):
            too_long = time.perf_counter() - store.started > cap_s
            if too_long or store.get(run.id).timesteps >= cap_steps:
                capped.set()
                control.stop.set()
                return

    # Time the evaluations themselves (the real function, wrapped), to compare time in and out of them
    # within the same run: load drift cannot bias that comparison.
    in_evaluation = [0.0, 0.0]

    def timed_evaluate(*args: Any, **kwargs: Any) -> Any:
        began, cpu_began = time.perf_counter(), time.thread_time()
        try:
            return real_evaluate(*args, **kwargs)
        finally:
            in_evaluation[0] += time.perf_counter() - began
            in_evaluation[1] += time.thread_time() - cpu_began

    real_evaluate = evaluation_callback.evaluate
    evaluation_callback.evaluate = timed_evaluate
    watcher = threading.Thread(target=watch, daemon=True)
    store.started, cpu_started = time.perf_counter(), time.process_time()
    watcher.start()
    try:
        TrainingJob(settings, store, None, run, control).execute()
    finally:
        done.set()
        evaluation_callback.evaluate = real_evaluate
    wall, cpu = time.perf_counter() - store.started, time.process_time() - cpu_started
    watcher.join()
    record = store.get(run.id)
    engine.dispose()
    return JobResult(
        algorithm=algorithm,
        seed=seed,
        evaluation=eval_episodes > 0,
        status=record.status,
        stop_reason=record.stop_reason,
        timesteps=record.timesteps,
        wall_s=wall,
        cpu_s=cpu,
        onnx_s=record.onnx_export_seconds or 0.0,
        best_eval_success_rate=record.best_eval_success_rate,
        evaluations=[(t, s.eval_timesteps, s.eval_success_rate) for t, s in store.evaluations],
        capped=capped.is_set(),
        eval_wall_s=in_evaluation[0],
        eval_cpu_s=in_evaluation[1],
        fps=record.fps,
        maze_size=maze_size,
    )
