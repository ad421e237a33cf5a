"""A sweep in MLflow: one parent run per sweep, its trials' runs as children (`mlflow.parentRunId`, the
UI's nested view), and the best trial's parameters and objective on the parent once the sweep ends.

Called from the sweep driver's thread, never from a request: an MLflow outage delays these calls (they
are retried at the driver's next pass), never a request or a trial's training.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.tracking import MlflowClient

from records.mlflow_runs import MlflowRuns, open_client
from records.tables import Sweep, TrainingRun
from sweeps.study import Objective

PARENT_RUN_TAG = "mlflow.parentRunId"


class SweepTracking:
    """Parent runs of sweeps in the service's MLflow experiment.

    :param runs: the service's MLflow experiment (its id, once set up).
    """

    def __init__(self, runs: MlflowRuns) -> None:
        self._runs = runs
        self._client: MlflowClient | None = None
        self._tagged: set[str] = set()  # child runs this process has tagged (tagging again is harmless)

    def _mlflow(self) -> MlflowClient:
        if self._client is None:
            self._client = open_client(self._runs.tracking_uri)
        return self._client

    def create_parent(self, sweep: Sweep) -> str | None:
        """Create the sweep's parent run with the sweep's settings as parameters; its id, or None while
        the experiment is not set up yet."""
        experiment_id = self._runs.experiment_id()
        if experiment_id is None:
            return None
        request = sweep.request
        name = f"sweep-{sweep.algorithm}-maze{sweep.maze_size}-{sweep.id[:8]}"
        run = self._mlflow().create_run(
            experiment_id, run_name=name, tags={"sweep_id": sweep.id, "algorithm": sweep.algorithm}
        )
        params = {
            key: json.dumps(value) if isinstance(value, dict | list) else str(value)
            for key, value in request.items()
            if key != "search_space"
        }
        for key, spec in request["search_space"].items():
            params[f"search_space.{key}"] = json.dumps(spec)[:6000]
        client = self._mlflow()
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        return str(run.info.run_id)

    def discard(self, mlflow_run_id: str) -> None:
        """Delete a parent run that lost the race to be the sweep's (another worker's was recorded)."""
        self._mlflow().delete_run(mlflow_run_id)

    def adopt(self, parent_run_id: str, sweep_id: str, run: TrainingRun) -> None:
        """Make a trial's MLflow run a child of the sweep's parent run."""
        if run.mlflow_run_id is None or run.mlflow_run_id in self._tagged:
            return
        client = self._mlflow()
        client.set_tag(run.mlflow_run_id, PARENT_RUN_TAG, parent_run_id)
        client.set_tag(run.mlflow_run_id, "sweep_id", sweep_id)
        client.set_tag(run.mlflow_run_id, "sweep_trial", str(run.sweep_trial))
        self._tagged.add(run.mlflow_run_id)

    def finish(
        self,
        parent_run_id: str,
        status: str,
        best: tuple[int, dict[str, Any], Objective, str | None] | None,
        counts: dict[str, int],
    ) -> None:
        """Log the best trial (number, params, objective, run id) and the trial counts, then end the
        parent run (`FINISHED` for a completed sweep, `KILLED` for a stopped one)."""
        client = self._mlflow()
        for state, count in counts.items():
            client.log_metric(parent_run_id, f"trials_{state}", count)
        if best is not None:
            number, params, objective, run_id = best
            for key, value in params.items():
                client.log_param(parent_run_id, f"best.{key}", str(value))
            client.log_metric(parent_run_id, "best_objective", objective.value)
            client.log_metric(parent_run_id, "best_success_rate", objective.success_rate)
            client.log_metric(parent_run_id, "best_steps_to_best", objective.steps)
            client.set_tag(parent_run_id, "best_trial", str(number))
            if run_id is not None:
                client.set_tag(parent_run_id, "best_run_id", run_id)
        client.set_terminated(parent_run_id, "FINISHED" if status == "completed" else "KILLED")
